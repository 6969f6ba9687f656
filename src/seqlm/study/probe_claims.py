"""The long-range verdicts, from the episodic copy probe: how far back each family remembers, and whether
the IRNN and the gated cells remember further than the tanh RNN.

Positive control: a family must remember the shortest delay of the ladder (its mean recall at least
halfway from chance to perfect: a threshold, not a test); one that does not could not have shown a longer
memory, so its claim reads "control failed", not "not supported". Recall against the tanh RNN's is
compared by ``Comparisons`` at every delay both ran, so the Holm correction counts every delay.
"""

from __future__ import annotations

import math

from seqlm.study.aggregate import Cell, Comparisons, Difference, fmt, probe_grid
from seqlm.study.claims import Claim, Judge, not_tested
from seqlm.study.results import minutes, recall, train_value

REMEMBERS = 0.5  # "remembers delay d": mean recall at least halfway from chance to perfect


def chance(cell: Cell) -> float | None:
    return next((r.eval["recall_chance"] for r in cell.results if r.eval and "recall_chance" in r.eval), None)


def remembers(cell: Cell | None) -> bool:
    s = cell.stat(recall) if cell is not None else None
    c = chance(cell) if cell is not None else None
    return s is not None and c is not None and s.mean >= c + REMEMBERS * (1 - c)


def reach(probes: dict[int, Cell]) -> int | None:
    """The longest delay a family remembers (None: not even the shortest)."""
    held = [d for d, c in sorted(probes.items()) if remembers(c)]
    return held[-1] if held else None


def control(probes: dict[int, Cell]) -> tuple[bool, str]:
    """The positive control: the family remembers the ladder's shortest delay."""
    if not probes:
        return False, "no probe cells"
    shortest = min(probes)
    cell = probes[shortest]
    passed = remembers(cell)
    return (
        passed,
        f"recall {fmt(cell.stat(recall), 2)} at delay {shortest} ({'passed' if passed else 'failed'})",
    )


def probe_claims(results, comparisons: Comparisons) -> list[Judge]:
    grid = probe_grid(results)
    irnn = "ReLU with identity initialisation (IRNN) keeps long-term dependencies"
    gated = "Gated cells (LSTM, GRU) keep long-term dependencies"
    return [
        _long_term("irnn", irnn, ["irnn"], grid, comparisons),
        _long_term("gated", gated, ["lstm", "gru"], grid, comparisons),
    ]


def _long_term(key: str, claim: str, families: list[str], grid, comparisons: Comparisons) -> Judge:
    rnn = grid.get("rnn", {})
    present = [f for f in families if grid.get(f)]
    test = "episodic copy probe, equal updates: recall against delay, each family against the tanh rnn"
    if not rnn or not present:
        return not_tested(key, claim, test, "the copy probe lacks the tanh rnn or these families")
    # recall is a rate per seed: Welch's test on the per-seed values, at every delay both ran
    gaps = {
        f: {
            d: comparisons.compare(
                f"{f} − tanh rnn, recall at delay {d}", grid[f][d].stat(recall), rnn[d].stat(recall), 2
            )
            for d in sorted(set(grid[f]) & set(rnn))
        }
        for f in present
    }

    def judge() -> Claim:
        verdicts, controls, parts, effects = [], [], [], []
        for f in present:
            passed, line = control(grid[f])
            controls.append(f"{f}: {line}")
            verdict, part, shown = _family(f, grid[f], rnn, gaps[f])
            verdicts.append(verdict if passed else "control failed")
            parts.append(part if passed else _reach_line(f, grid[f], rnn))
            effects += [shown] if shown is not None else []
        verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly supported"
        return Claim(key, claim, verdict, test, "; ".join(controls), "; ".join(parts), tuple(effects))

    return judge


def _reach_line(family: str, probes: dict[int, Cell], rnn: dict[int, Cell]) -> str:
    return f"{family} remembers up to delay {reach(probes) or 'none'} (tanh rnn: {reach(rnn) or 'none'})"


def _family(family: str, probes, rnn, gaps: dict[int, Difference]) -> tuple[str, str, Difference | None]:
    """Supported: at some delay the family remembers, the tanh RNN does not, and the family's recall is
    above the RNN's by the test. Not supported: it is above the RNN nowhere. Also the difference to show:
    at the longest delay it wins, else the longest it is above, else its largest."""
    wins = [d for d, gap in gaps.items() if remembers(probes[d]) and not remembers(rnn[d]) and gap.above]
    anywhere = [d for d, gap in gaps.items() if gap.above]
    line = _reach_line(family, probes, rnn)
    if wins:
        d = wins[-1]
        at = f"; at delay {d}: {fmt(probes[d].stat(recall), 2)} vs {fmt(rnn[d].stat(recall), 2)}"
        return "supported", line + at, gaps[d]
    if anywhere:
        d = anywhere[-1]
        return (
            "tie",
            line + f"; above the rnn at delay {d} ({fmt(probes[d].stat(recall), 2)} vs "
            f"{fmt(rnn[d].stat(recall), 2)}) but neither or both remember it",
            gaps[d],
        )
    finite = [g for g in gaps.values() if math.isfinite(g.effect)]  # NaN: a delay with no result
    largest = max(finite, key=lambda g: g.effect, default=None)
    return "not supported", line + "; its recall is above the tanh rnn's at no delay", largest


def updates_line(grid: dict[str, dict[int, Cell]]) -> str:
    """The step budget and the minutes it took each family: equal updates, unequal time."""
    parts = []
    for family, probes in grid.items():
        spent = [c.stat(minutes) for c in probes.values()]
        total = sum(m.mean for m in spent if m is not None)
        steps = {round(s.mean) for c in probes.values() if (s := c.stat(train_value("steps")))}
        shown = "/".join(f"{n:,}" for n in sorted(steps)) or "—"
        parts.append(f"{family} {shown} steps in {total:.1f} min")
    return (
        "Equal updates, unequal minutes (per seed, summed over the delays it ran): " + "; ".join(parts) + "."
    )
