"""The verdicts on the text, window, gradient and cloze claims, each with its positive control.

Every sentence that judges a claim is computed here (and in ``probe_claims`` for the long-range claims),
so a rerun on another machine or budget can reverse a verdict; nothing in the report is written by hand.
A claim is judged only when its positive control shows that the test can see the effect at all;
otherwise its verdict is "control failed" and the evidence says why. Differences count by
``aggregate.RULE`` (gap larger than the sum of the two standard deviations).
"""

from __future__ import annotations

from dataclasses import dataclass

from seqlm.study.aggregate import Cell, above, below, by_label, fmt, separated, stat
from seqlm.study.results import (
    bits_per_blank,
    bpb,
    context_gain,
    log10_gradient_ratio,
    log10_max_grad_norm,
    loss_spikes,
    top1,
    unigram_bits_per_blank,
)

VANISHED_LOG10 = -2.0  # "vanished": the gradient 128 steps back is below 1% of the one at the loss
EXPLODED_LOG10 = 1.0  # "exploded": a peak gradient norm at least 10× the unprovoked tanh RNN's
RECURRENT = ("rnn", "irnn", "lstm", "gru")


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str  # supported | not supported | tie | control failed | not tested
    test: str  # what was compared, in a few words
    control: str  # the positive control and whether it passed
    evidence: str  # the numbers, mean ± sd over seeds


def not_tested(claim: str, test: str, why: str) -> Claim:
    return Claim(claim, "not tested", test, "—", why)


def text_claims(results) -> list[Claim]:
    text = by_label(results, "text")
    return [
        _window(text),
        _big_window(text),
        _bow(text),
        _vanish(text),
        _clipping(by_label(results, "explode"), text.get("rnn")),
    ]


def cloze_claims(results) -> list[Claim]:
    return [_bidirectional(by_label(results, "cloze"))]


def _best_recurrent(text: dict[str, Cell]) -> Cell | None:
    ranked = [c for f, c in text.items() if f in RECURRENT and c.stat(bpb) is not None]
    return min(ranked, key=lambda c: c.stat(bpb).mean) if ranked else None


def _uses_context(cell: Cell) -> tuple[bool, str]:
    """The context ablation's positive control: resetting the state every token costs the model bits."""
    cost = cell.stat(context_gain("1"))
    zero = stat([0.0])
    seen = cost is not None and above(cost, zero)
    return (
        seen,
        f"resetting every token costs {cell.label} {fmt(cost)} bits/byte ({'passed' if seen else 'failed'})",
    )


def _window(text: dict[str, Cell]) -> Claim:
    claim = "Fixed-window feed-forward models cannot hold long history"
    test = (
        "test bits/byte and the cost of resetting every 64 tokens: ffn_window (8 tokens) against the best "
        "recurrent model"
    )
    ffn, best = text.get("ffn_window"), _best_recurrent(text)
    if ffn is None or best is None or ffn.stat(bpb) is None:
        return not_tested(claim, test, "the ffn_window or every recurrent text cell is missing or failed")
    seen, control = _uses_context(best)
    gain_ffn, gain_rnn = ffn.stat(context_gain("64")), best.stat(context_gain("64"))
    evidence = (
        f"test bits/byte: ffn_window {fmt(ffn.stat(bpb))} vs {best.label} {fmt(best.stat(bpb))}; "
        f"resetting every 64 tokens costs ffn_window {fmt(gain_ffn)} and {best.label} {fmt(gain_rnn)} "
        "bits/byte"
    )
    if not seen:
        return Claim(claim, "control failed", test, control, evidence)
    if below(best.stat(bpb), ffn.stat(bpb)) and above(gain_rnn, gain_ffn):
        verdict = "supported"
    elif below(ffn.stat(bpb), best.stat(bpb)) or above(gain_ffn, gain_rnn):
        verdict = "not supported"  # the window model did better on either count
    else:
        verdict = "tie"
    return Claim(claim, verdict, test, control, evidence)


def _params(cell: Cell) -> int:
    return cell.experiment.parameters


def _big_window(text: dict[str, Cell]) -> Claim:
    claim = (
        "A bigger window needs parameters that are not shared, and does not buy what an RNN's shared "
        "weights buy"
    )
    test = (
        "parameters and test bits/byte: ffn_window at 8 and at its wide window against the best "
        "recurrent model"
    )
    narrow, wide, best = text.get("ffn_window"), text.get("ffn_window-wide"), _best_recurrent(text)
    if None in (narrow, wide, best) or wide.stat(bpb) is None or narrow.stat(bpb) is None:
        return not_tested(
            claim, test, "the ffn_window, wide ffn_window or every recurrent text cell is missing or failed"
        )
    window = wide.experiment.overrides.get("model.window")
    cost = wide.stat(context_gain("16"))
    seen = above(cost, stat([0.0]))
    control = (
        f"the wide window is used: resetting every 16 tokens (inside its {window}) costs it {fmt(cost)} "
        f"bits/byte ({'passed' if seen else 'failed'})"
    )
    evidence = (
        f"ffn_window (8): {_params(narrow):,} parameters, {fmt(narrow.stat(bpb))} bits/byte; ffn_window "
        f"({window}): "
        f"{_params(wide):,} parameters, {fmt(wide.stat(bpb))}; {best.label}: {_params(best):,} parameters, "
        f"{fmt(best.stat(bpb))}"
    )
    if not seen:
        return Claim(claim, "control failed", test, control, evidence)
    more = _params(wide) > _params(best)
    if more and below(best.stat(bpb), wide.stat(bpb)):
        verdict = "supported"
    elif below(wide.stat(bpb), best.stat(bpb)):
        verdict = "not supported"
    else:
        verdict = "tie"
    return Claim(claim, verdict, test, control, evidence)


def _bow(text: dict[str, Cell]) -> Claim:
    claim = "A bag of words loses order"
    test = "test bits/byte: bow against ffn_window, the same window and parameter budget"
    ffn, bow = text.get("ffn_window"), text.get("bow")
    if ffn is None or bow is None or ffn.stat(bpb) is None or bow.stat(bpb) is None:
        return not_tested(claim, test, "the ffn_window or bow text cell is missing or failed")
    seen, control = _uses_context(bow)
    evidence = f"bow {fmt(bow.stat(bpb))} vs ffn_window {fmt(ffn.stat(bpb))} test bits/byte"
    if not seen:
        return Claim(claim, "control failed", test, control, evidence)
    verdict = (
        "supported"
        if above(bow.stat(bpb), ffn.stat(bpb))
        else ("not supported" if separated(bow.stat(bpb), ffn.stat(bpb)) else "tie")
    )
    return Claim(claim, verdict, test, control, evidence)


def _vanish(text: dict[str, Cell]) -> Claim:
    claim = "Plain (tanh) RNN gradients vanish over long spans"
    rnn = text.get("rnn")
    if rnn is None or rnn.stat(log10_gradient_ratio) is None:
        return not_tested(
            claim, "gradient flow", "the tanh rnn text cell is missing, failed or has no gradient-flow report"
        )
    k = len(rnn.results[0].gradient["rows"]) - 1 if rnn.results[0].gradient else "K"
    test = (
        f"log10 ‖∂ℓ_t/∂h_(t−{k})‖ / ‖∂ℓ_t/∂h_t‖ after training on text; vanished means below "
        f"{VANISHED_LOG10:g}"
    )
    ratio = rnn.stat(log10_gradient_ratio)
    others = {f: text[f].stat(log10_gradient_ratio) for f in ("irnn", "lstm", "gru") if f in text}
    others = {f: s for f, s in others.items() if s is not None}
    kept = [f for f, s in others.items() if above(s, ratio)]
    control = "the diagnostic sees a gradient that survives longer: " + (
        ", ".join(f"{f} {fmt(others[f], 1)}" for f in kept) + " above the tanh rnn (passed)"
        if kept
        else "no family above the tanh rnn (failed)"
    )
    evidence = f"tanh rnn {fmt(ratio, 1)}" + "".join(f"; {f} {fmt(s, 1)}" for f, s in others.items())
    if not kept:
        return Claim(claim, "control failed", test, control, evidence)
    verdict = "supported" if ratio.mean + ratio.sd < VANISHED_LOG10 else "not supported"
    return Claim(claim, verdict, test, control, evidence)


def _clipping(explode: dict[str, Cell], reference: Cell | None) -> Claim:
    claim = "Gradients can explode, and clipping tames the explosion"
    clipped, unclipped = explode.get("clipped"), explode.get("unclipped")
    if clipped is None or unclipped is None:
        return not_tested(claim, "the provoked explosion", "the explosion cells are missing")
    e = unclipped.experiment.overrides
    test = (
        f"tanh rnn provoked to explode (W_hh orthogonal × {e.get('model.recurrent_gain')}, SGD at lr "
        f"{e.get('train.lr')}), trained with and without clipping at "
        f"{clipped.experiment.overrides.get('train.grad_clip')}"
    )
    peak = unclipped.stat(log10_max_grad_norm)
    base = reference.stat(log10_max_grad_norm) if reference is not None else None
    exploded = unclipped.diverged > 0 or (
        peak is not None
        and base is not None
        and above(peak, base)
        and peak.mean - base.mean >= EXPLODED_LOG10
    )
    control = (
        f"the provocation explodes without clipping: peak gradient norm 10^{fmt(peak, 1)} vs "
        f"10^{fmt(base, 1)} for "
        f"the unprovoked tanh rnn, {unclipped.diverged}/{unclipped.seeds} diverged "
        f"({'passed' if exploded else 'failed'})"
    )
    rows = []
    for cell in (clipped, unclipped):
        rows.append(
            f"{cell.label}: {cell.diverged}/{cell.seeds} diverged, {fmt(cell.stat(loss_spikes), 1)} loss "
            "spikes, "
            f"test bits/byte {fmt(cell.stat(bpb))}"
        )
    evidence = "; ".join(rows)
    if not exploded:
        return Claim(claim, "control failed", test, control, evidence)
    fewer = clipped.diverged < unclipped.diverged
    lower = (
        below(clipped.stat(bpb), unclipped.stat(bpb))
        if unclipped.stat(bpb)
        else clipped.stat(bpb) is not None
    )
    if fewer or lower:
        verdict = "supported"
    elif above(clipped.stat(bpb), unclipped.stat(bpb)) or clipped.diverged > unclipped.diverged:
        verdict = "not supported"
    else:
        verdict = "tie"
    return Claim(claim, verdict, test, control, evidence)


def _bidirectional(cloze: dict[str, Cell]) -> Claim:
    claim = "A bidirectional RNN uses the future context too (where the task allows it: filling a blank)"
    test = "bits per blank on the same cloze task: BiLSTM against a left-to-right LSTM"
    lstm, bi = cloze.get("lstm (left to right)"), cloze.get("bilstm")
    if lstm is None or bi is None or lstm.stat(bits_per_blank) is None or bi.stat(bits_per_blank) is None:
        return not_tested(claim, test, "a cloze cell is missing or failed")
    unigram = lstm.stat(unigram_bits_per_blank)
    seen = below(lstm.stat(bits_per_blank), unigram)
    control = (
        f"the left-to-right LSTM beats the unigram ({fmt(lstm.stat(bits_per_blank))} vs {fmt(unigram)} "
        "bits per "
        f"blank): the test sees context ({'passed' if seen else 'failed'})"
    )
    evidence = (
        f"bits per blank: bilstm {fmt(bi.stat(bits_per_blank))} vs lstm {fmt(lstm.stat(bits_per_blank))}; "
        f"top-1 {fmt(bi.stat(top1))} vs {fmt(lstm.stat(top1))}"
    )
    if not seen:
        return Claim(claim, "control failed", test, control, evidence)
    b, left = bi.stat(bits_per_blank), lstm.stat(bits_per_blank)
    verdict = "supported" if below(b, left) else ("not supported" if above(b, left) else "tie")
    return Claim(claim, verdict, test, control, evidence)
