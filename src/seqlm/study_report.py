"""docs/study.md and docs/study/*.png, written by `seqlm study` from the experiments' own reports.

Every sentence that judges a claim of the seed is computed here from the numbers (``claims``), so a
rerun on another machine or budget can reverse a verdict; nothing in the report is written by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from seqlm import io

FIGURES = "study"  # docs/study/*.png
MARGIN_BPB = 0.01  # bits per byte: smaller differences are called ties
# "Remembers at delay d": recall at least halfway from chance to perfect.
REMEMBERS = 0.5
WELL_ABOVE = 0.10  # recall accuracy: "well above" needs this much and two standard errors


# ------------------------------------------------------------------------------------------- helpers


def _by_family(results, group: str) -> dict[str, Any]:
    return {r.experiment.family: r for r in results if r.experiment.group == group}


def _ok(r) -> bool:
    return r is not None and r.status == "success" and r.eval is not None


def _bpb(r) -> float | None:
    return r.eval["bits_per_byte"] if _ok(r) else None


def _recall(r) -> float | None:
    return r.eval.get("recall_accuracy") if _ok(r) else None


def _ablation(r) -> dict[str, float]:
    if not _ok(r) or not r.ablation:
        return {}
    return {row["reset_every"]: row["bits_per_byte"] for row in r.ablation["rows"]}


def _context_gain(r, k: str) -> float | None:
    """Bits per byte lost when the state is reset every k tokens, against the carried state."""
    rows = _ablation(r)
    return rows[k] - rows["none"] if k in rows and "none" in rows else None


def _gradient_ratio(r, k: int | None = None) -> float | None:
    """‖∂ℓ/∂h_{t−k}‖ / ‖∂ℓ/∂h_t‖ from the gradient-flow report; the last k when k is None."""
    if not _ok(r) or not r.gradient:
        return None
    rows = r.gradient["rows"]
    k = len(rows) - 1 if k is None else k
    if k >= len(rows) or rows[0]["gradient_norm"] <= 0:
        return None
    return rows[k]["gradient_norm"] / rows[0]["gradient_norm"]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _sci(x: float | None) -> str:
    if x is None:
        return "—"
    return "0 (below float precision)" if x == 0 else f"{x:.1e}"


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def well_above(a, b) -> tuple[bool, float]:
    """Is probe result ``a``'s recall well above ``b``'s? (difference ≥ WELL_ABOVE and ≥ 2 standard errors)."""
    pa, pb = _recall(a), _recall(b)
    if pa is None or pb is None:
        return False, math.nan
    se = math.hypot(_standard_error(pa, a.eval["recall_positions"]), _standard_error(pb, b.eval["recall_positions"]))
    diff = pa - pb
    return diff >= WELL_ABOVE and diff >= 2 * se, diff


def remembers(r) -> bool:
    p = _recall(r)
    if p is None:
        return False
    chance = r.eval["recall_chance"]
    return p >= chance + REMEMBERS * (1 - chance)


def reach(probes: dict[int, Any]) -> int | None:
    """The longest delay a family remembers (None: not even the shortest)."""
    held = [d for d, r in sorted(probes.items()) if remembers(r)]
    return held[-1] if held else None


def probe_grid(results) -> dict[str, dict[int, Any]]:
    grid: dict[str, dict[int, Any]] = {}
    for r in results:
        if r.experiment.group == "probe":
            grid.setdefault(r.experiment.family, {})[r.experiment.delay] = r
    return grid


# -------------------------------------------------------------------------------------------- claims


def claims(results) -> list[tuple[str, str, str]]:
    """(seed claim, verdict, evidence) for each step of the argument, judged from the numbers."""
    text = _by_family(results, "text")
    grid = probe_grid(results)
    out = [
        _claim_window(text),
        _claim_bow(text),
        _claim_vanish(text, grid),
        _claim_clipping(text),
        _claim_long_term("ReLU with identity initialisation (IRNN) keeps long-term dependencies", ["irnn"], grid, text),
        _claim_long_term("Gated cells (LSTM, GRU) keep long-term dependencies", ["lstm", "gru"], grid, text),
    ]
    return [c for c in out if c is not None]


def _recurrent_best(text: dict):
    recurrent = [r for f, r in text.items() if f in ("rnn", "irnn", "lstm", "gru") and _bpb(r) is not None]
    return min(recurrent, key=_bpb) if recurrent else None


def _claim_window(text: dict):
    claim = "Fixed-window feed-forward models cannot hold long history"
    ffn, best = text.get("ffn_window"), _recurrent_best(text)
    if _bpb(ffn) is None or best is None:
        return (claim, "not tested", "the ffn_window or every recurrent text experiment is missing or failed")
    window = ffn.experiment.overrides.get("model.window", 8)
    gain_ffn, gain_rnn = _context_gain(ffn, "64"), _context_gain(best, "64")
    better = _bpb(ffn) - _bpb(best)
    uses_more = gain_ffn is not None and gain_rnn is not None and gain_rnn > gain_ffn + MARGIN_BPB
    verdict = "supported" if better > MARGIN_BPB and uses_more else "not supported"
    evidence = (
        f"test bits/byte: ffn_window {_fmt(_bpb(ffn))} vs the best recurrent model ({best.experiment.family}) "
        f"{_fmt(_bpb(best))}; resetting the state every 64 tokens costs ffn_window {_fmt(gain_ffn)} bits/byte "
        f"(it only ever sees {window} tokens; the cost comes from the positions just after a reset) and "
        f"{best.experiment.family} {_fmt(gain_rnn)}"
    )
    return (claim, verdict, evidence)


def _claim_bow(text: dict):
    claim = "A bag of words loses order"
    ffn, bow = text.get("ffn_window"), text.get("bow")
    if _bpb(ffn) is None or _bpb(bow) is None:
        return (claim, "not tested", "the ffn_window or bow text experiment is missing or failed")
    gap = _bpb(bow) - _bpb(ffn)
    verdict = "supported" if gap > MARGIN_BPB else "not supported"
    evidence = (
        f"same window and parameter budget: bow {_fmt(_bpb(bow))} vs ffn_window (ordered window) {_fmt(_bpb(ffn))} "
        f"test bits/byte, {'+' if gap >= 0 else ''}{_fmt(gap)} for throwing the order away"
    )
    return (claim, verdict, evidence)


def _claim_vanish(text: dict, grid: dict):
    claim = "Plain (tanh) RNN gradients vanish over long spans"
    rnn = text.get("rnn")
    ratio = _gradient_ratio(rnn)
    if ratio is None:
        return (claim, "not tested", "the tanh rnn text experiment is missing, failed or has no gradient-flow report")
    k = len(rnn.gradient["rows"]) - 1
    others = ", ".join(
        f"{f} {_sci(_gradient_ratio(text.get(f)))}" for f in ("irnn", "lstm", "gru") if _gradient_ratio(text.get(f)) is not None
    )
    verdict = "supported" if ratio < 1e-2 else "not supported"
    evidence = (
        f"‖∂ℓ_t/∂h_(t−{k})‖ / ‖∂ℓ_t/∂h_t‖ after training on text: tanh rnn {_sci(ratio)}"
        + (f" (for comparison: {others})" if others else "")
        + "; supported means it fell below 1e-2"
    )
    return (claim, verdict, evidence)


def _claim_clipping(text: dict):
    claim = "Gradients can explode, and clipping tames the explosion"
    clipped, unclipped = text.get("rnn"), text.get("rnn-noclip")
    if clipped is None or unclipped is None:
        return None
    if not _ok(clipped):
        return (claim, "not tested", "the clipped tanh rnn experiment failed")
    fraction = clipped.train.get("fraction_clipped") if clipped.train else None
    clip = clipped.experiment.overrides.get("train.grad_clip", "train.grad_clip")
    if unclipped.diverged:
        return (claim, "supported", f"without clipping the tanh rnn diverged ({unclipped.note}); with clipping at "
                f"{clip} it trained to {_fmt(_bpb(clipped))} bits/byte, {_fmt(fraction)} of its steps clipped")  # fmt: skip
    if not _ok(unclipped):
        return (claim, "not tested", f"the unclipped tanh rnn failed for another reason: {unclipped.note}")
    gap = _bpb(unclipped) - _bpb(clipped)
    peaks = [getattr(r, "max_grad_norm", None) for r in (clipped, unclipped)]
    # A worse unclipped run is evidence of explosion only if its gradients did grow larger: a gap with
    # smaller unclipped gradients is the two runs' noise (or clipping slowing learning down), not a rescue.
    exploded = None in peaks or peaks[1] > peaks[0]
    verdict = "supported" if gap > MARGIN_BPB and exploded else "not supported"
    evidence = (
        f"tanh rnn with clipping: {_fmt(_bpb(clipped))} test bits/byte ({_fmt(fraction)} of steps clipped); "
        f"without: {_fmt(_bpb(unclipped))}, and it did not diverge"
        + (f"; largest logged gradient norm {_fmt(peaks[0], 2)} with clipping (measured before clipping), "
           f"{_fmt(peaks[1], 2)} without" if None not in peaks else "")  # fmt: skip
        + ("" if verdict == "supported" else "; no explosion hurt the unclipped run within this budget")
    )
    return (claim, verdict, evidence)


def _claim_long_term(claim: str, families: list[str], grid: dict, text: dict):
    rnn = grid.get("rnn", {})
    if not rnn or not any(grid.get(f) for f in families):
        return (claim, "not tested", "the copy probe lacks the tanh rnn or these families")
    longest = max(rnn)
    parts, verdicts = [], []
    for f in families:
        probes = grid.get(f, {})
        if longest not in probes:
            continue
        lost = [str(d) for d, r in sorted(probes.items()) if not _ok(r)]
        if not _ok(probes[longest]):
            verdicts.append("not supported")
            parts.append(f"{f}: {'diverged' if probes[longest].diverged else 'failed'} at delay"
                         f"{'s' if len(lost) > 1 else ''} {', '.join(lost)}; remembers up to delay "
                         f"{reach(probes) or 'none'} (tanh rnn: {reach(rnn) or 'none'})")  # fmt: skip
            continue
        above, diff = well_above(probes[longest], rnn[longest])
        family_reach, rnn_reach = reach(probes), reach(rnn)
        longer = family_reach is not None and (rnn_reach is None or family_reach > rnn_reach)
        verdicts.append("supported" if above else ("partly supported" if longer else "not supported"))
        parts.append(
            f"{f}: recall {_fmt(_recall(probes[longest]), 2)} at delay {longest} vs tanh rnn "
            f"{_fmt(_recall(rnn[longest]), 2)}; remembers up to delay {family_reach or 'none'} "
            f"(tanh rnn: {rnn_reach or 'none'})"
        )
    if not verdicts:
        return (claim, "not tested", f"no result at delay {longest}")
    verdict = verdicts[0] if len(set(verdicts)) == 1 else "partly supported"
    on_text = [f"{f} {_fmt(_bpb(text.get(f)))}" for f in families if _bpb(text.get(f)) is not None]
    if on_text and _bpb(text.get("rnn")) is not None:
        parts.append(f"on text (not a long-range test): {', '.join(on_text)} vs tanh rnn {_fmt(_bpb(text['rnn']))} "
                     "test bits/byte")  # fmt: skip
    return (claim, verdict, "; ".join(parts))


# ----------------------------------------------------------------------------------------- the report


def write(docs: Path, results, machine: dict, options) -> Path:
    figures = docs / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    drawn = {
        "gradient_flow": plot_gradient_flow([r for r in results if r.experiment.group == "text"],
                                            figures / "gradient_flow.png", "Gradient flow, text"),  # fmt: skip
        "context_ablation": plot_context_ablation(results, figures / "context_ablation.png"),
        "copy_recall": plot_recall(results, figures / "copy_recall.png"),
    }
    grid = probe_grid(results)
    if grid:
        longest = max(d for probes in grid.values() for d in probes)
        at_longest = [probes[longest] for probes in grid.values() if longest in probes]
        drawn["probe_gradient_flow"] = plot_gradient_flow(
            at_longest, figures / "probe_gradient_flow.png", f"Gradient flow, copy probe at delay {longest}",
            span=next((r.eval["recall_span"] for r in at_longest if _ok(r)), None),
        )
    path = docs / "study.md"
    io.write_text(path, render(results, machine, options, {k: v for k, v in drawn.items() if v}))
    return path


def render(results, machine: dict, options, figures: dict[str, bool]) -> str:
    lines = [
        "# The sequence-model study",
        "",
        "Written by `seqlm study` (`make study`) from the experiments' own reports; do not edit by hand, rerun it.",
        "",
        _provenance(results, machine, options),
        "",
        "## The seed's argument, claim by claim",
        "",
        "| claim | verdict | evidence |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in claims(results)]
    lines += ["", *_text_section(results, figures), "", *_probe_section(results, options, figures), "",
              *_footer(options, machine)]  # fmt: skip
    return "\n".join(lines) + "\n"


def _provenance(results, machine: dict, options) -> str:
    failed = sum(r.status != "success" for r in results)
    dirty = " with uncommitted changes" if machine.get("dirty") else ""
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    return (
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores{gpu}, {machine.get('memory') or '? GiB'} RAM; "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}.  \n"
        f"**Commit:** `{machine['commit'][:12]}`{dirty}. **Date:** {machine['started']} to {machine['finished']} (UTC).  \n"
        f"**Wall-clock:** {machine['wall_minutes']:.1f} minutes for {len(results)} experiments "
        f"({failed} failed), queueing, training, evaluation and this report; {options.jobs} experiments at a "
        "time, one thread each. "
        f"Budgets: {options.text_minutes:g} min of training per text experiment, {options.probe_minutes:g} min per "
        f"probe experiment, no step or epoch limit, no early stopping.{_load(machine, options)}  \n"
        f"**Tracking:** MLflow experiment `{options.name}`, runs tagged `seqlm.study={options.name}` and "
        f"`seqlm.study.stamp={options.stamp}`; DVC experiments `*-{options.stamp}`."
    )


def _load(machine: dict, options) -> str:
    mean, peak = machine.get("load_mean"), machine.get("load_max")
    if mean is None:
        return ""
    busy = (
        "other work competed for the cores, so tokens/s and steps are lower than on a quiet machine"
        if mean > options.jobs + 0.5
        else "the study had the cores to itself"
    )
    return (
        f" Load average while the experiments ran: mean {mean:.1f}, peak {peak:.1f}, against {options.jobs} "
        f"for the study's own experiments: {busy}."
    )


def _text_section(results, figures: dict[str, bool]) -> list[str]:
    text = [r for r in results if r.experiment.group == "text"]
    if not text:
        return []
    lines = [
        "## Text: one corpus, one budget, comparable sizes",
        "",
        "Each family trained for the same wall-clock minutes on the same corpus and tokenizer, with a hidden "
        "size chosen so its parameter count is within 15% of the LSTM's. Test metrics use the carried-state "
        "protocol of the evaluate stage.",
        "",
        "| family | DVC experiment | parameters | test bits/byte | word perplexity | tokens/s | steps | "
        "stopped by | fraction of steps clipped | diverged? |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in text:
        lines.append(_row(r, [_fmt(_bpb(r)), _fmt(r.eval.get("word_perplexity") if _ok(r) else None, 1)]))
    lines.append("")
    if figures.get("gradient_flow"):
        lines += [f"![Gradient flow per family]({FIGURES}/gradient_flow.png)", "",
                  "Mean ‖∂ℓ_t/∂h_(t−k)‖ over k steps back, on the valid split after training (window models: 0 "
                  "for every k > 0, not drawn).", ""]  # fmt: skip
    if figures.get("context_ablation"):
        lines += [f"![Context ablation per family]({FIGURES}/context_ablation.png)", "",
                  "Test bits per byte when the state is reset every K tokens; ∞ is the carried state.", ""]  # fmt: skip
    return lines


def _row(r, metrics: list[str]) -> str:
    e, t = r.experiment, r.train or {}
    parameters = t.get("num_parameters", e.parameters)
    diverged = "yes" if r.diverged else ("failed: " + r.note if r.status != "success" else "no")
    return (
        f"| {e.family} | `{e.name}` | {parameters:,} | {' | '.join(metrics)} | "
        f"{_fmt(t.get('tokens_per_s'), 0)} | {t.get('steps', '—')} | {t.get('stopped_by', '—')} | {_fmt(t.get('fraction_clipped'))} | {diverged} |"
    )


def _probe_section(results, options, figures: dict[str, bool]) -> list[str]:
    grid = probe_grid(results)
    if not grid:
        return []
    delays = sorted({d for probes in grid.values() for d in probes})
    sample = next((r for probes in grid.values() for r in probes.values() if _ok(r)), None)
    chance = sample.eval["recall_chance"] if sample else None
    lines = [
        "## Copy probe: how far back does each family remember?",
        "",
        "`data.source: synthetic:copy`: each line is a key (one of 8 letters), `data.delay` filler dots, "
        "the cue `?` and the key again (`A.....?A`); with `tokenizer.type: char` every symbol is one token. "
        "Recall accuracy is measured at the key's second appearance in the test stream: the prediction "
        f"counts when the key is the most likely of the 8 (chance {_fmt(chance)}). A family *remembers* a "
        f"delay when it recalls at least halfway from chance to perfect.",
        "",
        "| family | " + " | ".join(f"delay {d}" for d in delays) + " | remembers up to |",
        "| --- | " + " | ".join("---:" for _ in delays) + " | ---: |",
    ]
    for family, probes in grid.items():
        cells = [_recall_cell(probes.get(d)) for d in delays]
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {reach(probes) or 'none'} |")
    lines += ["", _longest_delay_verdict(grid), "", _updates(grid, delays), ""]
    if figures.get("copy_recall"):
        lines += [f"![Copy-probe recall against delay]({FIGURES}/copy_recall.png)", ""]
    if figures.get("probe_gradient_flow"):
        lines += [f"![Gradient flow on the copy probe]({FIGURES}/probe_gradient_flow.png)", "",
                  "The dashed line is the recall span: how far back the gradient must reach the key.", ""]  # fmt: skip
    lines += [
        "| family | delay | DVC experiment | parameters | recall bits | test bits/byte | tokens/s | steps | "
        "stopped by | fraction of steps clipped | diverged? |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for family, probes in grid.items():
        for d in delays:
            r = probes.get(d)
            if r is not None:
                row = _row(r, [_fmt(r.eval.get("recall_bits") if _ok(r) else None), _fmt(_bpb(r))])
                lines.append(row.replace(f"| {family} |", f"| {family} | {d} |", 1))
    return lines


def _updates(grid: dict, delays: list[int]) -> str:
    """Equal minutes are not equal updates: the step counts behind each delay's comparison."""
    parts = []
    for d in delays:
        steps = {f: probes[d].train["steps"] for f, probes in grid.items() if d in probes and _ok(probes[d]) and probes[d].train}
        if len(steps) > 1:
            ratio = max(steps.values()) / max(min(steps.values()), 1)
            parts.append(f"delay {d}: " + ", ".join(f"{f} {n:,}" for f, n in steps.items()) + f" ({ratio:.1f}× apart)")
    if not parts:
        return ""
    return (
        "Equal minutes are not equal updates: the families' CPU kernels differ in speed, so within the same "
        "budget they trained for different numbers of steps (" + "; ".join(parts) + "). A family that did not "
        "learn a delay in fewer steps may yet learn it in more."
    )


def _recall_cell(r) -> str:
    if r is None:
        return ""
    if not _ok(r):
        return "diverged" if r.diverged else "failed"
    return f"{r.eval['recall_accuracy']:.2f} (n={r.eval['recall_positions']})"


def _longest_delay_verdict(grid: dict) -> str:
    """The issue's question, answered from the numbers: LSTM against tanh RNN at the longest delay."""
    lstm, rnn = grid.get("lstm", {}), grid.get("rnn", {})
    common = sorted(set(lstm) & set(rnn))
    if not common:
        return "The probe has no delay with both an LSTM and a tanh RNN result, so they cannot be compared."
    d = common[-1]
    a, b = lstm[d], rnn[d]
    if not (_ok(a) and _ok(b)):
        return f"At delay {d} the LSTM or the tanh RNN did not finish ({a.note or b.note}); no comparison."
    above, diff = well_above(a, b)
    head = (
        f"**At the longest delay, {d}, the LSTM recalls {_recall(a):.2f} and the tanh RNN {_recall(b):.2f} "
        f"(chance {a.eval['recall_chance']:.3f}; {a.eval['recall_positions']} and {b.eval['recall_positions']} "
        f"recall positions).**"
    )
    if above:
        return head + f" The LSTM is well above the tanh RNN (+{diff:.2f})."
    return head + " The LSTM is **not** well above the tanh RNN here. Why, from the same runs: " + _why(a, b)


def _why(lstm, rnn) -> str:
    span = lstm.eval["recall_span"]
    bptt = lstm.experiment.overrides.get("train.bptt")
    reasons = []
    for name, r in (("LSTM", lstm), ("tanh RNN", rnn)):
        ratio = _gradient_ratio(r, span)
        steps = (r.train or {}).get("steps")
        recall = _recall(r)
        at_chance = recall is not None and recall < r.eval["recall_chance"] + WELL_ABOVE
        reasons.append(
            f"the {name} trained {steps} steps and {'stayed near chance' if at_chance else f'reached {recall:.2f}'}; "
            f"after training, ‖∂ℓ_t/∂h_(t−{span})‖, the lag the recall's gradient must bridge to reach the key, is "
            f"{_sci(ratio)} of ‖∂ℓ_t/∂h_t‖ (mean over the valid split)"
        )
    if bptt:
        inside = max(0.0, (bptt - span) / bptt)
        reasons.append(
            f"with truncated BPTT windows of {bptt} tokens, {inside:.0%} of the training episodes have the key "
            "and its recall in one window, the only ones whose loss can reach the key at all"
        )
    stuck = all(_recall(r) is not None and _recall(r) < r.eval["recall_chance"] + WELL_ABOVE for r in (lstm, rnn))
    tail = (
        ". Neither learned to hold the key across this gap within this budget, so the probe cannot separate "
        "them here; whether more updates would is what a longer `--probe-minutes` would tell."
        if stuck
        else "."
    )
    return "; ".join(reasons) + tail


def _footer(options, machine: dict) -> list[str]:
    commit = machine["commit"][:7]
    return [
        "## Reproduce and extend",
        "",
        "```bash",
        "make study                     # or: seqlm study; prints the dvc commands with --dry-run",
        f"dvc exp show --rev {commit}    # these experiments, params and metrics (plain `dvc exp show` while HEAD is {commit})",
        "make ui                        # MLflow: experiment " + options.name + ", one run per experiment",
        "```",
        "",
        "Each experiment is `dvc exp run --queue -S …` up to the evaluate stage (study models are not "
        f"registered, so they never meet the champion gate), run {options.jobs} at a time with "
        f"`dvc queue start -j {options.jobs}` (one thread each: `OMP_NUM_THREADS=1`). "
        "Add a family to `FAMILIES` in `src/seqlm/study.py`, or change budgets and delays with "
        "`seqlm study --text-minutes … --probe-minutes … --delays …`.",
    ]


# ------------------------------------------------------------------------------------------- figures


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig, fig.subplots()


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def plot_gradient_flow(results, path: Path, title: str, span: int | None = None) -> bool:
    curves = [(r.experiment.family, r.gradient["rows"]) for r in results if _ok(r) and r.gradient]
    if not curves:
        return False
    fig, ax = _figure()
    flat = []
    for family, rows in curves:
        points = [(row["k"], row["gradient_norm"]) for row in rows if row["gradient_norm"] > 0]
        if len(points) > 1:
            ax.plot(*zip(*points), label=family)
        else:
            flat.append(family)
    if span is not None:
        ax.axvline(span, linestyle="--", color="gray", label=f"recall span {span}")
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back)")
    ax.set_ylabel(r"mean $\|\partial \ell_t \,/\, \partial h_{t-k}\|$")
    ax.set_title(title + (f" ({', '.join(flat)}: 0 for k > 0)" if flat else ""), fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_context_ablation(results, path: Path) -> bool:
    curves = [(r.experiment.family, _ablation(r)) for r in results if r.experiment.group == "text" and _ablation(r)]
    if not curves:
        return False
    fig, ax = _figure()
    largest = max(int(k) for _, rows in curves for k in rows if k != "none")
    for family, rows in curves:
        ks = sorted(int(k) for k in rows if k != "none")
        xs = [*ks, 2 * largest]
        ys = [*(rows[str(k)] for k in ks), rows["none"]]
        ax.plot(xs, ys, marker="o", label=family)
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for _, rows in curves for k in rows if k != "none"})
    ax.set_xticks([*ticks, 2 * largest], [*map(str, ticks), "∞"])
    ax.set_xlabel("K: state reset every K tokens (∞: carried)")
    ax.set_ylabel("test bits per byte")
    ax.set_title("Context ablation, text", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_recall(results, path: Path) -> bool:
    grid = probe_grid(results)
    if not grid:
        return False
    fig, ax = _figure()
    chance = None
    for family, probes in grid.items():
        points = [(d, _recall(r)) for d, r in sorted(probes.items()) if _recall(r) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=family)
        chance = chance or next((r.eval["recall_chance"] for r in probes.values() if _ok(r)), None)
    if chance is not None:
        ax.axhline(chance, linestyle="--", color="gray", label=f"chance {chance:.3f}")
    delays = sorted({d for probes in grid.values() for d in probes})
    ax.set_xscale("log")
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("delay (filler symbols between key and recall)")
    ax.set_ylabel("recall accuracy (test)")
    ax.set_title("Copy probe: recall against delay", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
