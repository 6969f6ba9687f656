"""The cloze objective's loss (``train.objective: cloze``, decision 20 in docs/architecture.md).

Every window is read on its own, from a fresh state: a backward direction would otherwise carry the
future of the previous window's text into this one, and a left-to-right model trained beside it must see
the same context to make the comparison fair. The loss is the cross-entropy at blanked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqlm.data.cloze import IGNORE, blank_batch


def cloze_nll(model, tokens: torch.Tensor, rate: float, key: list[int]) -> tuple[torch.Tensor, int]:
    """(summed NLL in nats over the blanked positions, their number) for one window [B, T]."""
    inputs, targets = blank_batch(tokens, rate, key, model.config["vocab_size"])
    logits, _ = model(inputs, None)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return nll, int((targets != IGNORE).sum())
