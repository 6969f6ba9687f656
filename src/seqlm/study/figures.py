"""The study's figures, docs/study/*.png: gradient flow, context ablation, copy-probe recall and the
provoked explosion's gain × clip grid (peak gradient norm and test bits per byte). Every seed is drawn (a line
or a dot beside its cell's mean), so the spread the verdicts test is visible.

Each plot returns whether it drew anything (nothing to draw: no file, and the report leaves its
image out). Drawn in the figure style of ``seqlm.core.figures``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from seqlm.core.figures import figure, save
from seqlm.study.aggregate import by_label, explode_grid, probe_grid
from seqlm.study.results import ablation, bpb, log10_max_grad_norm, ok, recall, unigram_bpb

SIZE = (7.5, 4.5)  # inches


def draw(results, folder: Path) -> dict[str, bool]:
    """Every figure into ``folder``: figure name -> whether it was drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "gradient_flow": plot_gradient_flow(results, folder / "gradient_flow.png"),
        "context_ablation": plot_context_ablation(results, folder / "context_ablation.png"),
        "copy_recall": plot_recall(results, folder / "copy_recall.png"),
        "explosion": plot_explosion(results, folder / "explosion.png"),
    }


def spread(x: float, i: int, n: int, width: float = 0.08) -> float:
    """``x`` moved to the i-th of n evenly spaced places on a log axis, so that seeds (or families) at one
    x stay apart; by index, not at random, so the figure is the same on every run."""
    return x * 10 ** (width * ((i - (n - 1) / 2) / max(n - 1, 1)))


def plot_gradient_flow(results, path: Path) -> bool:
    """One colour per text family, one thin line per finished seed."""
    curves = []
    for label, cell in by_label(results, "text").items():
        rows = [r.gradient["rows"] for r in cell.results if ok(r) and r.gradient and r.gradient.get("rows")]
        if rows:
            curves.append((label, rows))
    if not curves:
        return False
    fig, ax = figure(SIZE)
    flat = []
    for label, seeds in curves:
        colour = None
        for rows in seeds:
            points = [(row["k"], row["gradient_norm"]) for row in rows if row["gradient_norm"] > 0]
            if len(points) > 1:
                (line,) = ax.plot(
                    *zip(*points), color=colour, linewidth=1, alpha=0.8, label=None if colour else label
                )
                colour = line.get_color()
        if colour is None:
            flat.append(label)
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel(r"mean $\|\partial \ell_t \,/\, \partial h_{t-k}\|$")
    title = "Gradient flow, text (one line per seed)"
    ax.set_title(title + (f" ({', '.join(flat)}: 0 for k > 0)" if flat else ""), fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_context_ablation(results, path: Path) -> bool:
    """The seeds' mean per reset interval as a line, each seed's value as a dot beside it."""
    curves = []
    for label, cell in by_label(results, "text").items():
        tables = [ablation(r) for r in cell.results if ablation(r)]
        if tables:
            keys = [k for k in tables[0] if all(k in t for t in tables)]
            curves.append((label, {k: [t[k] for t in tables] for k in keys}))
    if not curves:
        return False
    fig, ax = figure(SIZE)
    largest = max(int(k) for _, rows in curves for k in rows if k != "none")
    for label, rows in curves:
        ks = sorted(int(k) for k in rows if k != "none")
        xs, keys = [*ks, 2 * largest], [*map(str, ks), "none"]
        (line,) = ax.plot(xs, [statistics.fmean(rows[k]) for k in keys], marker="o", label=label)
        for x, k in zip(xs, keys):
            seeds = rows[k]
            ax.scatter(
                [spread(x, i, len(seeds)) for i in range(len(seeds))],
                seeds,
                s=9,
                color=line.get_color(),
                alpha=0.6,
                linewidths=0,
            )
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, rows in curves for k in rows if k != "none"})
    ax.set_xticks([*ticks, 2 * largest], [*map(str, ticks), "∞"])
    ax.set_xlabel("K: state reset every K tokens (∞: carried)")
    ax.set_ylabel("test bits per byte (line: mean; dots: seeds)")
    ax.set_title("Context ablation, text", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_recall(results, path: Path) -> bool:
    """Each seed's recall as a dot, each family's mean with its 95% interval over seeds as a bar."""
    grid = probe_grid(results)
    if not grid:
        return False
    fig, ax = figure(SIZE)
    chance = None
    for f, (label, probes) in enumerate(grid.items()):
        points = [(d, c) for d, c in sorted(probes.items()) if c.stat(recall) is not None]
        if points:
            xs = [spread(d, f, len(grid), 0.1) for d, _ in points]  # families side by side at a delay
            means = [c.stat(recall) for _, c in points]
            bars = [
                [s.mean - (s.ci_low if s.ci_low is not None else s.mean) for s in means],
                [(s.ci_high if s.ci_high is not None else s.mean) - s.mean for s in means],
            ]
            bar = ax.errorbar(xs, [s.mean for s in means], yerr=bars, marker="o", capsize=3, label=label)
            for x, (_, c) in zip(xs, points):
                seeds = [v for v in c.values(recall) if v is not None]
                ax.scatter(
                    [spread(x, i, len(seeds), 0.03) for i in range(len(seeds))],
                    seeds,
                    s=9,
                    color=bar.lines[0].get_color(),
                    alpha=0.6,
                    linewidths=0,
                )
        for c in probes.values():
            chance = chance or next((r.eval["recall_chance"] for r in c.results if ok(r)), None)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="gray", label=f"chance {chance:.3f}")
    delays = sorted({d for probes in grid.values() for d in probes})
    ax.set_xscale("log")
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.set_xticks([], minor=True)  # the log axis's own minor labels would crowd the delays
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay (filler symbols between key and recall)")
    ax.set_ylabel("recall accuracy (test; dots: seeds, bars: 95% CI of the mean)")
    ax.set_title("Episodic copy probe: recall against delay (runs stop once solved)", fontsize=10)
    ax.legend(fontsize=8)
    save(fig, path)
    return True


def plot_explosion(results, path: Path) -> bool:
    """The gain × clip grid: peak gradient norm (before clipping) and test bits/byte against the gain, one
    line per clip threshold through the seeds' means, every seed a dot (x: diverged)."""
    grid = explode_grid(results)
    clips = sorted({c for row in grid.values() for c in row})
    if not any(r.max_grad_norm for row in grid.values() for c in row.values() for r in c.results):
        return False
    fig, _ = figure((7.5, 6.5))
    fig.clear()
    top, bottom = fig.subplots(2, 1, sharex=True)
    gains = sorted(grid)
    worst = max(
        (b for row in grid.values() for c in row.values() for r in c.results if (b := bpb(r))), default=0
    )
    for j, clip in enumerate(clips):
        name = f"clip {clip:g}" if clip else "unclipped"
        colour = f"C{j}"
        for ax, metric in ((top, log10_max_grad_norm), (bottom, bpb)):
            points = []
            for gain in gains:
                cell = grid[gain].get(clip)
                if cell is None:
                    continue
                x = spread(gain, j, len(clips), 0.02)  # clip values side by side at a gain
                values = [v for v in cell.values(metric) if v is not None]
                if values:
                    points.append((x, statistics.fmean(values)))
                for i, r in enumerate(cell.results):
                    v = metric(r)
                    if v is not None:
                        ax.scatter(
                            spread(x, i, cell.seeds, 0.01), v, s=9, color=colour, alpha=0.6, linewidths=0
                        )
                    elif r.diverged and ax is bottom:  # no test score: drawn above the worst finished one
                        ax.scatter(spread(x, i, cell.seeds, 0.01), worst * 1.05, marker="x", color=colour)
            if points:
                ax.plot(*zip(*points), color=colour, label=name if ax is top else None)
    floor = [u for row in grid.values() for c in row.values() for r in c.results if (u := unigram_bpb(r))]
    if floor:
        bottom.axhline(statistics.fmean(floor), linestyle="--", color="gray", label="unigram floor")
    top.set_ylabel("log10 peak gradient norm (before clipping)")
    top.set_title("Provoked explosion: tanh RNN, W_hh spectral radius = gain, SGD (x: diverged)", fontsize=10)
    bottom.set_xscale("log")
    bottom.set_xticks(gains, [f"{g:g}" for g in gains])
    bottom.set_xticks([], minor=True)
    bottom.set_xlabel("gain (spectral radius of W_hh at initialisation)")
    bottom.set_ylabel("test bits per byte")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    save(fig, path)
    return True
