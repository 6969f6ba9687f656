"""The study's statistics, in plain Python: Student's t distribution, Welch's t-test, a one-sample t-test,
Fisher's exact test for two counts, confidence intervals and the Holm–Bonferroni correction.

No scipy: the t distribution's tail is the regularized incomplete beta function, evaluated by its
continued fraction (Press et al., Numerical Recipes, 3rd ed., §6.4), and its quantiles by bisection on
that tail. The study needs a few dozen tests with two to twenty values each, so exactness matters and
speed does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95  # confidence intervals are 95%
Z = 1.959963984540054  # the standard normal's 97.5% quantile, for the Wilson intervals of a proportion


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the continued fraction converges fast only below the mean; above it, use I_x(a, b) = 1 − I_(1−x)(b, a)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return h


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` (not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / (df + t * t), df / 2, 0.5)


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (q in (0.5, 1)), by bisection on the two-sided tail."""
    tail = 2 * (1 - q)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if t_two_sided_p(middle, df) > tail:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def mean_interval(mean: float, sd: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The t-based confidence interval of a mean of ``n`` ≥ 2 values."""
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Test:
    """One test's outcome: the effect (a − b), its confidence interval, the two-sided p and how."""

    effect: float
    low: float
    high: float
    p: float
    df: float
    method: str


def welch(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int) -> Test:
    """Welch's t-test of mean a − mean b (unequal variances, Welch–Satterthwaite degrees of freedom);
    both samples need n ≥ 2."""
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    effect = mean_a - mean_b
    if va + vb == 0:  # no spread on either side: the t statistic is ±∞ (or 0/0 for equal means)
        return Test(effect, effect, effect, 0.0 if effect else 1.0, n_a + n_b - 2, "Welch")
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return _t_test(effect, math.sqrt(va + vb), df, "Welch")


def one_sample(mean: float, sd: float, n: int, value: float) -> Test:
    """The one-sample t-test of mean − value (n ≥ 2)."""
    effect = mean - value
    if sd == 0:
        return Test(effect, effect, effect, 0.0 if effect else 1.0, n - 1, "one-sample t")
    return _t_test(effect, sd / math.sqrt(n), n - 1, "one-sample t")


def _t_test(effect: float, se: float, df: float, method: str) -> Test:
    half = t_quantile(0.5 + LEVEL / 2, df) * se
    return Test(effect, effect - half, effect + half, t_two_sided_p(effect / se, df), df, method)


def fisher(k_a: int, n_a: int, k_b: int, n_b: int) -> Test:
    """Fisher's exact test of k_a/n_a against k_b/n_b (two-sided: every table with the same margins no
    more likely than the one seen), with Newcombe's hybrid score interval of the difference of rates."""
    total, hits = n_a + n_b, k_a + k_b

    def chance(k: int) -> float:  # hypergeometric: k of the hits in the first sample
        return math.comb(n_a, k) * math.comb(n_b, hits - k) / math.comb(total, hits)

    seen = chance(k_a)
    ks = range(max(0, hits - n_b), min(hits, n_a) + 1)
    p = min(1.0, sum(chance(k) for k in ks if chance(k) <= seen * (1 + 1e-7)))
    rate_a, rate_b = k_a / n_a, k_b / n_b
    (low_a, high_a), (low_b, high_b) = wilson(k_a, n_a), wilson(k_b, n_b)
    effect = rate_a - rate_b
    low = effect - math.hypot(rate_a - low_a, high_b - rate_b)
    high = effect + math.hypot(high_a - rate_a, rate_b - low_b)
    return Test(effect, low, high, p, math.nan, "Fisher")


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval of the rate k/n."""
    rate, z2 = k / n, Z * Z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def holm(ps: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    m − i + 1, then made non-decreasing in that order and capped at 1 (Holm 1979)."""
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted
