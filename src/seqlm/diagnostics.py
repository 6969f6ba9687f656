"""Diagnostics of the evaluate stage: how much context the model uses, how gradients flow back, samples.

Each diagnostic writes a JSON (rows for `dvc plots`, facts beside them) and a PNG into reports/eval/.

- Context ablation: test bits per byte when the state is reset every K tokens. A model that uses
  long context loses much at small K; the window baselines (ffn_window, bow) flatten past their
  window, since their state is their last window-1 tokens and a reset wipes it the same way.
- Gradient flow: mean ‖∂ℓ_t / ∂h_{t−k}‖ for k = 0…K, the vanishing-gradient picture (Bengio et al.,
  1994; Hochreiter & Schmidhuber, 1997), beside the spectral radius of each recurrent weight block.
  For the window baselines h_{t−k} does not feed ℓ_t at all: every k > 0 reads 0.
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

import numpy as np

from seqlm import io
from seqlm.config import Config
from seqlm.errors import SeqlmError
from seqlm.evaluation import LN2, stream_totals, stream_windows

# The ablation evaluates each K on the first ABLATION_TOKENS of the test split in ABLATION_STREAMS
# parallel streams: K = 1 means one token per forward call, so wide batches keep it to seconds.
ABLATION_TOKENS = 200_000
ABLATION_STREAMS = 64
GRADIENT_STREAMS = 8
GRADIENT_WINDOWS = 4  # measured windows, after one warm-up window that fills the carried state
GATES = {"lstm": ("input", "forget", "cell", "output"), "gru": ("reset", "update", "new"), "rnn": ("hidden",)}


def write_all(out: Path, model, test: np.ndarray, valid: np.ndarray, meta: dict, cfg: Config,
              model_dir: Path, device) -> None:  # fmt: skip
    ev = cfg.evaluate
    start = time.perf_counter()
    ablation = context_ablation(model, test, meta["splits"]["test"], ev.context_resets, ev.bptt, device)
    io.write_json(out / "context_ablation.json", ablation)
    plot_context_ablation(ablation, out / "context_ablation.png")
    middle = time.perf_counter()
    flow = gradient_flow(model, valid, ev.gradient_flow_steps, device)
    io.write_json(out / "gradient_flow.json", flow)
    plot_gradient_flow(flow, out / "gradient_flow.png")
    end = time.perf_counter()
    write_samples(out / "samples.md", model_dir, cfg, device)
    print(
        f"evaluate: context ablation ({len(ablation['rows'])} settings × {ablation['tokens']:,} tokens) "
        f"{middle - start:.1f}s, gradient flow {end - middle:.1f}s, samples {time.perf_counter() - end:.1f}s"
    )


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
        bits_per_token = totals.loss / LN2
        rows.append({
            "reset_every": str(k) if k else "none",
            "bits_per_byte": bits_per_token * split["tokens"] / split["bytes"],
            "bits_per_token": bits_per_token,
        })  # fmt: skip
    return {
        "split": "test",
        "tokens": len(tokens),
        "token_cap": ABLATION_TOKENS,
        "streams": streams,
        "bptt": bptt,
        "rows": rows,
    }


def plot_context_ablation(data: dict, path: Path) -> None:
    fig, ax = _figure()
    bpb = {r["reset_every"]: r["bits_per_byte"] for r in data["rows"]}
    carried = bpb.pop("none")
    numeric = [(int(k), v) for k, v in bpb.items()]
    ax.plot(*zip(*numeric), marker="o", label="state reset every K tokens")
    ax.axhline(carried, linestyle="--", color="gray", label=f"never reset: {carried:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (tokens of context at most)")
    ax.set_ylabel("test bits per byte")
    ax.set_title(f"Context ablation ({data['tokens']:,} test tokens, {data['streams']} streams)")
    ax.legend()
    _save(fig, path)


# --------------------------------------------------------------------------------------- gradient flow


def gradient_flow(model, tokens: np.ndarray, steps: int, device) -> dict:
    """Mean ‖∂ℓ_T / ∂h_{T−k}‖ over windows of K+1 valid tokens (K = ``steps``), ℓ_T the last one's loss.

    One backward pass per window gives every k at once: ``forward_with_hidden`` exposes h_t for all t.
    The streams' rows are independent, so the gradient of their summed loss is each row's own.
    """
    import torch
    import torch.nn.functional as F

    from seqlm.data.datamodule import StreamWindows

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
    model.eval()
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
            loss = F.cross_entropy(logits[:, -1].float(), y[:, -1], reduction="sum")
            (grad,) = torch.autograd.grad(loss, hidden)
        total += grad.float().norm(dim=-1).flip(1).double().sum(0).cpu()  # column k = position T-1-k
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


def plot_gradient_flow(data: dict, path: Path) -> None:
    fig, ax = _figure()
    points = [(r["k"], r["gradient_norm"]) for r in data["rows"] if r["gradient_norm"] > 0]  # log scale
    if points:
        ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, label=data["family"])
    ax.set_yscale("log")
    ax.set_xlim(0, data["steps"])
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel(r"mean $\|\partial \ell_t \,/\, \partial h_{t-k}\|$")
    radii = ", ".join(f"{g} {r:.2f}" for g, r in data["spectral_radius"].items()) or "no recurrent weights"
    ax.set_title(f"Gradient flow, {data['family']} (spectral radius: {radii})", fontsize=9)
    if zeros := len(data["rows"]) - len(points):
        note = f"{zeros} of {len(data['rows'])} values are 0, not drawn on the log scale"
        ax.text(0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top", size=8)
    _save(fig, path)


# -------------------------------------------------------------------------------------------- samples


def write_samples(path: Path, model_dir: Path, cfg: Config, device="cpu") -> None:
    """Samples for ``evaluate.prompts`` (prompt + continuation), top-5 next words for ``cloze_prompts``."""
    from seqlm.generation import Generator

    ev = cfg.evaluate
    generator = Generator.from_dir(model_dir, str(device))
    lines = [
        "# Samples",
        "",
        f"temperature {ev.temperature:g}, top_k {ev.top_k}, top_p {ev.top_p:g}, {ev.sample_tokens} tokens, "
        f"seed {cfg.base.seed}",
        "",
        "## Generated text",
    ]
    for prompt in ev.prompts:
        sample = generator.generate(prompt, ev.sample_tokens, ev.temperature, ev.top_k, ev.top_p, cfg.base.seed)
        text = prompt + sample
        fence = "~~~~" if "```" in text else "```"  # verbatim: generated text may hold markdown
        lines += ["", f"### {prompt}", "", fence + "text", text.rstrip("\n"), fence]
    lines += ["", "## Next-word predictions"]
    for prompt in ev.cloze_prompts:
        lines += ["", f"### {prompt} …", "", "| rank | word | probability |", "| ---: | --- | ---: |"]
        for rank, (word, prob) in enumerate(generator.next_words(prompt, k=5), 1):
            lines.append(f"| {rank} | {_cell(word)} | {prob:.4f} |")
    io.write_text(path, "\n".join(lines) + "\n")


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text.strip() else "(line end)"


# -------------------------------------------------------------------------------------------- figures


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig, fig.subplots()


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
