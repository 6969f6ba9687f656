"""Token arrays read as independent episodes, one per line (``train.episodic``; decision 22 in
docs/architecture.md).

Every line of a split (its tokens and its eos) is one episode. A batch holds B whole episodes, one per
row, right-padded to the longest of them; each row reads the eos that ends the line before it (or, for
the first line, the same eos id) as its first input, so every token of the split is a target exactly
once and the model starts every episode from a fresh state with a line-start token:

    row 0 │ </s> C . . . ? │  →  targets  C . . . ? C </s>
    row 1 │ </s> F . . . ? │  →  targets  F . . . ? F </s>
    row 2 │ </s> a b       │  →  targets  a b </s> pad pad pad      (pad = IGNORE, no loss, not scored)

No state crosses a row or a batch, so the window is the episode: BPTT spans the whole episode, and an
episode longer than the window limit (``train.bptt`` in training, ``evaluate.bptt`` in evaluation) is
refused rather than cut. Right padding is harmless to a causal model: what it computes after an
episode's end is never scored and never reaches another episode. The recall position of an episode
(what ``synthetic:`` probes score) is its last token before the eos.

Training batches draw the episodes in an order shuffled per epoch from a generator keyed on
(seed, epoch), drop the last incomplete batch, and give rank r every W-th batch; the batch index
travels with every batch so that a resumed run continues the same epoch where it stopped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset

from seqlm.core.errors import SeqlmError
from seqlm.data.tokens import IGNORE  # padding: no target


def episode_bounds(tokens: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """First token and length (with its eos) of every line; tokens after the last eos are no episode."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else ends
    return starts, ends - starts + 1


def recall_mask(y: torch.Tensor) -> torch.Tensor:
    """[B, T] True at each row's recall position: the last target before the episode's eos."""
    lengths = (y != IGNORE).sum(1)
    mask = torch.zeros_like(y, dtype=torch.bool)
    rows = torch.nonzero(lengths >= 2).squeeze(1)
    mask[rows, lengths[rows] - 2] = True
    return mask


class EpisodeBatches(IterableDataset):
    """Yields ``(x, y, end)``: [B, T] inputs and targets (padding ``IGNORE``) and the next batch index."""

    def __init__(
        self,
        tokens: np.ndarray,
        eos_id: int,
        batch_size: int,
        max_len: int,
        where: str,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
    ):
        """``where`` names the split and the limit's key in messages, e.g. ``("train", "train.bptt")``.

        ``shuffle`` is the training layout: shuffled per epoch, only full batches, each rank the same
        number. Without it every episode is read once, in order, the last batch possibly smaller.
        """
        split, limit_key = where
        self.starts, self.lengths = episode_bounds(tokens, eos_id)
        if len(self.lengths) == 0:
            raise SeqlmError(f"the {split} split holds no line: episodes are lines; put lines in it")
        longest = int(self.lengths.argmax())
        if self.lengths[longest] > max_len:
            raise SeqlmError(
                f"line {longest + 1} of the {split} split is an episode of {self.lengths[longest]} tokens "
                f"(with its eos), more than {limit_key} {max_len}; raise {limit_key} to at least "
                f"{self.lengths[longest]} so that no episode is cut, or shorten the lines"
            )
        streams = batch_size * world_size
        if shuffle and len(self.lengths) < streams:
            raise SeqlmError(
                f"the {split} split holds {len(self.lengths)} episodes, fewer than one batch of "
                f"{streams} (train.batch_size × devices); lower train.batch_size or use more lines"
            )
        self.tokens, self.eos_id = tokens, eos_id
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start = 0  # set by the data module on resume; consumed by the next iteration

    def order(self) -> np.ndarray:
        """Episode indices in this epoch's order."""
        n = len(self.lengths)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def num_batches(self) -> int:
        """Batches this rank reads in one pass."""
        n, b, w = len(self.lengths), self.batch_size, self.world_size
        if self.shuffle:
            return n // (b * w)
        total = -(-n // b)
        return len(range(self.rank, total, w))

    def batch_rows(self, index: int, order: np.ndarray | None = None) -> np.ndarray:
        """Episode indices of this rank's batch ``index``."""
        order = self.order() if order is None else order
        at = (index * self.world_size + self.rank) * self.batch_size
        return order[at : at + self.batch_size]

    def read(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        starts, lengths = self.starts[rows], self.lengths[rows]
        steps = np.arange(int(lengths.max()) + 1)
        cols = np.clip(starts[:, None] - 1 + steps, 0, len(self.tokens) - 1)
        chunk = np.asarray(self.tokens[cols], dtype=np.int64)
        chunk[:, 0] = self.eos_id  # the line before's eos; for the first line, the same id
        inside = steps[None, :] <= lengths[:, None]
        x = np.where(inside, chunk, self.eos_id)[:, :-1]
        y = np.where(inside, chunk, IGNORE)[:, 1:]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def __iter__(self):
        start, self.start = self.start, 0  # a resume offset applies to one pass only
        order = self.order()
        for index in range(start, self.num_batches()):
            x, y = self.read(self.batch_rows(index, order))
            yield x, y, index + 1
