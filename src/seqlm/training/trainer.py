"""The Lightning Trainer of the train stage: budgets, validation cadence, callbacks, and why it stopped."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import sys
import threading

import lightning.pytorch as pl

from seqlm.config import Config
from seqlm.core.atomic import remove
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.tracking.run import RunHandle
from seqlm.training.callbacks import BestWeights, PeriodicCheckpoint, StopWhenSolved, TrainProgress


def callbacks(cfg: Config, paths: Paths) -> tuple[TrainProgress, BestWeights, list]:
    """The progress and best-weights callbacks, and the full list the Trainer runs.

    Rank 0 attaches the MLflow run to ``progress`` once the Trainer knows the ranks; the others log nothing.
    """
    progress = TrainProgress(None, cfg.train.log_every_steps)
    best = BestWeights(paths.best_weights)
    every = [
        progress,
        best,
        PeriodicCheckpoint(paths.last_ckpt, cfg.train.checkpoint_every_minutes),
        StopWhenSolved(cfg.train.stop_at_recall),  # inert at 0
    ]
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


def agree_on_resume(trainer: pl.Trainer, decide, peek):
    """Every rank resumes from what rank 0 decided (``decide``, which may move state aside).

    Lightning's own launcher starts the other local ranks from inside ``fit``, after rank 0 decided, so
    they ``peek`` at the state it left. Ranks started together (torchrun, SLURM) would race rank 0, so
    Lightning's process-group set-up runs here, before ``fit`` (which then finds it done), and the
    decision is broadcast from rank 0.
    """
    if trainer.world_size == 1:
        return decide()
    from lightning.fabric.plugins.environments import LightningEnvironment

    if isinstance(trainer.strategy.cluster_environment, LightningEnvironment):
        return decide() if trainer.global_rank == 0 else peek()
    trainer.strategy.setup_environment()
    return trainer.strategy.broadcast(decide() if trainer.global_rank == 0 else None, src=0)


def solved(trainer: pl.Trainer) -> bool | None:
    """Whether a validation's recall reached ``train.stop_at_recall``; None when it is off."""
    stop = next(c for c in trainer.callbacks if isinstance(c, StopWhenSolved))
    return stop.solved_at is not None if stop.threshold else None


def stop_reason(trainer: pl.Trainer, cfg: Config) -> str:
    """What ended training: solved (the recall threshold), or the budget: max_steps, early_stopping,
    max_minutes or max_epochs."""
    if solved(trainer):
        return "solved"
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


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises Lightning's SIGTERMException instead of killing the process on the spot.

    Outside ``fit`` this lets the stage mark its run and say one line; inside it, Lightning composes
    this handler with its own and PeriodicCheckpoint defers both to the end of a training step.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SIGTERMException(143)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def fit(trainer: pl.Trainer, lm, datamodule, ckpt_path, paths: Paths, run: RunHandle | None, progress):
    """``trainer.fit``; on an interruption the run is marked and one line says what a re-run resumes."""
    from seqlm.tracking.metrics import TrackingLost

    try:
        trainer.fit(lm, datamodule=datamodule, ckpt_path=ckpt_path)
        if progress.buffer.lost is not None:  # the last validation's flush found no store
            raise TrackingLost(progress.buffer.lost)
    except BaseException as exc:
        raise stopped(exc, paths, run, progress, trainer.global_step) from None


def stopped(exc: BaseException, paths: Paths, run: RunHandle | None, progress, step: int):
    """After ``fit`` raised: mark the run, keep what a re-run needs; the exception to raise instead."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from seqlm.tracking.metrics import TrackingLost
    from seqlm.training.lightning_module import Diverged

    if isinstance(exc, Diverged):
        # A diverged run leaves nothing to resume from or to export (decision 19).
        progress.close()
        remove(paths.last_ckpt, paths.best_weights, paths.last_state, paths.unsent_metrics)
        mark_run(run, "FAILED")
        return exc
    sent = progress.buffer.lost is None and progress.buffer.flush()
    status = "KILLED"
    if isinstance(exc, TrackingLost):
        status, what = "FAILED", f"{exc} at step {step}"
    elif isinstance(exc, SIGTERMException):
        what = f"stopped by SIGTERM at step {step}"
    elif isinstance(exc, SeqlmError):  # a full disk: its own line says what to do
        status, what = "FAILED", None
    else:
        what = None  # Ctrl-C (Lightning turns it into SystemExit) or a bug: keep it as it is
    kept = "" if sent else _keep_unsent(progress, paths)
    mark_run(run, status)
    if what is None:
        return exc
    return SeqlmError(f"train: {what}; saved {paths.last_ckpt.relative_to(paths.root)}{kept}; {RESUME}")


RESUME = "re-run `seqlm train` to resume"


def _keep_unsent(progress, paths: Paths) -> str:
    """Write the step metrics the store did not take beside the checkpoint; what the error line adds."""
    where = paths.unsent_metrics.relative_to(paths.root)
    try:
        return f" and {progress.buffer.save_unsent(paths.unsent_metrics)} unsent metrics in {where}"
    except (SeqlmError, OSError) as exc:  # a full disk, most likely
        return f"; {len(progress.buffer.pending)} step metrics were lost ({where}: {exc})"


def mark_run(run: RunHandle | None, status: str) -> None:
    """End the run with ``status`` if it is still RUNNING; a store that does not answer is left be."""
    from seqlm.tracking.metrics import store_errors

    if run is None:  # a rank other than 0: the run is rank 0's
        return
    with contextlib.suppress(*store_errors()):
        if run.get().info.status == "RUNNING":
            run.client.set_terminated(run.run_id, status=status)


@contextlib.contextmanager
def run_ends_marked(run: RunHandle | None, paths: Paths):
    """Around the train stage's work outside ``fit``: whatever stops it leaves the run KILLED (a signal)
    or FAILED, never RUNNING, and a lost store or a SIGTERM becomes one line saying what a re-run does."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    from seqlm.tracking.metrics import TrackingLost

    try:
        yield
    except BaseException as exc:
        signalled = isinstance(exc, (SIGTERMException, KeyboardInterrupt))
        mark_run(run, "KILLED" if signalled else "FAILED")
        saved = ""
        if paths.last_ckpt.is_file():
            saved = f"; saved {paths.last_ckpt.relative_to(paths.root)}"
        if isinstance(exc, SIGTERMException):
            raise SeqlmError(
                f"train: stopped by SIGTERM outside the training loop{saved}; {RESUME}"
            ) from None
        if isinstance(exc, (MlflowException, RequestException)):
            raise SeqlmError(f"train: {TrackingLost(exc)} (after training){saved}; {RESUME}") from None
        raise
