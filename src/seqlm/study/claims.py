"""The verdicts on the text, window, gradient and cloze claims, each with its positive control.

Every sentence that judges a claim is computed here (and in ``probe_claims`` for the long-range claims),
so a rerun on another machine or budget can reverse a verdict; nothing in the report is written by hand.
A claim is judged only when its positive control shows that the test can see the effect at all;
otherwise its verdict is "control failed" and the evidence says why.

Judging takes two steps, because a difference counts only after the p-values of the whole table are
corrected together (``aggregate.RULE``): each claim function registers its comparisons with
``Comparisons`` and returns a ``Judge``; the report adjusts the comparisons, then calls the judges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from seqlm.study.aggregate import Cell, Comparisons, Difference, by_label, explode_grid, fmt, stat
from seqlm.study.plan import CLOZE_MATCHED
from seqlm.study.results import (
    bits_per_blank,
    bpb,
    context_gain,
    log10_gradient_ratio,
    log10_max_grad_norm,
    top1,
    train_value,
    unigram_bits_per_blank,
    unigram_bpb,
)

VANISHED_LOG10 = -2.0  # "vanished": the gradient 128 steps back is below 1% of the one at the loss
EXPLODED_LOG10 = 1.0  # "exploded": a peak gradient norm at least 10× the unprovoked tanh RNN's
RECURRENT = ("rnn", "irnn", "lstm", "gru")


@dataclass(frozen=True)
class Claim:
    key: str  # the claim's short name ("window", "gated", …: limitations.LITERATURE's keys)
    claim: str
    verdict: str  # supported | partly supported | not supported | tie | control failed | not tested
    test: str  # what was compared, in a few words
    control: str  # the positive control and whether it passed
    evidence: str  # the numbers, mean ± sd over seeds
    effects: tuple[Difference, ...] = ()  # the comparisons the verdict rests on

    @property
    def effect(self) -> str:
        """The effects with their 95% intervals and adjusted p, for the claims table."""
        return "; ".join(d.text() for d in self.effects) or "—"


Judge = Callable[[], Claim]  # a claim's verdict, read once every comparison of the table is adjusted


def not_tested(key: str, claim: str, test: str, why: str) -> Judge:
    found = Claim(key, claim, "not tested", test, "—", why)
    return lambda: found


def text_claims(results, comparisons: Comparisons) -> list[Judge]:
    text = by_label(results, "text")
    return [
        _window(text, comparisons.claim("window")),
        _big_window(text, comparisons.claim("big")),
        _bow(text, comparisons.claim("bow")),
        _vanish(text, comparisons.claim("vanish")),
        _clipping(explode_grid(results), text.get("rnn"), comparisons.claim("clip")),
    ]


def cloze_claims(results, comparisons: Comparisons) -> list[Judge]:
    return [_bidirectional(by_label(results, "cloze"), comparisons.claim("bi"))]


def passed(seen: bool, d: Difference) -> str:
    return f"{'passed' if seen else 'failed'}; {d.p_note}"


def _best_recurrent(text: dict[str, Cell]) -> Cell | None:
    ranked = [c for f, c in text.items() if f in RECURRENT and c.stat(bpb) is not None]
    return min(ranked, key=lambda c: c.stat(bpb).mean) if ranked else None


def _uses_context(cell: Cell, comparisons: Comparisons) -> tuple[Difference, Callable[[], str]]:
    """The context ablation's positive control: resetting the state every token costs the model bits."""
    cost = cell.stat(context_gain("1"))
    d = comparisons.compare(f"{cell.label}: cost of resetting every token", cost, 0.0)
    return d, lambda: f"resetting every token costs {cell.label} {fmt(cost)} bits/byte ({passed(d.above, d)})"


def _window(text: dict[str, Cell], comparisons: Comparisons) -> Judge:
    claim = "Fixed-window feed-forward models cannot hold long history"
    test = (
        "test bits/byte and the cost of resetting every 64 tokens, at equal training tokens: ffn_window "
        "(8 tokens) against the best recurrent model"
    )
    ffn, best = text.get("ffn_window"), _best_recurrent(text)
    if ffn is None or best is None or ffn.stat(bpb) is None:
        return not_tested(
            "window", claim, test, "the ffn_window or every recurrent text cell is missing or failed"
        )
    context, control = _uses_context(best, comparisons)
    gain_ffn, gain_rnn = ffn.stat(context_gain("64")), best.stat(context_gain("64"))
    loss = comparisons.compare(f"{best.label} − ffn_window, bits/byte", best.stat(bpb), ffn.stat(bpb))
    reach = comparisons.compare(f"{best.label} − ffn_window, cost of resetting every 64", gain_rnn, gain_ffn)

    def judge() -> Claim:
        evidence = (
            f"test bits/byte: ffn_window {fmt(ffn.stat(bpb))} vs {best.label} {fmt(best.stat(bpb))}; "
            f"resetting every 64 tokens costs ffn_window {fmt(gain_ffn)} and {best.label} {fmt(gain_rnn)} "
            "bits/byte"
        )
        if not context.above:
            verdict = "control failed"
        elif loss.below and reach.above:
            verdict = "supported"
        elif loss.above or reach.below:
            verdict = "not supported"  # the window model did better on either count
        else:
            verdict = "tie"
        return Claim("window", claim, verdict, test, control(), evidence, (loss, reach))

    return judge


seconds = train_value("wall_seconds")  # the wall clock the same tokens took: its own axis, not a budget


def _params(cell: Cell) -> int:
    return cell.experiment.parameters


def _big_window(text: dict[str, Cell], comparisons: Comparisons) -> Judge:
    claim = (
        "A bigger window needs parameters that are not shared, and does not buy what an RNN's shared "
        "weights buy"
    )
    test = (
        "parameters and test bits/byte at equal training tokens (the wide window trained as long as the "
        "rest, in updates): ffn_window at 8 and at its wide window against the best recurrent model"
    )
    narrow, wide, best = text.get("ffn_window"), text.get("ffn_window-wide"), _best_recurrent(text)
    if None in (narrow, wide, best) or wide.stat(bpb) is None or narrow.stat(bpb) is None:
        why = "the ffn_window, wide ffn_window or every recurrent text cell is missing or failed"
        return not_tested("big_window", claim, test, why)
    window = wide.experiment.overrides.get("model.window")
    cost = wide.stat(context_gain("16"))
    used = comparisons.compare(f"ffn_window ({window}): cost of resetting every 16", cost, 0.0)
    gap = comparisons.compare(
        f"{best.label} − ffn_window ({window}), bits/byte", best.stat(bpb), wide.stat(bpb)
    )

    def judge() -> Claim:
        control = (
            f"the wide window is used: resetting every 16 tokens (inside its {window}) costs it {fmt(cost)} "
            f"bits/byte ({passed(used.above, used)})"
        )
        evidence = "; ".join(
            f"{name}: {_params(c):,} parameters, {fmt(c.stat(bpb))} bits/byte, "
            f"{fmt(c.stat(seconds), 0)} s of training"
            for name, c in (("ffn_window (8)", narrow), (f"ffn_window ({window})", wide), (best.label, best))
        )
        if not used.above:
            verdict = "control failed"
        elif _params(wide) > _params(best) and gap.below:
            verdict = "supported"
        elif gap.above:
            verdict = "not supported"
        else:
            verdict = "tie"
        return Claim("big_window", claim, verdict, test, control, evidence, (gap,))

    return judge


def _bow(text: dict[str, Cell], comparisons: Comparisons) -> Judge:
    claim = "A bag of words loses order"
    test = (
        "test bits/byte at equal training tokens: bow against ffn_window, the same window and parameter "
        "budget"
    )
    ffn, bow = text.get("ffn_window"), text.get("bow")
    if ffn is None or bow is None or ffn.stat(bpb) is None or bow.stat(bpb) is None:
        return not_tested("bow", claim, test, "the ffn_window or bow text cell is missing or failed")
    context, control = _uses_context(bow, comparisons)
    gap = comparisons.compare("bow − ffn_window, bits/byte", bow.stat(bpb), ffn.stat(bpb))

    def judge() -> Claim:
        evidence = f"bow {fmt(bow.stat(bpb))} vs ffn_window {fmt(ffn.stat(bpb))} test bits/byte"
        if not context.above:
            verdict = "control failed"
        else:
            verdict = "supported" if gap.above else ("not supported" if gap.below else "tie")
        return Claim("bow", claim, verdict, test, control(), evidence, (gap,))

    return judge


def _vanish(text: dict[str, Cell], comparisons: Comparisons) -> Judge:
    claim = "Plain (tanh) RNN gradients vanish over long spans"
    rnn = text.get("rnn")
    if rnn is None or rnn.stat(log10_gradient_ratio) is None:
        why = "the tanh rnn text cell is missing, failed or has no gradient-flow report"
        return not_tested("vanish", claim, "gradient flow", why)
    k = len(rnn.results[0].gradient["rows"]) - 1 if rnn.results[0].gradient else "K"
    test = (
        f"log10 ‖∂ℓ_t/∂h_(t−{k})‖ / ‖∂ℓ_t/∂h_t‖ after training on text; vanished means below "
        f"{VANISHED_LOG10:g} (one-sample t-test)"
    )
    ratio = rnn.stat(log10_gradient_ratio)
    others = {f: text[f].stat(log10_gradient_ratio) for f in ("irnn", "lstm", "gru") if f in text}
    others = {f: s for f, s in others.items() if s is not None}
    longer = {
        f: comparisons.compare(f"{f} − tanh rnn, log10 ratio", s, ratio, digits=1) for f, s in others.items()
    }
    vanished = comparisons.compare(f"tanh rnn log10 ratio − ({VANISHED_LOG10:g})", ratio, VANISHED_LOG10, 1)

    def judge() -> Claim:
        kept = [f for f, d in longer.items() if d.above]
        control = "the diagnostic sees a gradient that survives longer: " + (
            ", ".join(f"{f} {fmt(others[f], 1)} ({longer[f].p_note})" for f in kept)
            + " above the tanh rnn (passed)"
            if kept
            else "no family above the tanh rnn (failed)"
        )
        evidence = f"tanh rnn {fmt(ratio, 1)}" + "".join(f"; {f} {fmt(s, 1)}" for f, s in others.items())
        also = [f for f, s in others.items() if s.mean < VANISHED_LOG10]
        if also:
            evidence += f"; also below {VANISHED_LOG10:g} on the mean: {', '.join(also)}"
        if not kept:
            verdict = "control failed"
        else:
            verdict = "supported" if vanished.below else ("not supported" if vanished.above else "tie")
        return Claim("vanish", claim, verdict, test, control, evidence, (vanished,))

    return judge


def _clipping(explode: dict[float, dict[float, Cell]], rnn: Cell | None, comparisons: Comparisons) -> Judge:
    claim = "Gradients can explode, and clipping tames the explosion"
    provoked = {g: row for g, row in explode.items() if g > 1 and 0.0 in row}
    clips = sorted({c for row in provoked.values() for c in row if c > 0})
    if not provoked or not clips:
        why = "the provoked explosion cells (a gain above 1, unclipped and clipped) are missing"
        return not_tested("clipping", claim, "the provoked explosion", why)
    e = next(iter(provoked.values()))[0.0].experiment.overrides
    gains = _listed(provoked)
    test = (
        f"tanh rnn provoked to explode (W_hh orthogonal × gain {gains}, SGD at lr {e.get('train.lr')}), "
        f"unclipped and clipped at {_listed(clips)}; a clip value fixes a gain when "
        "its runs stay finite and end below the unigram floor"
    )
    # The baseline is the same model unprovoked (gain 1, unclipped); without it, the text rnn
    baseline = explode.get(1.0, {}).get(0.0)
    reference, named = (baseline, "gain 1") if baseline is not None else (rnn, "the text tanh rnn")
    base = reference.stat(log10_max_grad_norm) if reference is not None else None
    higher = {
        g: comparisons.compare(
            f"gain {g:g} unclipped − {named}, log10 peak gradient norm",
            row[0.0].stat(log10_max_grad_norm),
            base,
            1,
        )
        for g, row in provoked.items()
    }
    # Fixed means trained, not only finite: every clipped run must stay finite and end below what counting
    # alone scores (Pascanu et al. 2013 count a run as rescued when it learns the task); one that stays
    # finite but above the unigram floor has had its explosion hidden, not fixed
    floor = {
        (g, c): comparisons.compare(
            f"gain {g:g} clip {c:g} − unigram floor, bits/byte", cell.stat(bpb), cell.stat(unigram_bpb)
        )
        for g, row in provoked.items()
        for c, cell in row.items()
        if c > 0
    }

    def exploded(g: float) -> bool:
        unclipped = provoked[g][0.0]
        return unclipped.diverged > 0 or (higher[g].above and higher[g].effect >= EXPLODED_LOG10)

    def fixed(g: float, c: float) -> bool:
        return provoked[g][c].diverged == 0 and floor[(g, c)].below

    def judge() -> Claim:
        shown = [g for g in provoked if exploded(g)]
        peaks = "; ".join(
            _peak_line(g, provoked[g][0.0], f"{named} 10^{fmt(base, 1)}", higher[g], g in shown)
            for g in provoked
        )
        control = (
            "the provocation explodes without clipping (peak gradient norm ≥ 10× or a divergence): "
            f"{peaks} ({'passed' if shown else 'failed'})"
        )
        fixes = {g: [c for c in provoked[g] if c > 0 and fixed(g, c)] for g in shown}
        evidence = "; ".join(_fix_line(g, provoked[g], fixes.get(g)) for g in provoked)
        unclear = any(
            provoked[g][c].diverged == 0 and not floor[(g, c)].counts for g in shown for c in provoked[g] if c
        )
        if not shown:
            verdict = "control failed"
        elif all(fixes[g] for g in shown):
            verdict = "supported"
        elif any(fixes[g] for g in shown):
            verdict = "partly supported"  # some exploding gains are fixed by no clip value tried
        else:
            verdict = "tie" if unclear else "not supported"
        effects = tuple(higher.values()) + tuple(floor.values())
        return Claim("clipping", claim, verdict, test, control, evidence, effects)

    return judge


def _fix_line(gain: float, row: dict[float, Cell], fixes: list[float] | None) -> str:
    """One gain's outcome: which clip values fixed it, and the unigram floor they were held to."""
    floor = stat(v for c in row.values() for v in c.values(unigram_bpb))  # every finished run of the gain
    unclipped = row[0.0]
    head = (
        f"gain {gain:g}: unclipped {unclipped.diverged}/{unclipped.seeds} diverged, "
        f"{fmt(unclipped.stat(bpb))} bits/byte"
    )
    if fixes is None:
        return head + " (no explosion to fix)"
    if not fixes:
        return head + f"; no clip value keeps every run finite and below the unigram floor {fmt(floor)}"
    return head + f"; fixed (finite, below the unigram floor {fmt(floor)}) by clip {_listed(fixes)}"


def _peak_line(gain: float, unclipped: Cell, baseline: str, d: Difference, exploded: bool) -> str:
    return (
        f"gain {gain:g} 10^{fmt(unclipped.stat(log10_max_grad_norm), 1)} vs {baseline} ({d.p_note}), "
        f"{unclipped.diverged}/{unclipped.seeds} diverged ({'exploded' if exploded else 'did not explode'})"
    )


def _listed(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _bidirectional(cloze: dict[str, Cell], comparisons: Comparisons) -> Judge:
    claim = "A bidirectional RNN uses the future context too (where the task allows it: filling a blank)"
    test = "bits per blank on the same cloze task: BiLSTM against a left-to-right LSTM"
    lstm, bi = cloze.get("lstm (left to right)"), cloze.get("bilstm")
    if lstm is None or bi is None or lstm.stat(bits_per_blank) is None or bi.stat(bits_per_blank) is None:
        return not_tested("bidirectional", claim, test, "a cloze cell is missing or failed")
    left, both, unigram = (
        lstm.stat(bits_per_blank),
        bi.stat(bits_per_blank),
        lstm.stat(unigram_bits_per_blank),
    )
    context = comparisons.compare("lstm − unigram, bits per blank", left, unigram)
    gap = comparisons.compare("bilstm − lstm, bits per blank", both, left)
    matched = cloze.get(CLOZE_MATCHED)  # as many parameters as the BiLSTM: its gain is not its size
    wide = matched.stat(bits_per_blank) if matched is not None else None
    gap_matched = (
        comparisons.compare("bilstm − size-matched lstm, bits per blank", both, wide) if wide else None
    )

    def judge() -> Claim:
        control = (
            f"the left-to-right LSTM beats the unigram ({fmt(left)} vs {fmt(unigram)} bits per blank): the "
            f"test sees context ({passed(context.below, context)})"
        )
        evidence = (
            f"bits per blank: bilstm {fmt(both)} vs lstm {fmt(left)}; top-1 {fmt(bi.stat(top1))} vs "
            f"{fmt(lstm.stat(top1))}"
        )
        gaps = (gap,) if gap_matched is None else (gap, gap_matched)
        if gap_matched is not None:
            evidence += f"; the size-matched lstm ({matched.experiment.parameters:,} parameters) {fmt(wide)}"
        if not context.below:
            verdict = "control failed"
        elif all(g.below for g in gaps):
            verdict = "supported"
        else:
            verdict = "not supported" if any(g.above for g in gaps) else "tie"
        return Claim("bidirectional", claim, verdict, test, control, evidence, gaps)

    return judge
