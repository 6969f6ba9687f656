"""Seeds into cells: each cell's results over its seeds, a metric's mean ± sd and 95% interval, and the
study's one way of calling a difference (RULE, printed once in the report).

Every comparison a verdict rests on goes through ``Comparisons``: a Welch t-test between two cells'
per-seed values, a one-sample t-test against a fixed threshold, or Fisher's exact test between two counts
of seeds (``seqlm.study.stats``). The claims register their comparisons first, each claim as one family of
hypotheses (``Comparisons.claim``); ``Comparisons.adjust`` then corrects the p-values within each claim
(Holm–Bonferroni), and only then are verdicts read. With one
seed there is nothing to test: a difference counts by its sign alone and the report calls every verdict
provisional.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from seqlm.study import stats

ALPHA = 0.05  # family-wise per claim: a difference counts when its Holm-adjusted p is below this
RULE = (
    "two cells differ when Welch's two-sided t-test on their per-seed values (unequal variances, "
    "Welch–Satterthwaite degrees of freedom) gives a Holm–Bonferroni-adjusted p below 0.05; rates such as "
    "recall accuracy are tested the same way on their per-seed values, a threshold (such as 'vanished') "
    "by a one-sample t-test against it, and counts of diverged seeds by Fisher's exact test. Each claim is "
    "one family of hypotheses: the correction runs over every test its verdict rests on, its positive "
    "control included, so each verdict keeps a 5% family-wise error; each effect is shown as the "
    "difference of means with its 95% confidence interval and adjusted p"
)


@dataclass(frozen=True)
class Stat:
    mean: float
    sd: float
    n: int
    low: float
    high: float
    ci_low: float | None = None  # the t-based 95% interval of the mean; None for one value
    ci_high: float | None = None

    def text(self, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f}"  # one seed (or one left): no spread to show
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def stat(values) -> Stat | None:
    """Mean, sample sd (0 for one value), count, range and 95% interval of the mean of the finite values;
    None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    if len(xs) == 1:
        return Stat(xs[0], 0.0, 1, xs[0], xs[0])
    mean, sd = statistics.fmean(xs), statistics.stdev(xs)
    return Stat(mean, sd, len(xs), min(xs), max(xs), *stats.mean_interval(mean, sd, len(xs)))


def fmt(s: Stat | None, digits: int = 3) -> str:
    return "—" if s is None else s.text(digits)


@dataclass
class Difference:
    """One comparison of the claims table: a − b (or a − a threshold), its 95% interval and its p, raw
    and Holm-adjusted. ``p`` is None when there is nothing to test (a side with fewer than two seeds)."""

    name: str  # what was compared, as the table shows it
    effect: float
    low: float = math.nan
    high: float = math.nan
    p: float | None = None
    method: str = ""
    untested: str = ""  # why there is no test: "one seed", "no result", "n=1 of 5"
    digits: int = 3
    adjusted: float | None = None  # set by Comparisons.adjust
    family: str = ""  # the claim whose tests are corrected together

    @property
    def counts(self) -> bool:
        """The difference is real: its adjusted p is below ALPHA (one seed: it is not zero, provisionally)."""
        if self.p is None:
            return self.untested == "one seed" and self.effect != 0
        if self.adjusted is None:
            raise RuntimeError(f"{self.name}: read before Comparisons.adjust (a bug in the claims)")
        return self.adjusted < ALPHA

    @property
    def above(self) -> bool:
        return self.counts and self.effect > 0

    @property
    def below(self) -> bool:
        return self.counts and self.effect < 0

    @property
    def p_note(self) -> str:
        """ "p_Holm 0.003", or why there is no test."""
        return f"p_Holm {pvalue(self.adjusted)}" if self.p is not None else f"no test: {self.untested}"

    def text(self) -> str:
        """ "gru − ffn_window: −0.050 [−0.081, −0.019], p_Holm 0.003"."""
        if self.p is None and not math.isfinite(self.effect):
            return f"{self.name}: — ({self.untested})"
        shown = f"{self.name}: {self.effect:+.{self.digits}f}"
        if self.p is None:
            return f"{shown} (no test: {self.untested})"
        interval = f"[{self.low:+.{self.digits}f}, {self.high:+.{self.digits}f}]"
        return f"{shown} {interval}, {self.p_note}"


def pvalue(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


class Comparisons:
    """Every comparison the claims table makes, so that their p-values are corrected together."""

    def __init__(self, made: list[Difference] | None = None, family: str = "") -> None:
        self.made: list[Difference] = [] if made is None else made
        self.family = family

    def claim(self, key: str) -> "Comparisons":
        """The comparisons of claim ``key``: one family for the correction, in this table's list."""
        return Comparisons(self.made, key)

    def compare(self, name: str, a: Stat | None, b: Stat | float | None, digits: int = 3) -> Difference:
        """a − b: Welch's t-test between two cells, or a one-sample t-test when b is a fixed number."""
        if a is None or b is None:
            return self._add(Difference(name, math.nan, untested="no result", digits=digits))
        fixed = not isinstance(b, Stat)
        effect = a.mean - (b if fixed else b.mean)
        if a.n == 1 and (fixed or b.n == 1):
            return self._add(Difference(name, effect, untested="one seed", digits=digits))
        if a.n < 2 or (not fixed and b.n < 2):
            n = a.n if a.n < 2 else b.n
            return self._add(Difference(name, effect, untested=f"n={n} on one side", digits=digits))
        if fixed:
            test = stats.one_sample(a.mean, a.sd, a.n, b)
        else:
            test = stats.welch(a.mean, a.sd, a.n, b.mean, b.sd, b.n)
        return self._add(Difference(name, effect, test.low, test.high, test.p, test.method, digits=digits))

    def compare_counts(self, name: str, k_a: int, n_a: int, k_b: int, n_b: int) -> Difference:
        """k_a/n_a − k_b/n_b (seeds with an outcome, e.g. diverged), by Fisher's exact test."""
        if n_a == 0 or n_b == 0:
            return self._add(Difference(name, math.nan, untested="no seeds", digits=2))
        if n_a == 1 and n_b == 1:
            return self._add(Difference(name, k_a - k_b, untested="one seed", digits=2))
        test = stats.fisher(k_a, n_a, k_b, n_b)
        return self._add(Difference(name, test.effect, test.low, test.high, test.p, test.method, digits=2))

    def _add(self, d: Difference) -> Difference:
        d.family = self.family
        self.made.append(d)
        return d

    @property
    def tested(self) -> list[Difference]:
        return [d for d in self.made if d.p is not None]

    def family_size(self, d: Difference) -> int:
        """The tests corrected together with ``d``: its claim's."""
        return sum(1 for t in self.tested if t.family == d.family)

    def adjust(self) -> None:
        """Holm–Bonferroni within each claim's tests (untested comparisons have no p to adjust)."""
        for family in {d.family for d in self.tested}:
            tested = [d for d in self.tested if d.family == family]
            for d, adjusted in zip(tested, stats.holm([d.p for d in tested])):
                d.adjusted = adjusted


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


def explode_grid(results) -> dict[float, dict[float, Cell]]:
    """The explosion group as gain -> clip threshold -> cell (0: unclipped), in plan order."""
    grid: dict[float, dict[float, Cell]] = {}
    for cell in by_label(results, "explode").values():
        o = cell.experiment.overrides
        grid.setdefault(float(o["model.recurrent_gain"]), {})[float(o["train.grad_clip"])] = cell
    return grid


def min_seeds(results) -> int:
    counts = [c.seeds for c in cells(results).values()]
    return min(counts) if counts else 0
