"""Diagnostics of the evaluate stage: how much context the model uses and how gradients flow back.

Each diagnostic writes a JSON (rows for `dvc plots`, facts beside them) and a PNG (``plots``).

- Context ablation: test bits per byte when the state is reset every K tokens. A model that uses
  long context loses much at small K; the window baselines (ffn_window, bow) flatten past their
  window, since their state is their last window-1 tokens and a reset wipes it the same way.
- Gradient flow: mean ‖∂ℓ_t / ∂h_{t−k}‖ for k = 0…K, the vanishing-gradient picture (Bengio et al.,
  1994; Hochreiter & Schmidhuber, 1997), beside the spectral radius of each recurrent weight block.
  For the window baselines h_{t−k} does not feed ℓ_t at all: every k > 0 reads 0.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seqlm.core import atomic
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import CONTEXT_ABLATION, CONTEXT_ABLATION_PLOT, GRADIENT_FLOW, GRADIENT_FLOW_PLOT
from seqlm.evaluation import plots
from seqlm.evaluation.metrics import LN2, bits_per_byte, stream_totals, stream_windows

if TYPE_CHECKING:
    from seqlm.config import EvaluateConfig

# The ablation evaluates each K on the first ABLATION_TOKENS of the test split in ABLATION_STREAMS
# parallel streams: K = 1 means one token per forward call, so wide batches keep it to seconds.
ABLATION_TOKENS = 200_000
ABLATION_STREAMS = 64
GRADIENT_STREAMS = 8
GRADIENT_WINDOWS = 4  # measured windows, after one warm-up window that fills the carried state
GATES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ("hidden",)}


def write_context_ablation(
    out: Path, model, test: np.ndarray, meta: dict, ev: EvaluateConfig, device
) -> dict:
    """context_ablation.json and .png in ``out``; returns the JSON's content."""
    ablation = context_ablation(model, test, meta["splits"]["test"], ev.context_resets, ev.bptt, device)
    atomic.write_json(out / CONTEXT_ABLATION, ablation)
    plots.plot_context_ablation(ablation, out / CONTEXT_ABLATION_PLOT)
    return ablation


def write_gradient_flow(out: Path, model, valid: np.ndarray, ev: EvaluateConfig, device) -> dict:
    """gradient_flow.json and .png in ``out``; returns the JSON's content."""
    flow = gradient_flow(model, valid, ev.gradient_flow_steps, device)
    atomic.write_json(out / GRADIENT_FLOW, flow)
    plots.plot_gradient_flow(flow, out / GRADIENT_FLOW_PLOT)
    return flow


# ------------------------------------------------------------------------------------ context ablation


def context_ablation(model, tokens: np.ndarray, split: dict, resets, bptt: int, device) -> dict:
    """Rows ``{"reset_every": "16", "bits_per_byte": …}``, with ``"none"`` for the carried state.

    ``reset_every`` is a label (DVC plots it as a category), so "none" sits beside the numbers.
    The "none" row uses this layout (64 streams, capped tokens), so it can differ slightly from the
    headline metric. Bits per byte use the split's tokens/bytes ratio, as the headline does.
    """
    tokens = tokens[:ABLATION_TOKENS]
    streams = max(1, min(ABLATION_STREAMS, (len(tokens) - 1) // 2))
    rows = []
    for k in [*sorted(set(resets)), None]:
        totals = stream_totals(model, tokens, streams, bptt, device, reset_every=k)
        rows.append(
            {
                "reset_every": str(k) if k else "none",
                "bits_per_byte": bits_per_byte(totals.loss, split["tokens"], split["bytes"]),
                "bits_per_token": totals.loss / LN2,
            }
        )
    return {
        "split": "test",
        "tokens": len(tokens),
        "token_cap": ABLATION_TOKENS,
        "streams": streams,
        "bptt": bptt,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------- gradient flow


def gradient_flow(model, tokens: np.ndarray, steps: int, device) -> dict:
    """Mean ‖∂ℓ_T / ∂h_{T−k}‖ over windows of K+1 valid tokens (K = ``steps``), ℓ_T the last one's loss.

    One backward pass per window gives every k at once: ``forward_with_hidden`` exposes h_t for all t.
    The streams' rows are independent, so the gradient of their summed loss is each row's own. The pass
    runs on a float64 copy of the model: in float32 a vanishing gradient reaches exact zero below ~1e-45
    (and a tanh RNN's did within 64 steps), which would measure the format's floor, not the gradient.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from seqlm.data.tokens import StreamWindows

    length = steps + 1
    if len(tokens) < length + 1:
        raise SeqlmError(
            f"the valid split has {len(tokens)} tokens; evaluate.gradient_flow_steps {steps} needs at least "
            f"{length + 1}; lower evaluate.gradient_flow_steps"
        )
    streams = max(1, min(GRADIENT_STREAMS, (len(tokens) - 1) // (2 * length)))
    stream = StreamWindows(tokens, streams, length)
    windows = [w for w in islice(stream_windows(stream, length), GRADIENT_WINDOWS + 1) if w.length == length]
    warmup = windows[:1] if len(windows) > 1 else []
    model = copy.deepcopy(model).double().eval()
    state = model.init_state(streams, device)
    with torch.no_grad():
        for w in warmup:
            _, state = model(stream.read(w)[0].to(device), state)
    total = torch.zeros(length, dtype=torch.float64)
    measured = windows[len(warmup) :]
    for w in measured:
        x, y = (t.to(device) for t in stream.read(w))
        with torch.enable_grad():
            logits, new_state, hidden = model.forward_with_hidden(x, state)
            loss = F.cross_entropy(logits[:, -1], y[:, -1], reduction="sum")
            (grad,) = torch.autograd.grad(loss, hidden)
        total += grad.norm(dim=-1).flip(1).sum(0).cpu()  # column k = position T-1-k
        state = model.detach_state(new_state)
    mean = (total / (len(measured) * streams)).tolist()
    by_layer = spectral_radii(model)
    gates = next(iter(by_layer.values()), {})
    return {
        "family": model.config["family"],
        "steps": steps,
        "split": "valid",
        "streams": streams,
        "windows": len(measured),
        "warmup_windows": len(warmup),
        "spectral_radius": {g: max(layer[g] for layer in by_layer.values()) for g in gates},  # over layers
        "spectral_radius_by_layer": by_layer,
        "rows": [{"k": k, "gradient_norm": g} for k, g in enumerate(mean)],
    }


def spectral_radii(model) -> dict[str, dict[str, float]]:
    """max |eigenvalue| of each square H×H gate block of each layer's hidden-to-hidden matrix."""
    import torch

    family, hidden = model.config["family"], model.config["hidden_size"]
    out = {}
    for layer, weight in enumerate(model.recurrent_weights()):
        blocks = weight.detach().float().cpu().split(hidden, dim=0)
        radii = [float(torch.linalg.eigvals(block).abs().max()) for block in blocks]
        out[str(layer)] = dict(zip(GATES[family], radii))
    return out


# ------------------------------------------------------------------------------------ all of them


def write(
    out: Path, model, test: np.ndarray, valid: np.ndarray, meta: dict, ev: EvaluateConfig, device, protocol
) -> str:
    """The context ablation and gradient flow into ``out`` or, where they do not apply to ``protocol``
    (its ``diagnostics_skipped`` reasons), a JSON and a figure each saying why; a line of timings."""
    import time

    if protocol.diagnostics_skipped:
        write_not_applicable(out, protocol.diagnostics_skipped, protocol.objective)
        return "context ablation and gradient flow do not apply"
    start = time.perf_counter()
    ablation = write_context_ablation(out, model, test, meta, ev, device)
    middle = time.perf_counter()
    write_gradient_flow(out, model, valid, ev, device)
    return (
        f"context ablation ({len(ablation['rows'])} settings × {ablation['tokens']:,} tokens) "
        f"{middle - start:.1f}s, gradient flow {time.perf_counter() - middle:.1f}s"
    )


def write_not_applicable(out: Path, reasons: dict[str, str], objective: str) -> None:
    """The next-token diagnostics' JSON and PNG in ``out``, each saying why a cloze model has none."""
    files = {
        "context_ablation": (CONTEXT_ABLATION, CONTEXT_ABLATION_PLOT),
        "gradient_flow": (GRADIENT_FLOW, GRADIENT_FLOW_PLOT),
    }
    for name, reason in reasons.items():
        data, figure = files[name]
        atomic.write_json(out / data, {"objective": objective, "skipped": reason, "rows": []})
        plots.plot_not_applicable(name.replace("_", " ").capitalize(), reason, out / figure)
