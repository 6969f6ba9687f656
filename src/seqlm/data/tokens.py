"""Token arrays on disk, read as parallel streams for truncated BPTT (docs/architecture.md, decision 3).

A split of N tokens is cut into S = batch_size × world_size streams of L = ⌊(N−1)/S⌋ + 1 tokens each;
rank r reads streams r·B … r·B+B−1. Windows of ``bptt`` tokens are consumed left to right, and the
model carries its recurrent state from one window to the next (pytorch/examples word_language_model
``batchify`` / ``get_batch``, with each rank owning its own streams under DDP):

    stream 0 │ a b c d │ e f g h │ i j …      window 0 = columns 0..3, window 1 = columns 4..7, …
    stream 1 │ m n o p │ q r s t │ u v …      target = the same window shifted by one token
    …

Tokens are read through ``np.memmap``: memory does not grow with the corpus (decision 2).
The position inside the streams travels with every batch, so a resumed run continues exactly
where the checkpoint was taken rather than at the start of the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths

# A target that is not one: episode padding, a cloze window's unblanked positions (F.cross_entropy's default).
IGNORE = -100


def read_meta(paths: Paths) -> dict:
    if not paths.tokens_meta.is_file():
        raise SeqlmError(
            f"{paths.tokens_meta}: not found; run the tokenize stage first (`dvc repro tokenize`)"
        )
    return json.loads(paths.tokens_meta.read_text())


def open_tokens(path: Path, dtype: str) -> np.memmap:
    if not path.is_file() or path.stat().st_size == 0:
        raise SeqlmError(
            f"{path}: missing or empty token array; re-run the tokenize stage (`dvc repro tokenize`)"
        )
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


@dataclass(frozen=True)
class Window:
    start: int  # column of the window's first input token in every stream
    length: int  # tokens in this window (≤ bptt; variable with variable_bptt)


def window_length(bptt: int, variable: bool, seed: int, epoch: int, start: int) -> int:
    """AWD-LSTM's variable BPTT (Merity et al., 2017): usually bptt, sometimes bptt/2, jittered.

    Drawn from a generator keyed on (seed, epoch, start) so a resumed run draws the same windows.
    """
    if not variable:
        return bptt
    rng = np.random.default_rng([seed, epoch, start])
    base = bptt if rng.random() < 0.95 else bptt / 2
    return int(max(5, min(2 * bptt, round(rng.normal(base, 5)))))


class StreamWindows(IterableDataset):
    """Yields ``(x, y, end)`` batches of shape [B, T]; ``end`` is the stream column after the window."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        bptt: int,
        rank: int = 0,
        world_size: int = 1,
        variable_bptt: bool = False,
        seed: int = 0,
    ):
        streams = batch_size * world_size
        self.stream_len = (len(tokens) - 1) // streams + 1 if len(tokens) > 1 else 0
        if self.stream_len < 2:
            raise SeqlmError(
                f"a split of {len(tokens)} tokens cannot feed {streams} streams (batch_size × devices); "
                "lower train.batch_size or use a larger corpus"
            )
        self.tokens = tokens
        self.offsets = (np.arange(rank * batch_size, (rank + 1) * batch_size) * (self.stream_len - 1)).astype(
            np.int64
        )
        self.bptt = bptt
        self.variable_bptt = variable_bptt
        self.seed = seed
        self.epoch = 0
        self.start = 0  # set by the data module on resume; consumed by the next iteration

    def windows(self, pos: int = 0) -> Iterator[Window]:
        last = self.stream_len - 1  # the final column is only ever a target
        while pos < last:
            length = min(window_length(self.bptt, self.variable_bptt, self.seed, self.epoch, pos), last - pos)
            yield Window(pos, length)
            pos += length

    def read(self, window: Window) -> tuple[torch.Tensor, torch.Tensor]:
        # Overlapping streams share their boundary token (stream i's last target is stream i+1's first input),
        # so every token but the first is a target exactly once.
        cols = self.offsets[:, None] + window.start + np.arange(window.length + 1)
        chunk = torch.from_numpy(np.asarray(self.tokens[cols], dtype=np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self):
        start, self.start = self.start, 0  # a resume offset applies to one pass only
        for window in self.windows(start):
            x, y = self.read(window)
            yield x, y, window.start + window.length

    def num_windows(self) -> int:
        return sum(1 for _ in self.windows())

    num_batches = num_windows  # what EpisodeBatches calls the same count
