"""Seeds into cells: each cell's results over its seeds, a metric's mean ± standard deviation, and the
study's one rule for calling a difference.

The verdict rule (RULE, printed once in the report): a gap between two cells counts only when it is larger
than the sum of their two standard deviations over seeds. With one seed (``--quick``) there is no spread
and every verdict is marked provisional.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

RULE = (
    "a difference between two cells counts only when the gap between their means is larger than the sum of "
    "their two standard deviations over seeds (sample sd); a smaller gap is a tie"
)


@dataclass(frozen=True)
class Stat:
    mean: float
    sd: float
    n: int
    low: float
    high: float

    def text(self, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f}"  # one seed (or one left): no spread to show
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def stat(values) -> Stat | None:
    """Mean, sample sd (0 for one value), count and range of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return Stat(statistics.fmean(xs), sd, len(xs), min(xs), max(xs))


def separated(a: Stat | None, b: Stat | None) -> bool:
    """RULE: |mean a − mean b| > sd a + sd b."""
    return a is not None and b is not None and abs(a.mean - b.mean) > a.sd + b.sd


def below(a: Stat | None, b: Stat | None) -> bool:
    """a is lower than b by more than the spread (RULE)."""
    return separated(a, b) and a.mean < b.mean


def above(a: Stat | None, b: Stat | None) -> bool:
    return separated(a, b) and a.mean > b.mean


def fmt(s: Stat | None, digits: int = 3) -> str:
    return "—" if s is None else s.text(digits)


@dataclass
class Cell:
    """The seeds of one planned cell (same params but ``base.seed``)."""

    key: str
    results: list

    @property
    def experiment(self):
        return self.results[0].experiment

    @property
    def label(self) -> str:
        e = self.experiment
        return e.label or e.family

    @property
    def seeds(self) -> int:
        return len(self.results)

    def stat(self, metric) -> Stat | None:
        """``metric(result)`` over the seeds, None values (failed seeds) left out."""
        return stat(metric(r) for r in self.results)

    def values(self, metric) -> list:
        return [metric(r) for r in self.results]

    @property
    def finished(self) -> int:
        return sum(r.status == "success" and r.eval is not None for r in self.results)

    @property
    def diverged(self) -> int:
        return sum(bool(r.diverged) for r in self.results)

    @property
    def failed(self) -> int:
        return self.seeds - self.finished


def cells(results, group: str | None = None) -> dict[str, Cell]:
    """Cell key -> its seeds, in plan order; only ``group``'s when given."""
    out: dict[str, Cell] = {}
    for r in results:
        e = r.experiment
        if group is None or e.group == group:
            out.setdefault(e.cell or e.name, Cell(e.cell or e.name, [])).results.append(r)
    return out


def by_label(results, group: str) -> dict[str, Cell]:
    """Row label -> cell, for a group with one cell per label (text, explode, cloze)."""
    return {c.label: c for c in cells(results, group).values()}


def probe_grid(results) -> dict[str, dict[int, Cell]]:
    """Row label -> delay -> the copy probe's cell (the IRNN's learning-rate variants are rows of their "
    "own)."""
    grid: dict[str, dict[int, Cell]] = {}
    for c in cells(results, "probe").values():
        grid.setdefault(c.label, {})[c.experiment.delay] = c
    return grid


def min_seeds(results) -> int:
    counts = [c.seeds for c in cells(results).values()]
    return min(counts) if counts else 0
