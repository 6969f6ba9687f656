"""The study's statistics (seqlm.study.stats, aggregate.Comparisons): the t distribution against its closed
forms and printed tables, Welch's test against a worked example, Fisher's exact test against counted
tables, Holm's ordering, and the comparisons the claims make: separated cells count, overlapping ones do
not, a correction can take a lone p below 0.05 away, one seed counts by sign alone; the clipping claim
corrects over its whole gain × clip grid."""

from __future__ import annotations

import math

import pytest

from seqlm.study import aggregate, stats


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.7, 300.0])
def test_the_t_tail_matches_its_closed_forms_at_one_and_two_degrees_of_freedom(t):
    # df 1 is the Cauchy distribution: P(|T| ≥ t) = 1 − 2·atan(t)/π; df 2: 1 − t/√(t² + 2)
    assert stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-10, abs=1e-15)
    assert stats.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-10, abs=1e-15)


def test_t_quantiles_match_the_printed_table():
    # the 97.5% points every t table prints (df 1: tan(0.475π); df 2: √(2·0.95² / (1 − 0.95²)))
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)
    assert stats.t_quantile(0.975, 2) == pytest.approx(math.sqrt(2 * 0.95**2 / (1 - 0.95**2)), rel=1e-9)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228, abs=5e-4)
    assert stats.t_quantile(0.975, 1e4) == pytest.approx(1.960, abs=5e-4)  # the normal's, in the limit
    assert stats.t_two_sided_p(stats.t_quantile(0.975, 5.88), 5.88) == pytest.approx(0.05, rel=1e-9)


def test_welch_on_a_worked_example():
    # a = 1, 2, 3 (mean 2, variance 1); b = 4 … 8 (mean 6, variance 2.5), by hand:
    # se² = 1/3 + 2.5/5 = 5/6; t = −4/√(5/6) = −4.382; df = (5/6)² / ((1/3)²/2 + (1/2)²/4) = 5.882
    w = stats.welch(2.0, 1.0, 3, 6.0, math.sqrt(2.5), 5)
    assert w.effect == -4.0 and w.df == pytest.approx(100 / 17)
    assert w.p == pytest.approx(stats.t_two_sided_p(4 / math.sqrt(5 / 6), 100 / 17))
    assert 0.004 < w.p < 0.006
    half = stats.t_quantile(0.975, 100 / 17) * math.sqrt(5 / 6)
    assert (w.low, w.high) == (pytest.approx(-4 - half), pytest.approx(-4 + half))
    swapped = stats.welch(6.0, math.sqrt(2.5), 5, 2.0, 1.0, 3)
    assert swapped.p == pytest.approx(w.p) and swapped.effect == 4.0


def test_welch_and_the_one_sample_test_agree_with_scipy_where_it_is_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [1.31, 1.42, 1.29, 1.38, 1.35], [1.52, 1.61, 1.49, 1.70, 1.58]
    mine = stats.welch(*_msn(a), *_msn(b))
    theirs = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert mine.p == pytest.approx(theirs.pvalue, rel=1e-9)
    assert (mine.low, mine.high) == pytest.approx(tuple(theirs.confidence_interval()), rel=1e-9)
    one = stats.one_sample(*_msn(a), 1.0)
    assert one.p == pytest.approx(scipy_stats.ttest_1samp(a, 1.0).pvalue, rel=1e-9)


def _msn(xs):
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), len(xs)


def test_fisher_on_counted_tables():
    # all of one sample against none of the other: 2 of the C(2n, n) equally likely tables are as extreme
    assert stats.fisher(4, 4, 0, 4).p == pytest.approx(2 / 70)  # the lady tasting tea
    assert stats.fisher(5, 5, 0, 5).p == pytest.approx(2 / 252)
    assert stats.fisher(3, 3, 0, 3).p == pytest.approx(2 / 20)
    assert stats.fisher(2, 5, 1, 5).p == pytest.approx(1.0)
    f = stats.fisher(0, 5, 5, 5)
    assert f.effect == -1.0 and -1.0 <= f.low < f.high < 0  # a difference of rates, its interval beside it


def test_holm_multiplies_by_rank_keeps_the_order_and_caps_at_one():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([0.02]) == [0.02] and stats.holm([]) == []


def test_separated_cells_count_overlapping_ones_do_not():
    comparisons = aggregate.Comparisons()
    low, high = aggregate.stat([1.0, 1.1, 1.2, 1.05, 1.15]), aggregate.stat([1.5, 1.6, 1.7, 1.55, 1.65])
    wide = aggregate.stat([1.2, 1.8, 1.4, 1.9, 1.3])
    apart = comparisons.compare("low − high", low, high)
    overlap = comparisons.compare("wide − high", wide, high)
    with pytest.raises(RuntimeError, match="read before Comparisons.adjust"):
        _ = apart.counts  # a verdict read before the correction is a bug
    comparisons.adjust()
    assert apart.below and not apart.above and apart.high < 0
    assert not overlap.counts and overlap.low < 0 < overlap.high
    assert apart.text().startswith("low − high: -0.500 [") and apart.text().endswith("p_Holm < 0.001")


def test_a_p_below_five_percent_alone_may_not_count_among_many_tests():
    comparisons = aggregate.Comparisons()
    a, b = aggregate.stat([1.0, 1.2, 1.1, 1.3, 1.15]), aggregate.stat([1.2, 1.4, 1.3, 1.45, 1.35])
    lone = comparisons.compare("a − b", a, b)
    for i in range(9):  # nine nulls beside it: Holm multiplies its p by up to ten
        comparisons.compare(f"null {i}", a, a)
    comparisons.adjust()
    assert lone.p < 0.05 and lone.adjusted == pytest.approx(min(1, 10 * lone.p)) and not lone.counts


def test_a_threshold_is_a_one_sample_test_and_untestable_cells_do_not_count():
    comparisons = aggregate.Comparisons()
    ratio = aggregate.stat([-5.0, -6.0, -5.5, -4.8, -6.2])
    vanished = comparisons.compare("ratio − (−2)", ratio, -2.0, digits=1)
    lonely = comparisons.compare("one seed left", aggregate.stat([1.0]), ratio)
    missing = comparisons.compare("nothing", None, ratio)
    comparisons.adjust()
    assert vanished.method == "one-sample t" and vanished.below
    assert lonely.p is None and not lonely.counts and "n=1 on one side" in lonely.text()
    assert not missing.counts and missing.text() == "nothing: — (no result)"
    assert len(comparisons.tested) == 1  # only tests are corrected


def test_one_seed_counts_by_sign_alone():
    comparisons = aggregate.Comparisons()
    d = comparisons.compare("a − b", aggregate.stat([1.0]), aggregate.stat([1.2]))
    same = comparisons.compare("a − a", aggregate.stat([1.0]), aggregate.stat([1.0]))
    counts = comparisons.compare_counts("diverged", 0, 1, 1, 1)
    comparisons.adjust()
    assert d.below and not same.counts and counts.below
    assert d.text() == "a − b: -0.200 (no test: one seed)"


def _explode_cell(gain: float, clip: float, bits: list[float | None], peak: float):
    """One synthetic cell of the explosion grid: a seed's bits/byte, or None for a diverged seed."""
    from seqlm.study.plan import Experiment, explode_label
    from seqlm.study.results import Result

    label = explode_label(gain, clip)
    o = {"model.recurrent_gain": gain, "train.grad_clip": clip}
    e = Experiment(label, "explode", label, o, cell=f"explode-g{gain:g}-c{clip:g}", label=label)
    out = []
    for b in bits:
        r = Result(e, "success" if b is not None else "failed", diverged=b is None, max_grad_norm=peak)
        r.eval = {"bits_per_byte": b, "unigram_bits_per_byte": 2.44} if b is not None else None
        out.append(r)
    return out


def test_the_clipping_claim_corrects_over_its_whole_grid():
    from seqlm.study import claims

    near = [2.25, 2.35, 2.20, 2.40, 2.30]  # 2.30 against the floor 2.44: p ≈ 0.017 alone
    rows = _explode_cell(1.0, 0.0, [1.5] * 5, 6.0) + _explode_cell(3.0, 0.0, [None] * 5, 1e7)
    rows += _explode_cell(3.0, 0.5, near, 3.0)
    alone = aggregate.Comparisons()
    judge = claims._clipping(aggregate.explode_grid(rows), None, alone.claim("clip"))
    alone.adjust()
    assert judge().verdict == "supported"  # two tests: the floor is second, its p kept as it is
    for clip in (0.25, 1.0, 5.0):  # three more thresholds like it, each a test: 4 × 0.017 is past 0.05
        rows += _explode_cell(3.0, clip, near, 3.0)
    grid = aggregate.Comparisons()
    judge = claims._clipping(aggregate.explode_grid(rows), None, grid.claim("clip"))
    grid.adjust()
    claim = judge()
    floor = next(d for d in claim.effects if d.name.startswith("gain 3 clip 0.5"))
    assert floor.p < 0.05 and floor.adjusted == pytest.approx(4 * floor.p) and not floor.counts
    assert grid.family_size(floor) == 5
    assert claim.verdict == "tie"  # a finite clip value whose floor test cannot tell: neither fixed nor not
    assert "gain 3: unclipped 5/5 diverged" in claim.evidence and "no clip value keeps" in claim.evidence
