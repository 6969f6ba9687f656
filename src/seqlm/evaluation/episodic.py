"""The episodic protocol (``train.episodic``, decision 22 in docs/architecture.md): every line of a split
an episode from a fresh state, B whole lines per batch right-padded (``data.episodes``), nothing carried.

Training's loss is the mean over every target of the episode, padding excluded: at equal updates it is the
one that learns the copy probe (bench/episodic_probes.py). Validation and evaluation score every token and,
at each episode's recall position (its last token before the eos), top-1 and bits.
"""

from __future__ import annotations

from seqlm.core.errors import SeqlmError
from seqlm.evaluation.metrics import window_sums
from seqlm.evaluation.protocol import NOT_ONE_TOKEN, Protocol


class Episodic(Protocol):
    name = "episodic"
    scales_lr_by_window = False  # an episode's length is not a window's: bptt only bounds it
    _recall_note = " (every line an episode)"

    def tags(self, batch_size: int, bptt: int) -> dict:
        return {"batch_size": batch_size, "bptt": bptt, "carry_state": False, "episodic": True}

    def batches(
        self,
        tokens,
        eos_id,
        batch_size,
        bptt,
        where,
        rank=0,
        world_size=1,
        train=False,
        variable_bptt=False,
        seed=0,
    ):
        from seqlm.data.episodes import EpisodeBatches

        # training shuffles whole episodes; validation and evaluation read each once, in order
        return EpisodeBatches(tokens, eos_id, batch_size, bptt, where, rank, world_size, train, seed)

    def training_loss(self, model, batch, carried, key, criterion):
        import torch.nn.functional as F

        from seqlm.data.tokens import IGNORE

        x, y, _ = batch
        logits, _ = model(x, None)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE
        )
        return loss, loss, None

    def score(self, model, batch, state, key, symbol_ids=None):
        """Every target of the batch's episodes, and top-1 / bits at their recall positions: over the whole
        vocabulary, or, given a probe's ``symbol_ids``, the most likely of that alphabet (chance 1/N)."""
        import torch
        import torch.nn.functional as F

        from seqlm.data.episodes import recall_mask
        from seqlm.data.tokens import IGNORE

        x, y = batch[0], batch[1]
        logits, _ = model(x, None)
        keep = y != IGNORE
        sums = window_sums(logits[keep], y[keep])
        at = recall_mask(y)
        picked, target = logits[at].float(), y[at]
        if symbol_ids is None:
            hits = (picked.argmax(1) == target).sum()
        else:
            if not torch.isin(target, symbol_ids).all():
                raise SeqlmError(NOT_ONE_TOKEN)
            hits = (symbol_ids[picked[:, symbol_ids].argmax(1)] == target).sum()
        recall_nll = F.cross_entropy(picked, target, reduction="sum")
        sums[4:] = torch.stack([hits.double(), recall_nll.double(), at.sum().double()])
        return sums, None

    def recall_metrics(self, model, tokens, eos_id, symbol_ids, span, batch_size, bptt, device) -> dict:
        """Every episode's recall position, each from a fresh state: nothing is remembered from another
        line, and every line is scored."""
        t = self.totals(model, tokens, eos_id, batch_size, bptt, device, "test", symbol_ids=symbol_ids)
        recall = self.recall(t)
        return {"accuracy": recall["accuracy"], "bits": recall["bits"], "positions": t.recall_count}
