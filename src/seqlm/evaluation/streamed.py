"""The streamed protocol (decision 3 in docs/architecture.md): a split read as B parallel streams in
windows of ``bptt`` tokens, the state carried from window to window and detached in training (truncated
BPTT: gradients span one window, the context the whole stream), scored in bits per byte.
"""

from __future__ import annotations

import numpy as np

from seqlm.core.errors import SeqlmError
from seqlm.evaluation.metrics import LN2, stream_totals, stream_windows, window_sums
from seqlm.evaluation.protocol import NOT_ONE_TOKEN, Protocol


class Streamed(Protocol):
    name = "streamed"

    def tags(self, batch_size: int, bptt: int) -> dict:
        return {"batch_size": batch_size, "bptt": bptt, "carry_state": True}

    def training_loss(self, model, batch, carried, key, criterion):
        x, y, _ = batch
        state = model.init_state(x.shape[0], x.device) if carried is None else model.detach_state(carried)
        hidden, state = model.encode(x, state)
        ce, loss = criterion(hidden, y)
        return ce, loss, state

    def score(self, model, batch, state, key, symbol_ids=None):
        x, y = batch[0], batch[1]
        state = model.init_state(x.shape[0], x.device) if state is None else state
        logits, state = model(x, state)
        return window_sums(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), state

    def totals(self, model, tokens, eos_id, batch_size, bptt, device, split, symbol_ids=None):
        return stream_totals(model, tokens, batch_size, bptt, device)  # shared with the context ablation

    def recall_metrics(self, model, tokens, eos_id, symbol_ids, span, batch_size, bptt, device) -> dict:
        targets = recall_targets(tokens, eos_id, symbol_ids)
        return recall_metrics(model, tokens, targets, symbol_ids, span, batch_size, bptt, device)


def recall_targets(tokens: np.ndarray, eos_id: int, symbol_ids: np.ndarray) -> np.ndarray:
    """Flat positions of the recall targets: the last token of every line (the one before its eos)."""
    tokens = np.asarray(tokens)
    at = np.flatnonzero((tokens[1:] == eos_id) & (tokens[:-1] != eos_id))
    if len(at) == 0 or not np.isin(tokens[at], symbol_ids).all():
        raise SeqlmError(NOT_ONE_TOKEN)
    return at


def recall_metrics(
    model,
    tokens: np.ndarray,
    targets: np.ndarray,
    symbol_ids: np.ndarray,
    span: int,
    batch_size: int,
    bptt: int,
    device="cpu",
) -> dict:
    """Accuracy at the recall positions of ``tokens`` in the evaluation's stream layout, state carried.

    A prediction counts when the target is the most likely of the recall alphabet (chance: 1/N), so it
    measures what the state remembers, not whether the model knows a recall comes. Targets less than
    ``span`` columns into a stream are skipped: the symbol to remember lies before that stream's start.
    ``recall_bits`` is the plain (unrestricted) mean −log2 p(target) there.
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.tokens import StreamWindows

    stream = StreamWindows(tokens, batch_size, bptt)
    is_target = np.zeros(len(tokens), dtype=np.uint8)
    is_target[targets] = 1
    marks = StreamWindows(is_target, batch_size, bptt)
    ids = torch.as_tensor(symbol_ids, dtype=torch.long, device=device)
    correct = count = 0
    nll = 0.0
    model.eval()
    with torch.inference_mode():
        state = model.init_state(batch_size, device)
        for window in stream_windows(stream, bptt):
            x, y = (t.to(device) for t in stream.read(window))
            logits, state = model(x, state)
            columns = torch.arange(window.start + 1, window.start + 1 + window.length, device=device)
            scored = (marks.read(window)[1].to(device) == 1) & (columns >= span)
            if not scored.any():
                continue
            picked, target = logits[scored].float(), y[scored]
            correct += int((ids[picked[:, ids].argmax(1)] == target).sum())
            nll += float(F.cross_entropy(picked, target, reduction="sum"))
            count += int(target.numel())
    if count == 0:
        raise SeqlmError(
            f"the test split holds no recall position {span} tokens into a stream; use a larger "
            "data.synthetic_symbols or a smaller evaluate.batch_size"
        )
    return {"accuracy": correct / count, "bits": nll / count / LN2, "positions": count}
