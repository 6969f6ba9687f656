"""The next-word search behind ``Generator.next_words``: a beam search over pieces, word by word.

A word is a piece that starts with "▁" followed by pieces that do not (letters, digits, marks,
bytes), up to a boundary: a new word, punctuation or a line end. Its log probability is
log P(pieces) + log P(boundary | pieces), summed over the segmentations that decode to it.
"""

from __future__ import annotations

import math

import torch

BEAM_PER_WORD = 4  # next_words keeps 4k partial words per step
MAX_WORD_PIECES = 8
MAX_WORD_CHARS = 24  # the depth limit under a char tokenizer, which spells every word out


def max_depth(char_model: bool) -> int:
    """Pieces a word may have: ``MAX_WORD_CHARS`` under a char tokenizer, else ``MAX_WORD_PIECES``."""
    return MAX_WORD_CHARS if char_model else MAX_WORD_PIECES


@torch.inference_mode()
def word_log_probs(gen, ids: list[int], k: int) -> dict[str, float]:
    """Log probability of each word found after the prompt ``ids`` by a search for the ``k`` best.

    ``gen`` is the Generator: its model steps (``prime``, ``advance``), tokenizer and piece masks.
    """
    masks = gen.masks
    logits, state = gen.prime(ids)
    first = logits.log_softmax(-1).masked_fill(~masks.word_first, -math.inf)
    beam_lp, tokens = first.topk(min(BEAM_PER_WORD * k, int(masks.word_first.sum())))
    beams = [[t] for t in tokens.tolist()]
    if not beams:
        return {}
    batch_dim = _state_batch_dim(gen.model)
    state = _select_state(state, torch.zeros(len(beams), dtype=torch.long, device=gen.device), batch_dim)
    words: dict[str, float] = {}
    for depth in range(gen.max_word_pieces):
        logits, state = gen.advance(tokens, state)
        log_probs = logits.log_softmax(-1)
        ends = beam_lp + log_probs.masked_fill(~masks.word_boundary, -math.inf).logsumexp(-1)
        for pieces, end in zip(beams, ends.tolist()):
            word = gen.sp.decode(pieces)
            if word and "\ufffd" not in word:  # not "▁" alone, not an unfinished byte sequence
                words[word] = _log_add(words.get(word, -math.inf), end)
        if depth + 1 == gen.max_word_pieces:
            break
        grown = (beam_lp[:, None] + log_probs.masked_fill(~masks.word_inside, -math.inf)).flatten()
        beam_lp, flat = grown.topk(min(BEAM_PER_WORD * k, grown.numel()))
        alive = beam_lp.isfinite()
        if not alive.any():
            break
        beam_lp, flat = beam_lp[alive], flat[alive]
        parents, tokens = flat // gen.vocab_size, flat % gen.vocab_size
        beams = [beams[p] + [t] for p, t in zip(parents.tolist(), tokens.tolist())]
        state = _select_state(state, parents, batch_dim)
    return words


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _state_batch_dim(model) -> int:
    """Which dimension of the (opaque) state is the batch: the one that grows with ``init_state``'s size."""
    one, two = model.init_state(1), model.init_state(2)
    one, two = (one[0], two[0]) if isinstance(one, tuple) else (one, two)
    return next(d for d in range(one.dim()) if one.shape[d] != two.shape[d])


def _select_state(state, rows: torch.Tensor, dim: int):
    if isinstance(state, tuple):
        return tuple(s.index_select(dim, rows) for s in state)
    return state.index_select(dim, rows)
