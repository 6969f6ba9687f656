"""The long-range verdicts, from the episodic copy probe: how far back each family remembers, and whether
the IRNN and the gated cells remember further than the tanh RNN.

Positive control: a family must remember the shortest delay of the ladder; one that does not could not
have shown a longer memory, so its claim reads "control failed", not "not supported".
"""

from __future__ import annotations

from seqlm.study.aggregate import Cell, above, fmt, probe_grid
from seqlm.study.claims import Claim, not_tested
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


def probe_claims(results) -> list[Claim]:
    grid = probe_grid(results)
    irnn = "ReLU with identity initialisation (IRNN) keeps long-term dependencies"
    gated = "Gated cells (LSTM, GRU) keep long-term dependencies"
    return [_long_term(irnn, ["irnn"], grid), _long_term(gated, ["lstm", "gru"], grid)]


def _long_term(claim: str, families: list[str], grid: dict[str, dict[int, Cell]]) -> Claim:
    rnn = grid.get("rnn", {})
    present = [f for f in families if grid.get(f)]
    test = "episodic copy probe, equal updates: recall against delay, each family against the tanh rnn"
    if not rnn or not present:
        return not_tested(claim, test, "the copy probe lacks the tanh rnn or these families")
    verdicts, controls, parts = [], [], []
    for f in present:
        passed, line = control(grid[f])
        controls.append(f"{f}: {line}")
        verdict, part = (
            _family(f, grid[f], rnn) if passed else ("control failed", _reach_line(f, grid[f], rnn))
        )
        verdicts.append(verdict)
        parts.append(part)
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly supported"
    return Claim(claim, verdict, test, "; ".join(controls), "; ".join(parts))


def _reach_line(family: str, probes: dict[int, Cell], rnn: dict[int, Cell]) -> str:
    return f"{family} remembers up to delay {reach(probes) or 'none'} (tanh rnn: {reach(rnn) or 'none'})"


def _family(family: str, probes: dict[int, Cell], rnn: dict[int, Cell]) -> tuple[str, str]:
    """Supported: at some delay the family remembers, the tanh RNN does not, and the family's recall is
    above the RNN's by the rule. Not supported: it is above the RNN nowhere."""
    wins = [
        d
        for d in sorted(set(probes) & set(rnn))
        if remembers(probes[d])
        and not remembers(rnn[d])
        and above(probes[d].stat(recall), rnn[d].stat(recall))
    ]
    anywhere = [
        d for d in sorted(set(probes) & set(rnn)) if above(probes[d].stat(recall), rnn[d].stat(recall))
    ]
    line = _reach_line(family, probes, rnn)
    if wins:
        d = wins[-1]
        return (
            "supported",
            line + f"; at delay {d}: {fmt(probes[d].stat(recall), 2)} vs {fmt(rnn[d].stat(recall), 2)}",
        )
    if anywhere:
        d = anywhere[-1]
        return (
            "tie",
            line + f"; above the rnn at delay {d} ({fmt(probes[d].stat(recall), 2)} vs "
            f"{fmt(rnn[d].stat(recall), 2)}) but neither or both remember it",
        )
    return "not supported", line + "; its recall is above the tanh rnn's at no delay"


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
