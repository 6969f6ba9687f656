"""Blanking windows for the cloze objective (``train.objective: cloze``, decision 20 in docs/architecture.md).

Each row of a window gets exactly ``round(rate · T)`` blanked positions (at least one), drawn from a
generator keyed on integers (seed, split, rank, step…): the same key gives the same blanks on every
machine, so a resumed run blanks what an uninterrupted one would, and evaluation's blanks are fixed.
A fixed count per row (BERT's 15% of positions, Devlin et al. 2019, arXiv:1810.04805) rather than a coin
per token keeps every row's loss defined. The blank's input id is ``vocab_size``, one past the last piece:
it is an input only and never a target.
"""

from __future__ import annotations

import numpy as np
import torch

from seqlm.data.tokens import IGNORE  # an unblanked position has no target

# Keys that keep the blanks of the splits apart (train draws with its step, evaluation with its window).
TRAIN_KEY, VALID_KEY, TEST_KEY = 0, 1, 2
SPLIT_KEYS = {"train": TRAIN_KEY, "valid": VALID_KEY, "test": TEST_KEY}


def blanks_per_row(length: int, rate: float) -> int:
    return min(length, max(1, round(rate * length)))


def blank_mask(batch: int, length: int, rate: float, key: list[int]) -> torch.Tensor:
    """Bool [batch, length]: ``blanks_per_row`` True positions per row, drawn from ``key``."""
    rng = np.random.default_rng([int(k) for k in key])
    order = rng.random((batch, length)).argsort(axis=1)[:, : blanks_per_row(length, rate)]
    mask = np.zeros((batch, length), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return torch.from_numpy(mask)


def blank_batch(
    tokens: torch.Tensor, rate: float, key: list[int], blank_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a cloze window: blanked positions read ``blank_id`` and are the only targets
    (the original token); every other target is ``IGNORE``."""
    mask = blank_mask(tokens.shape[0], tokens.shape[1], rate, key).to(tokens.device)
    return tokens.masked_fill(mask, blank_id), tokens.masked_fill(~mask, IGNORE)
