"""The LightningModule: carried state, optimiser, learning-rate schedule, clipping statistics.

The network itself is a plain ``nn.Module`` from ``seqlm.models``; this module owns what training adds
around it. What a batch is, its loss and its validation sums belong to the protocol
(``seqlm.evaluation.protocol``: streamed, episodic or cloze), chosen once from the config; this module
keeps what the protocol hands back. Truncated BPTT is the streamed protocol's (Lightning 2.x removed
``truncated_bptt_steps``): the state it returns is carried to the next window, and it detaches it.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from seqlm.config import TrainConfig
from seqlm.core.errors import SeqlmError
from seqlm.evaluation.metrics import SUMS, Totals
from seqlm.evaluation.protocol import Protocol
from seqlm.evaluation.protocols import for_training
from seqlm.training.loss import decoder_cross_entropy


def _to_device(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return type(state)(_to_device(s, device) for s in state)


class Diverged(SeqlmError):
    """The loss became NaN or infinite; nothing from this run may be exported."""


def lr_factor(schedule: str, step: int, warmup_steps: int, progress: float, plateau_scale: float) -> float:
    """Multiplier on the peak learning rate: linear warm-up, then the schedule.

    Cosine decays to 10% of the peak at ``progress`` = 1, where progress is the larger of the
    step fraction and the wall-clock budget fraction, so a time-limited run still anneals.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "cosine":
        return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    if schedule == "plateau":
        return warm * plateau_scale
    return warm


class LitLanguageModel(pl.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        train: TrainConfig,
        valid_split: dict,
        total_steps: int,
        seed: int = 0,
        protocol: Protocol | None = None,
    ):
        super().__init__()
        self.model = model
        self.cfg = train
        self.valid_split = valid_split  # meta.json's entry for valid: its tokens and bytes
        self.total_steps = total_steps
        self.protocol = protocol or for_training(train, seed)  # seed keys the cloze objective's blanks
        self.max_seconds = train.max_minutes * 60.0
        # Carried between windows and saved in checkpoints so a resumed run continues the same streams.
        self.train_state = None
        self.column = 0
        self.plateau_scale = 1.0
        self.best_val_loss = math.inf
        self.last_loss: torch.Tensor | None = None
        self.last_grad_norm: torch.Tensor | None = None
        self.last_lr = 0.0
        self.val_history: list[tuple[int, float]] = []
        self._val_state = None
        self._val_sums = None
        # the last validation's top-1 accuracy and bits at the recall positions (the episodic protocol)
        self.val_recall: dict | None = None

    # ------------------------------------------------------------------------------------ training

    def progress(self) -> float:
        by_steps = self.global_step / self.total_steps if self.total_steps else 0.0
        by_time = 0.0
        if self.max_seconds and self._trainer is not None:
            timer = next((c for c in self.trainer.callbacks if isinstance(c, pl.callbacks.Timer)), None)
            if timer is not None:
                by_time = (timer.time_elapsed("train") or 0.0) / self.max_seconds
        return max(by_steps, by_time)

    def on_train_start(self):
        if self.train_state is not None:  # restored from a checkpoint, on the CPU
            self.train_state = _to_device(self.train_state, self.device)

    def on_train_epoch_start(self):
        if self.column == 0:  # a new pass over the streams starts from fresh state
            self.train_state = None
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            datamodule.set_epoch(self.current_epoch)

    def on_train_epoch_end(self):
        self.column = 0

    def on_train_batch_start(self, batch, batch_idx):
        factor = lr_factor(
            self.cfg.schedule, self.global_step, self.cfg.warmup_steps, self.progress(), self.plateau_scale
        )
        # Variable-length windows see the learning rate scaled by their length (AWD-LSTM, Merity et al. 2017);
        # an episode's length is not a window's (the episodic protocol: bptt only bounds it).
        if self.protocol.scales_lr_by_window:
            factor *= batch[0].shape[1] / self.cfg.bptt
        self.last_lr = self.cfg.lr * factor
        for group in self.optimizers().param_groups:
            group["lr"] = self.last_lr

    def training_step(self, batch, batch_idx):
        key = self.protocol.key("train", self.global_step, self.global_rank)
        ce, loss, self.train_state = self.protocol.training_loss(
            self.model, batch, self.train_state, key, self._loss
        )
        self._check_finite(loss)
        self.column = int(batch[2])  # the next window's stream column, or the next batch of episodes
        self.last_loss = ce.detach()  # the cross-entropy alone, comparable with val_loss
        self.log("loss", self.last_loss, prog_bar=True, logger=False)
        return loss

    def _loss(self, hidden: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy through the decoder in chunks of ``train.loss_chunk_mb`` of logits (models.loss),
        plus AWD-LSTM's activation regularisation: AR, alpha × mean(dropped output²), and temporal AR,
        beta × mean((h_t - h_{t-1})²) on the undropped output (Merity et al., 2017, §4.6)."""
        dropped = self.model.drop(hidden)
        features = self.model.project(dropped)
        decoder = self.model.decoder
        chunk = 0  # fp32 logits rows per chunk; 0: all at once
        if self.cfg.loss_chunk_mb > 0:
            chunk = max(1, int(self.cfg.loss_chunk_mb * 2**20 / (4 * decoder.weight.shape[0])))
        features = features.reshape(-1, features.shape[-1])
        ce = decoder_cross_entropy(features, decoder.weight, decoder.bias, y.reshape(-1), chunk)
        loss = ce
        if self.cfg.activation_reg:
            loss = loss + self.cfg.activation_reg * dropped.float().pow(2).mean()
        if self.cfg.temporal_activation_reg and hidden.shape[1] > 1:
            step = (hidden[:, 1:] - hidden[:, :-1]).float()
            loss = loss + self.cfg.temporal_activation_reg * step.pow(2).mean()
        return ce, loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise Diverged(
                f"training diverged: the loss became {loss.item()} at step {self.global_step}; "
                f"lower train.lr (now {self.cfg.lr:g}) or clip gradients with train.grad_clip "
                f"(now {self.cfg.grad_clip:g})"
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Always measure the norm (it is the exploding-gradient diagnostic); clip only when enabled.
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm).detach()

    def configure_optimizers(self):
        # Decay matrices, not biases or gains (the usual AdamW grouping).
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    # ---------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self):
        self._val_state = None
        self._val_sums = torch.zeros(SUMS, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        # the same per-batch sums as the evaluate stage's pass (the protocol's score): one definition
        key = self.protocol.key("valid", batch_idx, self.global_rank)
        sums, self._val_state = self.protocol.score(self.model, batch, self._val_state, key)
        self._val_sums += sums

    def on_validation_epoch_end(self):
        totals = Totals.of(self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist())
        val_loss = totals.loss
        self.val_recall = self.protocol.recall(totals)
        if self.trainer.sanity_checking:
            return
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
        elif self.cfg.schedule == "plateau":
            self.plateau_scale /= 4.0  # the word_language_model rule: lr /= 4 when validation stalls
        self.val_history.append((self.global_step, val_loss))
        self.log("val_loss", val_loss, prog_bar=True, logger=False)
        for key, value in self.val_metrics(val_loss).items():
            if key != "val_loss":
                self.log(key, value, prog_bar=True, logger=False)

    def val_metrics(self, val_loss: float) -> dict:
        """What a validation reports: ``val_<score>`` (bits per byte, or per blank for cloze, which is not on
        the same scale: the registry never compares the two) and the last validation's recall, if any."""
        return self.protocol.val_metrics(val_loss, self.valid_split, self.val_recall)

    # --------------------------------------------------------------------------------- checkpoints

    def _rank_state(self) -> dict:
        """What differs between ranks: the carried state of this rank's streams and its RNG."""
        state = None if self.train_state is None else _to_device(self.train_state, "cpu")
        return {
            "train_state": state,
            # Dropout masks after a resume continue the same random sequence as an uninterrupted run.
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_save_checkpoint(self, checkpoint):
        # Every rank runs this hook (only rank 0 writes the file), so each rank's own state is gathered
        # into the checkpoint and a resumed rank gets back its own streams' state, not rank 0's.
        mine = self._rank_state()
        ranks = [mine]
        if self.trainer.world_size > 1:
            ranks = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        checkpoint["seqlm"] = {
            "column": self.column,
            "plateau_scale": self.plateau_scale,
            "best_val_loss": self.best_val_loss,
            "val_history": self.val_history,
            "val_recall": self.val_recall,  # a run resumed at its last step reports it without validating
            "ranks": ranks,
        }

    def on_load_checkpoint(self, checkpoint):
        extra = checkpoint.get("seqlm", {})
        self.column = extra.get("column", 0)
        self.plateau_scale = extra.get("plateau_scale", 1.0)
        self.best_val_loss = extra.get("best_val_loss", math.inf)
        self.val_history = list(extra.get("val_history", []))
        self.val_recall = extra.get("val_recall")
        ranks = extra.get("ranks") or [extra]
        if len(ranks) != self.trainer.world_size:
            raise SeqlmError(
                f"the checkpoint holds {len(ranks)} ranks' state, this run has {self.trainer.world_size}; "
                "resume with the world size it was saved with, or pass --fresh"
            )
        mine = ranks[self.trainer.global_rank]
        self.train_state = mine.get("train_state")
        if "rng_cpu" in mine:
            torch.set_rng_state(mine["rng_cpu"])
        if mine.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["rng_cuda"])
