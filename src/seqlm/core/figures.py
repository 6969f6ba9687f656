"""One figure style for every PNG seqlm writes (evaluation plots, the study's figures).

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global state and no display
is needed, and saved atomically.
"""

from __future__ import annotations

from pathlib import Path

from seqlm.core.atomic import atomic_path


def figure(size: tuple[float, float] = (7, 4.2)):
    """A new ``(figure, axes)`` pair of ``size`` inches at 100 dpi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig, fig.subplots()


def save(fig, path: Path) -> None:
    """Lay out ``fig`` and write it as a PNG at ``path``, whole or not at all."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
