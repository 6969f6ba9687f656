"""What each tokenizer piece may be drawn as: sampleable, a word's start, inside a word, a boundary.

Sentencepiece marks a word boundary with "▁" (U+2581) at the start of the word's first piece. The
masks here are boolean tensors over the vocabulary, built once per Generator.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from seqlm.core.errors import SeqlmError
from seqlm.data.tokenizer import EOS_ID

SPACE = "▁"  # sentencepiece's word-boundary mark (U+2581)


@dataclass(frozen=True)
class PieceMasks:
    sampleable: torch.Tensor  # every piece but unk, bos and unused ones; eos included
    word_start_or_eos: torch.Tensor  # the first token after a healed prompt
    word_first: torch.Tensor  # a word's first piece: "▁" alone or "▁" and a word character
    word_inside: torch.Tensor  # byte pieces and pieces that begin with a letter, digit or mark
    word_boundary: torch.Tensor  # after a word: a new word, punctuation or a line end


def piece_masks(sp, vocab_size: int, device: torch.device) -> PieceMasks:
    n = vocab_size
    pieces = [sp.id_to_piece(i) for i in range(n)]
    byte = [sp.IsByte(i) for i in range(n)]
    normal = [not (sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i) or byte[i]) for i in range(n)]
    starts = [normal[i] and p.startswith(SPACE) for i, p in enumerate(pieces)]
    inside = [byte[i] or (normal[i] and _is_word_char(p[0])) for i, p in enumerate(pieces)]
    first = [s and (len(p) == 1 or _is_word_char(p[1])) for s, p in zip(starts, pieces)]

    def mask(values: list[bool]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.bool, device=device)

    eos = mask([i == EOS_ID for i in range(n)])
    sampleable = mask([a or b for a, b in zip(normal, byte)]) | eos  # never unk, bos, unused
    word_inside = mask(inside)
    return PieceMasks(
        sampleable=sampleable,
        word_start_or_eos=mask(starts) | eos,
        word_first=mask(first),
        word_inside=word_inside,
        word_boundary=sampleable & ~word_inside,  # with word_inside, every sampleable piece
    )


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


def is_char_model(sp) -> bool:
    """Whether ``sp`` is a char tokenizer, which spells every word out piece by piece."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    return proto.trainer_spec.model_type == proto.trainer_spec.CHAR


def check_vocab(tokenizer_size: int, model_size, where) -> None:
    if tokenizer_size != model_size:
        raise SeqlmError(
            f"{where}: the tokenizer has {tokenizer_size} pieces but the model's vocab_size is {model_size}; "
            "they do not belong together (re-export the model with the train stage)"
        )
