"""The figures of the evaluation diagnostics, drawn from the JSON that ``diagnostics`` writes."""

from __future__ import annotations

from pathlib import Path

from seqlm.core import figures

SIZE = (7, 4.2)  # inches


def plot_context_ablation(data: dict, path: Path) -> None:
    fig, ax = figures.figure(SIZE)
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
    figures.save(fig, path)


def plot_gradient_flow(data: dict, path: Path) -> None:
    fig, ax = figures.figure(SIZE)
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
    figures.save(fig, path)


def plot_not_applicable(title: str, reason: str, path: Path) -> None:
    """A figure that says why a diagnostic was not run, so that the output DVC expects tells the truth."""
    import textwrap

    fig, ax = figures.figure(SIZE)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(reason, 70), transform=ax.transAxes, ha="center", va="center", size=9)
    figures.save(fig, path)
