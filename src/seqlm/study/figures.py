"""The study's figures, docs/study/*.png: gradient flow, context ablation and copy-probe recall.

Each plot returns whether it drew anything (nothing to draw: no file, and the report leaves its
image out). Drawn in the figure style of ``seqlm.core.figures``.
"""

from __future__ import annotations

from pathlib import Path

from seqlm.core.figures import figure, save
from seqlm.study.results import ablation, ok, probe_grid, recall

SIZE = (7.5, 4.5)  # inches


def draw(results, folder: Path) -> dict[str, bool]:
    """Every figure into ``folder``: figure name -> whether it was drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    text = [r for r in results if r.experiment.group == "text"]
    drawn = {
        "gradient_flow": plot_gradient_flow(text, folder / "gradient_flow.png", "Gradient flow, text"),
        "context_ablation": plot_context_ablation(results, folder / "context_ablation.png"),
        "copy_recall": plot_recall(results, folder / "copy_recall.png"),
    }
    grid = probe_grid(results)
    if grid:
        longest = max(d for probes in grid.values() for d in probes)
        at_longest = [probes[longest] for probes in grid.values() if longest in probes]
        drawn["probe_gradient_flow"] = plot_gradient_flow(
            at_longest,
            folder / "probe_gradient_flow.png",
            f"Gradient flow, copy probe at delay {longest}",
            span=next((r.eval["recall_span"] for r in at_longest if ok(r)), None),
        )
    return drawn


def plot_gradient_flow(results, path: Path, title: str, span: int | None = None) -> bool:
    curves = [(r.experiment.family, r.gradient["rows"]) for r in results if ok(r) and r.gradient]
    if not curves:
        return False
    fig, ax = figure(SIZE)
    flat = []
    for family, rows in curves:
        points = [(row["k"], row["gradient_norm"]) for row in rows if row["gradient_norm"] > 0]
        if len(points) > 1:
            ax.plot(*zip(*points), label=family)
        else:
            flat.append(family)
    if span is not None:
        ax.axvline(span, linestyle="--", color="gray", label=f"recall span {span}")
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel(r"mean $\|\partial \ell_t \,/\, \partial h_{t-k}\|$")
    ax.set_title(title + (f" ({', '.join(flat)}: 0 for k > 0)" if flat else ""), fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_context_ablation(results, path: Path) -> bool:
    curves = [
        (r.experiment.family, ablation(r)) for r in results if r.experiment.group == "text" and ablation(r)
    ]
    if not curves:
        return False
    fig, ax = figure(SIZE)
    largest = max(int(k) for _, rows in curves for k in rows if k != "none")
    for family, rows in curves:
        ks = sorted(int(k) for k in rows if k != "none")
        xs = [*ks, 2 * largest]
        ys = [*(rows[str(k)] for k in ks), rows["none"]]
        ax.plot(xs, ys, marker="o", label=family)
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, rows in curves for k in rows if k != "none"})
    ax.set_xticks([*ticks, 2 * largest], [*map(str, ticks), "∞"])
    ax.set_xlabel("K: state reset every K tokens (∞: carried)")
    ax.set_ylabel("test bits per byte")
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
    for family, probes in grid.items():
        points = [(d, recall(r)) for d, r in sorted(probes.items()) if recall(r) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=family)
        chance = chance or next((r.eval["recall_chance"] for r in probes.values() if ok(r)), None)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="gray", label=f"chance {chance:.3f}")
    delays = sorted({d for probes in grid.values() for d in probes})
    ax.set_xscale("log")
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay (filler symbols between key and recall)")
    ax.set_ylabel("recall accuracy (test)")
    ax.set_title("Copy probe: recall against delay", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True
