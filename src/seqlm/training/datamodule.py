"""The Lightning data module of the train stage: train and valid token streams, one set per rank.

The stream layout itself lives in ``seqlm.data.tokens`` (shared with evaluation), the episode layout of
``train.episodic`` in ``seqlm.data.episodes``; this module only hands their batches to Lightning,
restores the stream column (or the episode batch) on resume and keeps the loaders' RNG private.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from seqlm.core.paths import Paths
from seqlm.data.episodes import EpisodeBatches
from seqlm.data.tokens import StreamWindows, open_tokens, read_meta


class TokenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        paths: Paths,
        batch_size: int,
        bptt: int,
        variable_bptt: bool = False,
        seed: int = 0,
        episodic: bool = False,
    ):
        super().__init__()
        self.paths = paths
        self.batch_size = batch_size
        self.bptt = bptt
        self.variable_bptt = variable_bptt
        self.seed = seed
        self.episodic = episodic
        self.meta = read_meta(paths)
        self._train: StreamWindows | EpisodeBatches | None = None

    def split(
        self, name: str, rank: int, world_size: int, variable_bptt: bool = False
    ) -> StreamWindows | EpisodeBatches:
        tokens = open_tokens(self.paths.tokens(name), self.meta["dtype"])
        if self.episodic:  # training shuffles whole episodes; validation reads each once, in order
            where = (name, "train.bptt")
            shuffle = name == "train"
            eos = self.meta["eos_id"]
            return EpisodeBatches(
                tokens, eos, self.batch_size, self.bptt, where, rank, world_size, shuffle, self.seed
            )
        return StreamWindows(tokens, self.batch_size, self.bptt, rank, world_size, variable_bptt, self.seed)

    def split_windows(self, name: str, rank: int = 0, world_size: int = 1) -> int:
        """Windows (or episode batches) in one pass over ``name`` (for the schedule's horizon)."""
        split = self.split(name, rank, world_size, self.variable_bptt)
        return split.num_batches() if self.episodic else split.num_windows()

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        self._train = self.split("train", trainer.global_rank, trainer.world_size, self.variable_bptt)
        # A resumed run restores the module's stream column first; the first pass continues from it. Its
        # epoch too: Lightning skips on_train_epoch_start (set_epoch) when it resumes mid-epoch.
        self._train.start = getattr(trainer.lightning_module, "column", 0)
        self._train.epoch = trainer.current_epoch
        # batch_size=None: the dataset yields whole [B, T] batches, in order (streams must not shuffle).
        return DataLoader(self._train, batch_size=None, num_workers=0, generator=self._generator())

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        valid = self.split("valid", trainer.global_rank, trainer.world_size)
        return DataLoader(valid, batch_size=None, num_workers=0, generator=self._generator())

    def _generator(self) -> torch.Generator:
        # A loader draws a seed from its generator on every iter(); a private one keeps the global RNG
        # (dropout) on the same sequence whether or not a run was interrupted and resumed.
        return torch.Generator().manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        if self._train is not None:
            self._train.epoch = epoch
