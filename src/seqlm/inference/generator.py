"""Sampling and next-word prediction from an exported model (``models/model/`` or a registry version).

A prompt is encoded as the tokenize stage encodes text (``text.encode_prompt``), run through the model
once from a fresh state, and then tokens are drawn one at a time carrying the state. Their text is
streamed as it becomes final (``text.Detokenizer``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from seqlm.core.errors import SeqlmError
from seqlm.inference import words
from seqlm.inference.checks import check_k, check_prompt, check_sampling
from seqlm.inference.pieces import check_vocab, is_char_model, piece_masks
from seqlm.inference.text import Detokenizer, Prompt, encode_prompt

PROMPT_CHUNK_TOKENS = 2048  # one forward per chunk: bounds activation memory for long prompts


def load_exported(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple:
    """(model, sentencepiece processor, config.json) of an exported folder; weights by safetensors."""
    import sentencepiece as spm

    from seqlm.models import export

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SeqlmError(f"{model_dir}: no model folder there; run the train stage first or pass --model")
    config = export.read_config(model_dir)
    spm_path = model_dir / export.TOKENIZER
    if not spm_path.is_file():
        raise SeqlmError(f"{spm_path}: missing from the exported model; re-export with the train stage")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    except (OSError, RuntimeError) as exc:
        raise SeqlmError(f"{spm_path}: not a sentencepiece model ({str(exc).splitlines()[0]})") from None
    # checked before the weights load, whose shape errors would not say what is wrong
    check_vocab(sp.GetPieceSize(), config["model"].get("vocab_size"), model_dir)
    model, config = export.load(model_dir, device)
    return model, sp, config


class Generator:
    """An exported model with its tokenizer: ``generate``, ``stream`` and ``next_words``."""

    def __init__(
        self, model: torch.nn.Module, sp, config: dict | None = None, device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sp = sp
        self.config = config or {}
        self.vocab_size = model.config["vocab_size"]
        check_vocab(sp.GetPieceSize(), self.vocab_size, "the model")
        self.masks = piece_masks(sp, self.vocab_size, self.device)
        self.max_word_pieces = words.max_depth(is_char_model(sp))

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu") -> Generator:
        """Load weights (safetensors, no pickle), config.json and spm.model from an exported folder."""
        model, sp, config = load_exported(model_dir, device)
        if model.config.get("objective", "next") != "next":
            raise SeqlmError(
                f"{model_dir} holds a cloze model (train.objective: cloze): it fills blanks and cannot "
                'continue text; use `seqlm fill "… ___ …"`, or train with train.objective: next'
            )
        return cls(model, sp, config, device)

    # -- model
    @torch.inference_mode()
    def prime(self, ids: list[int]):
        """Logits after the prompt [V] and the state, from a fresh state."""
        if not ids:
            raise SeqlmError("the prompt encodes to no tokens; give some text to continue")
        tokens, state = torch.tensor([ids], dtype=torch.long, device=self.device), None
        for chunk in tokens.split(PROMPT_CHUNK_TOKENS, dim=1):
            logits, state = self.model(chunk, state)
        return logits[0, -1].float(), state

    @torch.inference_mode()
    def advance(self, tokens: torch.Tensor, state):
        """Feed one token per row [B]; logits [B, V] and the new state."""
        logits, state = self.model(tokens.view(-1, 1), state)
        return logits[:, -1].float(), state

    # -- sampling
    @torch.inference_mode()
    def _pick(self, logits, temperature, top_k, top_p, allowed, rng) -> torch.Tensor:
        logits = logits.masked_fill(~allowed, -math.inf)
        if temperature == 0:
            return logits.argmax()
        logits = logits / temperature
        if 0 < top_k < logits.numel():
            logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], -math.inf)
        if top_p < 1:
            ordered, order = logits.sort(descending=True)
            probs = ordered.softmax(-1)
            # the smallest set of most likely tokens whose mass reaches top_p (the first is always kept)
            drop = probs.cumsum(-1) - probs >= top_p
            logits = logits.scatter(0, order, ordered.masked_fill(drop, -math.inf))
        return torch.multinomial(logits.softmax(-1), 1, generator=rng)[0]

    def _sample_ids(self, prompt: Prompt, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[int]:
        logits, state = self.prime(prompt.ids)
        rng = torch.Generator(device=self.device).manual_seed(seed)
        allowed = self.masks.word_start_or_eos if prompt.healed else self.masks.sampleable
        for step in range(max_new_tokens):
            token = self._pick(logits, temperature, top_k, top_p, allowed, rng)
            allowed = self.masks.sampleable
            yield int(token)  # the one host sync per token: its text is streamed now
            if step + 1 < max_new_tokens:
                logits, state = self.advance(token, state)
                logits = logits[0]

    # -- public
    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int = 50,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> Iterator[str]:
        """Yield the continuation's text as tokens are drawn; ``"".join`` of it is ``generate``'s result."""
        check_prompt(prompt)  # here, not in the generator below, so bad input fails at the call
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        encoded = encode_prompt(self.sp, prompt)
        ids = self._sample_ids(encoded, max_new_tokens, temperature, top_k, top_p, seed)
        return self._stream(encoded, ids)

    def _stream(self, prompt: Prompt, ids: Iterator[int]) -> Iterator[str]:
        text = Detokenizer(self.sp, prompt)
        for token in ids:
            if piece := text.add(token):
                yield piece
        if rest := text.flush():
            yield rest

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int = 50,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> str:
        """The continuation of ``prompt`` (without the prompt). The same seed gives the same text."""
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, seed))

    def next_words(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next words with their probabilities, most likely first.

        A word is a piece that starts with "▁" followed by pieces that do not (letters, digits, marks,
        bytes), up to a boundary: a new word, punctuation or a line end. Its probability is
        P(pieces) × P(boundary | pieces), the chance that exactly this word comes next, summed over the
        segmentations that decode to it; so the probabilities of all words sum to at most 1. Words are
        found by a beam search over pieces (``words.BEAM_PER_WORD``·k wide, ``words.MAX_WORD_PIECES``
        deep, ``words.MAX_WORD_CHARS`` under a char tokenizer). The word after the prompt's last,
        possibly unfinished, word is predicted; trailing spaces are ignored. Punctuation ends a word,
        so "don't" comes out as "don".
        """
        check_prompt(prompt)
        check_k(k)
        log_probs = words.word_log_probs(self, encode_prompt(self.sp, prompt.rstrip(" "), heal=False).ids, k)
        ranked = sorted(log_probs.items(), key=lambda item: item[1], reverse=True)[:k]
        return [(word, math.exp(lp)) for word, lp in ranked]
