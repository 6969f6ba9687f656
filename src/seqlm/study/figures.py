"""The study's figures, docs/study/*.png: gradient flow, context ablation, copy-probe recall (mean ± sd over
seeds) and the provoked explosion's gradient-norm and loss traces, clipped against unclipped.

Each plot returns whether it drew anything (nothing to draw: no file, and the report leaves its
image out). Drawn in the figure style of ``seqlm.core.figures``.
"""

from __future__ import annotations

from pathlib import Path

from seqlm.core.figures import figure, save
from seqlm.study.aggregate import by_label, probe_grid
from seqlm.study.results import ablation, ok, recall

SIZE = (7.5, 4.5)  # inches
EXPLODE_COLOURS = {"clipped": "tab:blue", "unclipped": "tab:red"}


def draw(results, folder: Path) -> dict[str, bool]:
    """Every figure into ``folder``: figure name -> whether it was drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "gradient_flow": plot_gradient_flow(results, folder / "gradient_flow.png"),
        "context_ablation": plot_context_ablation(results, folder / "context_ablation.png"),
        "copy_recall": plot_recall(results, folder / "copy_recall.png"),
        "explosion": plot_explosion(results, folder / "explosion.png"),
    }


def plot_gradient_flow(results, path: Path) -> bool:
    """One curve per text family: its first finished seed (the seeds' curves differ little on a log scale)."""
    curves = []
    for label, cell in by_label(results, "text").items():
        r = next((r for r in cell.results if ok(r) and r.gradient and r.gradient.get("rows")), None)
        if r is not None:
            curves.append((label, r.gradient["rows"]))
    if not curves:
        return False
    fig, ax = figure(SIZE)
    flat = []
    for label, rows in curves:
        points = [(row["k"], row["gradient_norm"]) for row in rows if row["gradient_norm"] > 0]
        if len(points) > 1:
            ax.plot(*zip(*points), label=label)
        else:
            flat.append(label)
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel(r"mean $\|\partial \ell_t \,/\, \partial h_{t-k}\|$")
    title = "Gradient flow, text (first seed)"
    ax.set_title(title + (f" ({', '.join(flat)}: 0 for k > 0)" if flat else ""), fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_context_ablation(results, path: Path) -> bool:
    curves = []
    for label, cell in by_label(results, "text").items():
        tables = [ablation(r) for r in cell.results if ablation(r)]
        if tables:
            keys = [k for k in tables[0] if all(k in t for t in tables)]
            curves.append((label, {k: sum(t[k] for t in tables) / len(tables) for k in keys}))
    if not curves:
        return False
    fig, ax = figure(SIZE)
    largest = max(int(k) for _, rows in curves for k in rows if k != "none")
    for label, rows in curves:
        ks = sorted(int(k) for k in rows if k != "none")
        ax.plot([*ks, 2 * largest], [*(rows[str(k)] for k in ks), rows["none"]], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, rows in curves for k in rows if k != "none"})
    ax.set_xticks([*ticks, 2 * largest], [*map(str, ticks), "∞"])
    ax.set_xlabel("K: state reset every K tokens (∞: carried)")
    ax.set_ylabel("test bits per byte (mean of the seeds)")
    ax.set_title("Context ablation, text", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_recall(results, path: Path) -> bool:
    grid = probe_grid(results)
    if not grid:
        return False
    fig, ax = figure(SIZE)
    chance = None
    for label, probes in grid.items():
        points = [(d, c.stat(recall)) for d, c in sorted(probes.items()) if c.stat(recall) is not None]
        if points:
            xs = [d for d, _ in points]
            ax.errorbar(
                xs,
                [s.mean for _, s in points],
                yerr=[s.sd for _, s in points],
                marker="o",
                capsize=3,
                label=label,
            )
        for c in probes.values():
            chance = chance or next((r.eval["recall_chance"] for r in c.results if ok(r)), None)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="gray", label=f"chance {chance:.3f}")
    delays = sorted({d for probes in grid.values() for d in probes})
    ax.set_xscale("log")
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay (filler symbols between key and recall)")
    ax.set_ylabel("recall accuracy (test, mean ± sd over seeds)")
    ax.set_title("Episodic copy probe: recall against delay, equal updates", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_explosion(results, path: Path) -> bool:
    """Gradient norm (before clipping) and training loss against step, every seed, clipped and unclipped."""
    cells = by_label(results, "explode")
    traced = [(label, r) for label, c in cells.items() for r in c.results if r.traces.get("grad_norm")]
    if not traced:
        return False
    fig, _ = figure((7.5, 6.5))
    fig.clear()
    top, bottom = fig.subplots(2, 1, sharex=True)
    seen = set()
    for label, r in traced:
        colour = EXPLODE_COLOURS.get(label)
        name = None if label in seen else label
        seen.add(label)
        top.plot(*zip(*r.traces["grad_norm"]), color=colour, alpha=0.7, label=name)
        if r.traces.get("train_loss"):
            bottom.plot(*zip(*r.traces["train_loss"]), color=colour, alpha=0.7, label=name)
        if r.diverged and r.traces.get("train_loss"):
            bottom.plot(*r.traces["train_loss"][-1], marker="x", color=colour, markersize=9)
    top.set_yscale("log")
    top.set_ylabel("gradient norm (before clipping)")
    top.set_title("Provoked explosion: tanh RNN, W_hh spectral radius > 1, SGD (x: diverged)", fontsize=10)
    bottom.set_yscale("log")  # the unclipped runs' loss climbs by orders of magnitude before diverging
    bottom.set_xlabel("step")
    bottom.set_ylabel("training loss (nats, log scale)")
    top.legend(fontsize=8)
    save(fig, path)
    return True
