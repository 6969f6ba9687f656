"""Per-line scores: the log-probability of each line on its own, from a fresh state (`seqlm score`).

A line is read as the episodic protocol reads one (``data.episodes``, decision 22 in
docs/architecture.md): the eos that ends the line before is its first input, and every token of the line
and its own eos is a target, so the sum over a file's lines is the episodic protocol's NLL of that file.
Lines of a batch are right-padded; a line longer than one window is read in windows of ``bptt`` tokens
with the state carried, so its score does not depend on the window and memory holds one window's
logits. Padding is harmless to a causal model: what it computes after a line's end is never scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Columns are padded to a multiple of this: every new sequence length costs oneDNN's CPU LSTM a new
# primitive (a tenth of a second measured on 2 cores), and lines come in every length.
PAD_COLUMNS_TO = 16


def line_nll(model, lines: Sequence[np.ndarray], eos_id: int, bptt: int, device="cpu") -> np.ndarray:
    """Summed NLL (nats, float64) of each of ``lines`` (token ids, each ending in eos), from a fresh state."""
    import torch
    import torch.nn.functional as F

    from seqlm.data.tokens import IGNORE

    longest = -(-max(len(ids) for ids in lines) // PAD_COLUMNS_TO) * PAD_COLUMNS_TO
    x = np.full((len(lines), longest), eos_id, dtype=np.int64)
    y = np.full((len(lines), longest), IGNORE, dtype=np.int64)
    for row, ids in enumerate(lines):
        x[row, 1 : len(ids)] = ids[:-1]  # column 0 is the line-start eos
        y[row, : len(ids)] = ids
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    nll = torch.zeros(len(lines), dtype=torch.float64, device=device)
    model.eval()
    with torch.inference_mode():
        state = model.init_state(len(lines), device)
        for start in range(0, longest, bptt):
            logits, state = model(x[:, start : start + bptt], state)
            target = y[:, start : start + bptt]
            each = F.cross_entropy(
                logits.float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none"
            )
            nll += each.double().sum(1)
            del logits  # freed before the next window's forward allocates its own
    return nll.cpu().numpy()
