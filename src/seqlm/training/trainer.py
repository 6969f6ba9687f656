"""The Lightning Trainer of the train stage: budgets, validation cadence, callbacks, and why it stopped."""

from __future__ import annotations

import datetime as dt
import sys

import lightning.pytorch as pl

from seqlm.config import Config
from seqlm.core.paths import Paths
from seqlm.training.callbacks import BestWeights, PeriodicCheckpoint, TrainProgress


def callbacks(
    cfg: Config, paths: Paths, mlflow_client, run_id: str
) -> tuple[TrainProgress, BestWeights, list]:
    """The progress and best-weights callbacks, and the full list the Trainer runs."""
    progress = TrainProgress(mlflow_client, run_id, cfg.train.log_every_steps)
    best = BestWeights(paths.best_weights)
    every = [progress, best, PeriodicCheckpoint(paths.last_ckpt, cfg.train.checkpoint_every_minutes)]
    if cfg.train.early_stopping_patience:
        every.append(
            pl.callbacks.EarlyStopping(
                "val_loss", patience=cfg.train.early_stopping_patience, check_on_train_epoch_end=False
            )
        )
    return progress, best, every


def build_trainer(cfg: Config, paths: Paths, precision: str, callbacks: list) -> pl.Trainer:
    """Our own logging and checkpointing replace Lightning's; budgets come from ``train.*``."""
    train = cfg.train
    return pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        num_nodes=train.num_nodes,
        precision=precision,
        max_epochs=train.max_epochs,
        max_steps=train.max_steps or -1,
        max_time=dt.timedelta(minutes=train.max_minutes) if train.max_minutes else None,
        val_check_interval=train.val_every_steps or 1.0,
        check_val_every_n_epoch=None if train.val_every_steps else 1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=str(paths.models_dir),
    )


def stop_reason(trainer: pl.Trainer, cfg: Config) -> str:
    """Which budget ended training: max_steps, early_stopping, max_minutes or max_epochs."""
    if cfg.train.max_steps and trainer.global_step >= cfg.train.max_steps:
        return "max_steps"
    early = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.EarlyStopping)), None)
    if early is not None and early.wait_count >= early.patience:
        return "early_stopping"
    timer = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
    if (
        timer is not None
        and cfg.train.max_minutes
        and timer.time_elapsed("train") >= cfg.train.max_minutes * 60 - 1
    ):
        return "max_minutes"
    return "max_epochs"
