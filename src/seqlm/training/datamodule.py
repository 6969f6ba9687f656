"""The Lightning data module of the train stage: train and valid batches, one set per rank.

The protocol (``seqlm.evaluation.protocol``) lays the batches out: streams (``seqlm.data.tokens``, shared
with evaluation) or episodes (``seqlm.data.episodes``); this module only hands them to Lightning, restores
the stream column (or the episode batch) on resume and keeps the loaders' RNG private.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from seqlm.core.paths import Paths
from seqlm.data.tokens import open_tokens, read_meta
from seqlm.evaluation.protocol import Protocol
from seqlm.evaluation.streamed import Streamed


class TokenDataModule(pl.LightningDataModule):
    def __init__(
        self,
        paths: Paths,
        batch_size: int,
        bptt: int,
        variable_bptt: bool = False,
        seed: int = 0,
        protocol: Protocol | None = None,
    ):
        super().__init__()
        self.paths = paths
        self.batch_size = batch_size
        self.bptt = bptt
        self.variable_bptt = variable_bptt
        self.seed = seed
        self.protocol = protocol or Streamed()
        self.meta = read_meta(paths)
        self._train = None

    def split(self, name: str, rank: int, world_size: int, variable_bptt: bool = False):
        """The protocol's batches of split ``name`` for ``rank``: training's layout for train."""
        tokens = open_tokens(self.paths.tokens(name), self.meta["dtype"])
        return self.protocol.batches(
            tokens,
            self.meta["eos_id"],
            self.batch_size,
            self.bptt,
            (name, "train.bptt"),
            rank,
            world_size,
            train=name == "train",
            variable_bptt=variable_bptt,
            seed=self.seed,
        )

    def split_windows(self, name: str, rank: int = 0, world_size: int = 1) -> int:
        """Windows (or episode batches) in one pass over ``name`` (for the schedule's horizon)."""
        return self.split(name, rank, world_size, self.variable_bptt).num_batches()

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
