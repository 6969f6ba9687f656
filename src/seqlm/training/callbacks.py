"""Lightning callbacks of the train stage: step metrics and curves, best weights, periodic checkpoints,
and the stop once a probe is solved."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from seqlm.tracking.run import RunHandle


class TrainProgress(pl.Callback):
    """Step metrics every ``every`` steps: to the curves, to MLflow, and to the console.

    Per-step values stay on the device as running tensors; they are read (a host sync) only at the
    logging interval, so the hot loop never waits on ``.item()``.
    """

    def __init__(self, run: RunHandle | None, every: int):
        from seqlm.tracking.metrics import MetricBuffer

        self.buffer = MetricBuffer(run)
        self.every = every
        self.rows: list[dict] = []
        self.tokens = 0
        self.train_seconds = 0.0  # excludes validation
        self.steps = 0
        self.clipped = 0
        self.print_every_s = 30.0
        self._reset_window()
        self._last_print = 0.0
        self._t = None

    def attach(self, run: RunHandle) -> None:
        """Send step metrics to this run (rank 0 only; until then nothing is sent)."""
        self.buffer.run = run

    def _reset_window(self):
        self._loss_sum = None
        self._clip_sum = None
        self._norm_sum = None
        self._n = 0
        self._window_tokens = 0
        self._window_seconds = 0.0

    def on_train_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        elapsed, self._t = now - self._t, now
        tokens = batch[0].numel() * trainer.world_size
        self.tokens += tokens
        self.train_seconds += elapsed
        self._window_tokens += tokens
        self._window_seconds += elapsed
        self.steps += 1
        loss, norm = pl_module.last_loss, pl_module.last_grad_norm
        clip = pl_module.cfg.grad_clip
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if norm is not None:
            hit = (norm > clip).float() if clip > 0 else torch.zeros((), device=norm.device)
            self._norm_sum = norm if self._norm_sum is None else self._norm_sum + norm
            self._clip_sum = hit if self._clip_sum is None else self._clip_sum + hit
        self._n += 1
        if trainer.global_step % self.every == 0:
            self._emit(trainer, pl_module)
        if self.buffer.lost is not None:
            # Stop here, where PeriodicCheckpoint.on_exception saves a state that resumes exactly.
            from seqlm.tracking.metrics import TrackingLost

            raise TrackingLost(self.buffer.lost)

    def _emit(self, trainer, pl_module):
        n = self._n
        clipped = float(self._clip_sum) if self._clip_sum is not None else 0.0
        self.clipped += clipped
        row = {
            "step": trainer.global_step,
            "train_loss": float(self._loss_sum) / n,
            "lr": pl_module.last_lr,
            "grad_norm": float(self._norm_sum) / n if self._norm_sum is not None else float("nan"),
            "fraction_clipped": clipped / n,
            "tokens_per_s": self._window_tokens / max(self._window_seconds, 1e-9),
        }
        self._reset_window()
        if trainer.global_rank != 0:
            return
        self.rows.append(row)
        self.buffer.add(row["step"], {k: v for k, v in row.items() if k != "step" and math.isfinite(v)})
        pl_module.log("tok/s", row["tokens_per_s"], prog_bar=True, logger=False)
        now = time.perf_counter()
        if not sys.stderr.isatty() and now - self._last_print >= self.print_every_s:
            self._last_print = now
            print(
                f"train: step {row['step']}  loss {row['train_loss']:.3f}  lr {row['lr']:.2e}  "
                f"grad norm {row['grad_norm']:.2f}  {row['tokens_per_s']:,.0f} tokens/s",
                flush=True,
            )

    def on_validation_start(self, trainer, pl_module):
        self._val_t = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if self._t is not None:  # validation time is not training time
            self._t += time.perf_counter() - self._val_t
        if trainer.global_rank != 0 or not pl_module.val_history or trainer.sanity_checking:
            return
        step, val_loss = pl_module.val_history[-1]
        metrics = pl_module.val_metrics(val_loss)
        self.buffer.add(step, metrics)
        self.buffer.flush()
        if not sys.stderr.isatty():
            key, bits = next((k, v) for k, v in metrics.items() if k != "val_loss")
            unit = "bits/" + key.removeprefix("val_bits_per_")  # bits/byte, or bits/blank for cloze
            print(f"train: step {step}  val loss {val_loss:.4f}  val {unit} {bits:.4f}", flush=True)

    def summary(self) -> dict:
        last = self.rows[-1]["train_loss"] if self.rows else float("nan")
        return {
            "train_loss": last,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / max(self.train_seconds, 1e-9),
            "wall_seconds": self.train_seconds,
            "fraction_clipped": self.clipped / max(self.steps, 1),
        }

    def close(self) -> None:
        self.buffer.flush()

    # Curves and totals survive a resume with the checkpoint.
    def state_dict(self):
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "steps": self.steps,
            "clipped": self.clipped,
        }

    def load_state_dict(self, state_dict):
        self.rows = list(state_dict.get("rows", []))
        self.tokens = state_dict.get("tokens", 0)
        self.train_seconds = state_dict.get("train_seconds", 0.0)
        self.steps = state_dict.get("steps", 0)
        self.clipped = state_dict.get("clipped", 0)


class BestWeights(pl.Callback):
    """Writes the weights of the best validation so far, for export at the end (and across resumes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.best = math.inf

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not pl_module.val_history:
            return
        _, val_loss = pl_module.val_history[-1]
        if val_loss < self.best and trainer.global_rank == 0:
            from seqlm.models.export import save_weights

            self.best = val_loss
            save_weights(pl_module.model, self.path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state_dict):
        self.best = state_dict.get("best", math.inf)


class StopWhenSolved(pl.Callback):
    """Stops training after a validation whose recall accuracy reaches ``threshold``
    (``train.stop_at_recall``; 0 is off): a probe is then measured in updates to solve (decision 22).

    The recall is read from totals summed across ranks before any rank reads them, so every rank
    decides alike and all stop at the same step. The step it solved at is kept in checkpoints: a run
    resumed after it stops at once instead of training on (under the same threshold; another one decides
    again at the next validation).
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.solved_at: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if not self.threshold or trainer.sanity_checking or self.solved_at is not None:
            return
        recall = pl_module.val_recall
        if recall is not None and recall["accuracy"] >= self.threshold:
            self.solved_at = trainer.global_step
            trainer.should_stop = True

    def on_train_start(self, trainer, pl_module):
        if self.solved_at is not None:
            trainer.should_stop = True

    def state_dict(self):
        return {"threshold": self.threshold, "solved_at": self.solved_at}

    def load_state_dict(self, state_dict):
        if state_dict.get("threshold") == self.threshold:
            self.solved_at = state_dict.get("solved_at")


class PeriodicCheckpoint(pl.Callback):
    """``models/last.ckpt`` every few minutes, at the end, on Ctrl-C, on SIGTERM and when the tracking
    server is lost: what a re-run resumes from.

    Written to a temporary file and renamed, so a kill -9 mid-write leaves the previous checkpoint intact.
    """

    def __init__(self, path: Path, every_minutes: float):
        self.path = Path(path)
        self.every_s = every_minutes * 60.0
        self._last = time.monotonic()
        self._sigterm = None

    def on_train_start(self, trainer, pl_module):
        # Lightning registers its SIGTERM handler just before this hook; that handler makes the loops
        # raise SIGTERMException, also in the middle of a validation, a state that resumes differently.
        # Ours defers Lightning's to the end of the current training step, where periodic checkpoints
        # are written (the state the kill -9 test proves), and then calls it (it tells DDP workers).
        if threading.current_thread() is not threading.main_thread():
            return
        lightning_handler = signal.getsignal(signal.SIGTERM)

        def defer(signum, frame):
            self._sigterm = (lightning_handler, signum, frame)

        signal.signal(signal.SIGTERM, defer)

    def save(self, trainer) -> None:
        from seqlm.core.atomic import temporary_prefix
        from seqlm.core.errors import disk_full

        tmp = self.path.with_name(f"{temporary_prefix(self.path)}save.tmp")
        try:
            trainer.save_checkpoint(str(tmp), weights_only=False)
        except BaseException as exc:
            full = disk_full(exc, self.path)  # before the partial file goes: that frees the space
            tmp.unlink(missing_ok=True)
            if full is not None:
                raise full from None
            raise
        if trainer.global_rank == 0:
            tmp.replace(self.path)
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        due, stop = time.monotonic() - self._last >= self.every_s, self._sigterm is not None
        if trainer.world_size > 1:
            # One decision for every rank: save_checkpoint waits at a barrier, so ranks whose clocks (or
            # signals) disagree by a step would wait for each other for ever. Any rank's wish counts.
            wish = torch.tensor([float(due), float(stop)], device=pl_module.device)
            due, stop = (bool(x) for x in trainer.strategy.reduce(wish, reduce_op="max"))
        if stop:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            self.save(trainer)
            if self._sigterm is not None:
                handler, signum, frame = self._sigterm
                if callable(handler):
                    handler(signum, frame)
            raise SIGTERMException(143)
        if due:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception):
        from seqlm.tracking.metrics import TrackingLost

        if isinstance(exception, KeyboardInterrupt):
            self.save(trainer)
            print(
                f"train: interrupted at step {trainer.global_step}; saved {self.path.name}. "
                "Re-run to resume.",
                flush=True,
            )
        elif isinstance(exception, TrackingLost):
            self.save(trainer)  # raised at the end of a training step, like a periodic save
