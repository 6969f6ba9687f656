"""The long-range verdicts, from the episodic copy probe measured as updates to solve: each run stops once
its valid recall reaches ``plan.SOLVED_RECALL`` (or at its cap), so a cell's outcome is how many seeds
solved it and in how many updates.

A family *solves* a delay when at least SOLVES of its seeds did. Positive control: a family must solve the
shortest delay of the ladder; one that does not could not have shown a longer memory, so its claim reads
"control failed", not "not supported". Each family's test recall is compared with the tanh RNN's at every
delay both ran, by Welch's test on the per-seed values, and Holm's correction counts every delay: the seeds
that solved are shown, but a count out of five (Fisher's exact test: at best p = 0.008 for 5/5 against
0/5) cannot survive a correction over a dozen delays and families, while the recall each seed ended at
can. The window models are the negative control: they must solve a delay inside their window and none
past it.
"""

from __future__ import annotations

import math
import statistics

from seqlm.study.aggregate import Cell, Comparisons, Difference, probe_grid
from seqlm.study.claims import Claim, Judge, not_tested
from seqlm.study.results import minutes, recall, solved, updates_to_solve

SOLVES = 0.8  # "solves delay d": at least 4 of 5 seeds reached the recall threshold within the cap
IRNN_2X2 = {"rnn": "tanh, default", "rnn-identity": "tanh, identity", "rnn-relu": "ReLU, default"}
WINDOW_MODELS = ("ffn_window", "bow")


def outcome(cell: Cell | None) -> tuple[int, int]:
    """(seeds that solved, seeds with a result)."""
    values = [v for v in cell.values(solved) if v is not None] if cell is not None else []
    return int(sum(values)), len(values)


def solves(cell: Cell | None) -> bool:
    k, n = outcome(cell)
    return n > 0 and k >= SOLVES * n


def median_updates(cell: Cell | None) -> float | None:
    values = [v for v in cell.values(updates_to_solve) if v is not None] if cell is not None else []
    return statistics.median(values) if values else None


def cell_text(cell: Cell | None) -> str:
    """ "k/n solved, median updates" for the report's table."""
    if cell is None:
        return "—"
    k, n = outcome(cell)
    if n == 0:
        return "failed"
    m = median_updates(cell)
    return f"{k}/{n}" + (f" · {m:,.0f}" if m is not None else "")


def reach(probes: dict[int, Cell]) -> int | None:
    """The longest delay a family solves (None: not even the shortest)."""
    held = [d for d, c in sorted(probes.items()) if solves(c)]
    return held[-1] if held else None


def control(probes: dict[int, Cell]) -> tuple[bool, str]:
    """The positive control: the family solves the ladder's shortest delay."""
    if not probes:
        return False, "no probe cells"
    shortest = min(probes)
    k, n = outcome(probes[shortest])
    passed = solves(probes[shortest])
    return passed, f"{k}/{n} seeds solved delay {shortest} ({'passed' if passed else 'failed'})"


def probe_claims(results, comparisons: Comparisons) -> list[Judge]:
    grid = probe_grid(results)
    irnn = "ReLU with identity initialisation (IRNN) keeps long-term dependencies"
    gated = "Gated cells (LSTM, GRU) keep long-term dependencies"
    return [
        _long_term("irnn", irnn, ["irnn"], grid, comparisons.claim("irnn"), _irnn_2x2),
        _long_term("gated", gated, ["lstm", "gru"], grid, comparisons.claim("gated"), _lstm_gates),
        _window("window-probe", grid, comparisons.claim("window-probe")),
    ]


def _gaps(family: str, grid, comparisons: Comparisons) -> dict[int, Difference]:
    rnn = grid["rnn"]
    return {
        d: comparisons.compare(
            f"{family} − tanh rnn, recall at delay {d}", grid[family][d].stat(recall), rnn[d].stat(recall), 2
        )
        for d in sorted(set(grid[family]) & set(rnn))
    }


def _long_term(key: str, claim: str, families: list[str], grid, comparisons: Comparisons, extra) -> Judge:
    present = [f for f in families if grid.get(f)]
    test = (
        "episodic copy probe, one optimiser for every family, each run stopped once solved: seeds solved "
        "per delay, and recall against the tanh rnn's"
    )
    if not grid.get("rnn") or not present:
        return not_tested(key, claim, test, "the copy probe lacks the tanh rnn or these families")
    gaps = {f: _gaps(f, grid, comparisons) for f in present}

    def judge() -> Claim:
        verdicts, controls, parts, effects = [], [], [], []
        for f in present:
            passed, line = control(grid[f])
            controls.append(f"{f}: {line}")
            verdict, part, shown = _family(f, grid[f], grid["rnn"], gaps[f])
            verdicts.append(verdict if passed else "control failed")
            parts.append(part if passed else _reach_line(f, grid[f], grid["rnn"]))
            effects += [shown] if shown is not None else []
        verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly supported"
        parts += [line] if (line := extra(grid)) else []
        return Claim(key, claim, verdict, test, "; ".join(controls), "; ".join(parts), tuple(effects))

    return judge


def _reach_line(family: str, probes: dict[int, Cell], rnn: dict[int, Cell]) -> str:
    return f"{family} solves up to delay {reach(probes) or 'none'} (tanh rnn: {reach(rnn) or 'none'})"


def _family(family: str, probes, rnn, gaps: dict[int, Difference]) -> tuple[str, str, Difference | None]:
    """Supported: at some delay the family solves, the tanh RNN does not, and the family's recall is
    above the RNN's by the test. Not supported: its recall is above the RNN's at no delay. Also the
    difference to show: at the longest delay it wins, else the longest it is ahead, else its largest."""
    wins = [d for d, gap in gaps.items() if solves(probes[d]) and not solves(rnn[d]) and gap.above]
    anywhere = [d for d, gap in gaps.items() if gap.above]
    line = _reach_line(family, probes, rnn)
    if wins:
        d = wins[-1]
        at = f"; at delay {d}: {cell_text(probes[d])} vs {cell_text(rnn[d])} solved"
        return "supported", line + at, gaps[d]
    if anywhere:
        d = anywhere[-1]
        return "tie", line + f"; recall above the rnn's at delay {d} but neither or both solve it", gaps[d]
    finite = [g for g in gaps.values() if math.isfinite(g.effect)]  # NaN: a delay with no result
    largest = max(finite, key=lambda g: g.effect, default=None)
    return "not supported", line + "; its recall is above the tanh rnn's at no delay", largest


def _irnn_2x2(grid) -> str:
    shown = [f"{name} {reach(grid[f]) or 'none'}" for f, name in IRNN_2X2.items() if grid.get(f)]
    return "the 2 × 2 (nonlinearity, W_hh init) reaches: " + ", ".join(shown) if shown else ""


def _lstm_gates(grid) -> str:
    """How far the LSTM's gate-bias ablations reach: PyTorch's forget bias 0, and chrono initialisation."""
    rows = {"lstm-bias0": "with forget bias 0 (PyTorch's)", "lstm-chrono": "with chrono initialisation"}
    shown = [
        f"lstm {what} solves up to delay {reach(grid[f]) or 'none'}"
        for f, what in rows.items()
        if grid.get(f)
    ]
    return "; ".join(shown)


def _window(key: str, grid, comparisons: Comparisons) -> Judge:
    claim = "A fixed window (or a bag of words over it) cannot carry the key past its window"
    test = "the copy probe's window models as negative controls: a delay inside the window, the ones past it"
    present = [f for f in WINDOW_MODELS if grid.get(f)]
    if not present:
        return not_tested(key, claim, test, "the copy probe ran no window model")

    def judge() -> Claim:
        verdicts, controls, parts = [], [], []
        for f in present:
            window = _window_of(grid[f])
            inside = [d for d in grid[f] if d + 2 <= window]  # the key and the cue both in the window
            past = sorted(d for d in grid[f] if d + 2 > window)
            held = [d for d in inside if solves(grid[f][d])]
            controls.append(f"{f} (window {window}): solves {held or 'no delay'} inside it")
            leaked = [d for d in past if solves(grid[f][d])]
            parts.append(f"{f}: past its window " + ", ".join(f"{d}: {cell_text(grid[f][d])}" for d in past))
            if not inside or not held:
                verdicts.append("control failed")
            elif not past:
                verdicts.append("not tested")
            else:
                verdicts.append("not supported" if leaked else "supported")
        verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly supported"
        return Claim(key, claim, verdict, test, "; ".join(controls), "; ".join(parts), ())

    return judge


def _window_of(probes: dict[int, Cell]) -> int:
    cell = next(iter(probes.values()))
    return int(cell.experiment.overrides.get("model.window", 8))


def updates_line(grid: dict[str, dict[int, Cell]], cap: int) -> str:
    """The minutes each family took: one cap of updates for all, runs stopping once solved."""
    parts = []
    for family, probes in grid.items():
        spent = [c.stat(minutes) for c in probes.values()]
        total = sum(m.mean for m in spent if m is not None)
        parts.append(f"{family} {total:.1f} min")
    return (
        f"Every run stops once solved or at {cap:,} updates; minutes per seed, summed over the delays each "
        "family ran: " + "; ".join(parts) + "."
    )
