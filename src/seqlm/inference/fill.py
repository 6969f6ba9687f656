"""Filling a blank with an exported cloze model: ``seqlm fill "I can converse in ___ fluently"``.

The text left and right of ``___`` is encoded as the tokenize stage encodes lines (the text ends with
a line end), and the blank goes between them as the model's blank input (``vocab_size``,
decision 20 in docs/architecture.md).

Candidates come from the model itself, so no word list has to travel with it: for n = 1 … 4 pieces
(12 under a char tokenizer), n blanks are filled left to right by a beam search (a word's first piece,
then pieces inside a word), plus any words the caller names. Every candidate is then scored by its
pseudo-log-likelihood (PLL, Salazar et al., 2020, arXiv:1910.14659), the same for all:
``Σ_i log P(piece_i | left, the word's other pieces, right)``, one pass per piece with that piece alone
blanked, on the word's own segmentation. A one-piece word's PLL is its log probability at the blank;
PLL flatters words of several pieces a little, since each piece sees the others. A few dozen small
batched forward passes: 0.25 s for a 128-wide BiLSTM on one CPU thread (bench/cloze_context.py's model).
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path

import torch

from seqlm.core.errors import SeqlmError
from seqlm.data.tokenizer import EOS_ID
from seqlm.inference.checks import MAX_K, check_prompt
from seqlm.inference.pieces import SPACE, check_vocab, is_char_model, piece_masks
from seqlm.inference.text import encode_prompt

BLANK = re.compile(r"_{3,}")  # ___ (three or more underscores) marks the missing word
MAX_CANDIDATES = 100
MAX_CANDIDATE_PIECES = 16
MAX_PIECES, MAX_CHAR_PIECES = 4, 12  # blanks the proposal search fills: words of up to this many pieces
BEAM = 20  # words kept per length by the proposal search (at least 2 × --top)


def _word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


def split_blank(sp, text: str) -> tuple[list[int], list[int]]:
    """(ids left of the blank, ids right of it, ending with the line end); one-line errors otherwise."""
    check_prompt(text)
    found = list(BLANK.finditer(text))
    if not found:
        raise SeqlmError(f'no blank in {text!r}: write ___ where the missing word goes, e.g. "I can ___ it"')
    if len(found) > 1:
        raise SeqlmError(f"{text!r} has {len(found)} blanks (___); seqlm fill fills one blank at a time")
    left, right = text[: found[0].start()], text[found[0].end() :]
    if (left and not left[-1].isspace()) or (right and _word_char(right[0])):
        raise SeqlmError(
            f"___ must stand for a whole word, with a space (or the text's start) before it and a space or "
            f"punctuation after it, got {text!r}"
        )
    left_ids = encode_prompt(sp, left.rstrip(" "), heal=False).ids
    lines = sp.encode(right.lstrip(" ").split("\n"), add_eos=True)
    first = lines[0]
    if right[:1] not in (" ", "\n") and first and sp.id_to_piece(first[0]).startswith(SPACE):
        # punctuation right after the word ("___."): sentencepiece's dummy prefix must not add a space
        rest = sp.id_to_piece(first[0])[len(SPACE) :]
        if not rest:
            lines[0] = first[1:]
        elif not sp.IsUnknown(sp.piece_to_id(rest)):
            lines[0] = [sp.piece_to_id(rest)] + first[1:]
    right_ids = [i for line in lines for i in line]
    if right_ids == [EOS_ID] and not left_ids:
        raise SeqlmError("the text is only a blank; give the words around ___")
    return left_ids, right_ids


class Filler:
    """An exported cloze model with its tokenizer: ``fill`` ranks words for one blank."""

    def __init__(
        self, model: torch.nn.Module, sp, device: str | torch.device = "cpu", where: str = "the model"
    ):
        objective = model.config.get("objective", "next")
        if objective != "cloze":
            raise SeqlmError(
                f"{where} is a next-token model, not a cloze model: it cannot read the words after the "
                "blank; train one with train.objective: cloze (and model.bidirectional: true) first"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sp = sp
        self.blank_id = model.config["vocab_size"]
        check_vocab(sp.GetPieceSize(), self.blank_id, where)
        self.masks = piece_masks(sp, self.blank_id, self.device)
        self.max_pieces = MAX_CHAR_PIECES if is_char_model(sp) else MAX_PIECES

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu") -> Filler:
        from seqlm.inference.generator import load_exported

        model, sp, _ = load_exported(model_dir, device)
        return cls(model, sp, device, str(model_dir))

    @torch.inference_mode()
    def _log_probs(self, rows: list[list[int]], positions: list[int]) -> torch.Tensor:
        """Log probabilities [len(rows), V] at ``positions`` of equally long ``rows``."""
        logits, _ = self.model(torch.tensor(rows, dtype=torch.long, device=self.device), None)
        at = torch.tensor(positions, device=self.device)
        return logits[torch.arange(len(rows), device=self.device), at].float().log_softmax(-1)

    def pll(self, left: list[int], words: list[list[int]], right: list[int]) -> list[float]:
        """Pseudo-log-likelihood of each word's pieces in the blank: each piece blanked alone, the rest
        kept. Words of one length share a forward pass."""
        out = [0.0] * len(words)
        for length in sorted({len(w) for w in words}):
            which = [k for k, w in enumerate(words) if len(w) == length]
            rows, positions, targets = [], [], []
            for k in which:
                pieces = words[k]
                for i in range(length):
                    rows.append(left + pieces[:i] + [self.blank_id] + pieces[i + 1 :] + right)
                    positions.append(len(left) + i)
                    targets.append(pieces[i])
            log_probs = self._log_probs(rows, positions)
            picked = log_probs[torch.arange(len(rows)), torch.tensor(targets)].view(len(which), length)
            for k, total in zip(which, picked.sum(1).tolist()):
                out[k] = total
        return out

    def propose(self, left: list[int], right: list[int], pieces: int, beam: int) -> list[str]:
        """Words of ``pieces`` pieces for the blank: ``pieces`` blanks filled left to right by a beam
        search (a word's first piece, then pieces inside a word)."""
        beams: list[tuple[list[int], float]] = [([], 0.0)]
        for j in range(pieces):
            rows = [left + done + [self.blank_id] * (pieces - j) + right for done, _ in beams]
            allowed = self.masks.word_first if j == 0 else self.masks.word_inside
            log_probs = self._log_probs(rows, [len(left) + j] * len(rows)).masked_fill(~allowed, -math.inf)
            total = torch.tensor([score for _, score in beams], device=self.device)[:, None] + log_probs
            best, flat = total.flatten().topk(min(beam, total.numel()))
            beams = [
                (beams[i // self.blank_id][0] + [i % self.blank_id], score)
                for i, score in zip(flat.tolist(), best.tolist())
                if math.isfinite(score)
            ]
        words = (self.sp.decode(done) for done, _ in beams)
        return [w for w in words if w and "\ufffd" not in w and not any(c.isspace() for c in w)]

    def fill(
        self, text: str, top: int = 10, candidates: tuple[str, ...] = ()
    ) -> list[tuple[int, str, float]]:
        """(rank, word, PLL in nats) of the ``top`` best words for the blank in ``text``, best first, and of
        the ``candidates`` below them."""
        if not 1 <= top <= MAX_K:
            raise SeqlmError(f"--top must be between 1 and {MAX_K}, got {top}")
        if len(candidates) > MAX_CANDIDATES:
            raise SeqlmError(f"{len(candidates)} candidates; the limit is {MAX_CANDIDATES}")
        for word in candidates:
            if not word.strip() or any(c.isspace() for c in word.strip()):
                raise SeqlmError(f"a candidate must be one word without spaces, got {word!r}")
        left, right = split_blank(self.sp, text)
        words = {w.strip() for w in candidates}
        beam = max(BEAM, 2 * top)
        for pieces in range(1, self.max_pieces + 1):
            words.update(self.propose(left, right, pieces, beam))
        words = sorted(words)
        pieces = [self.sp.encode(word) for word in words]
        for word, ids in zip(words, pieces):
            if any(self.sp.IsUnknown(i) for i in ids):
                raise SeqlmError(f"candidate {word!r} has characters the model's tokenizer does not know")
            if len(ids) > MAX_CANDIDATE_PIECES:
                raise SeqlmError(
                    f"candidate {word!r} has {len(ids)} pieces; the limit is {MAX_CANDIDATE_PIECES}"
                )
        ranked = sorted(zip(words, self.pll(left, pieces, right)), key=lambda item: (-item[1], item[0]))
        named = {w.strip() for w in candidates}
        # the top words, then any named candidate ranked below them, each with its rank among all
        return [(n, w, lp) for n, (w, lp) in enumerate(ranked, 1) if n <= top or w in named]
