"""The report's "Limitations and the literature" section, written from the numbers like the rest of it.

Every claim of the study is a published one; LITERATURE says where each was shown and what was found.
Where this run's verdict is not "supported", the section says so and names the likely reasons from what
the run measured: a failed control, an effect whose interval holds zero at this many seeds, runs that all
stopped at their budget, the models' size, failed seeds. Then the caveats every verdict shares: the CPU
budget, the number of seeds and the correction, whether the tuning seeds are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqlm.study import stats, tuning
from seqlm.study.aggregate import ALPHA, Comparisons, by_label, cells, min_seeds, pvalue, stat
from seqlm.study.claims import Claim
from seqlm.study.plan import CLOZE_MATCHED, PROBE_LR, SEED
from seqlm.study.results import bigram_bpb, bpb, ok


@dataclass(frozen=True)
class Published:
    short: str  # the claim and its source in a few words
    paper: str
    found: str  # what the paper showed, in a clause
    group: str  # the study's experiments that test it


LITERATURE = {
    "window": Published(
        "the fixed window (Bengio et al. 2003)",
        "Bengio, Ducharme, Vincent & Jauvin (2003), *A Neural Probabilistic Language Model*",
        "the fixed-window model conditions on its n − 1 preceding words only; history beyond them is lost",
        "text",
    ),
    "big_window": Published(
        "the wide window's parameters (Bengio et al. 2003)",
        "Bengio, Ducharme, Vincent & Jauvin (2003)",
        "the fixed-window model's hidden layer reads the concatenated window, so its weights grow with it",
        "text",
    ),
    "bow": Published(
        "the bag of words",
        "by construction (no paper needed)",
        "a sum of embeddings is the same for every order of its words",
        "text",
    ),
    "vanish": Published(
        "vanishing gradients (Bengio et al. 1994)",
        "Bengio, Simard & Frasconi (1994), *Learning long-term dependencies with gradient descent is "
        "difficult*",
        "in a recurrent net that stores information robustly, gradients through time shrink exponentially",
        "text",
    ),
    "clipping": Published(
        "explosion and clipping (Pascanu et al. 2013)",
        "Pascanu, Mikolov & Bengio (2013), *On the difficulty of training recurrent neural networks*",
        "gradients can explode, and clipping their norm keeps training stable",
        "explode",
    ),
    "irnn": Published(
        "the IRNN (Le et al. 2015)",
        "Le, Jaitly & Hinton (2015), *A Simple Way to Initialize Recurrent Networks of Rectified Linear "
        "Units*",
        "a ReLU RNN initialised at the identity learns long-range toy problems (the adding problem) and "
        "pixel-by-pixel MNIST about as well as an LSTM",
        "probe",
    ),
    "gated": Published(
        "gated cells (Hochreiter & Schmidhuber 1997)",
        "Hochreiter & Schmidhuber (1997), *Long Short-Term Memory*",
        "the LSTM bridges time lags of over 1,000 steps where a plain RNN fails",
        "probe",
    ),
    "bidirectional": Published(
        "the bidirectional RNN (Schuster & Paliwal 1997)",
        "Schuster & Paliwal (1997), *Bidirectional recurrent neural networks*",
        "reading the future as well as the past improves prediction where both are available",
        "cloze",
    ),
}
BUDGETS = {"max_steps": "its step cap", "max_minutes": "its time budget"}  # train metrics' stopped_by


def section(claims: list[Claim], results, options, comparisons: Comparisons) -> list[str]:
    differ = [c for c in claims if c.key in LITERATURE and c.verdict != "supported"]
    agree = [LITERATURE[c.key].short for c in claims if c.key in LITERATURE and c.verdict == "supported"]
    lines = [
        "## Limitations and the literature",
        "",
        "Each claim is a published result. Where this run's verdict is not *supported* it differs from the "
        "paper, and the line says why as far as the run can tell: the reasons are read off its own "
        "measurements, like every other sentence here.",
        "",
    ]
    for c in differ:
        lit = LITERATURE[c.key]
        reasons = _reasons(c, results, comparisons)
        lines.append(
            f"- **{c.claim}**: *{c.verdict}* here; {lit.paper}: {lit.found}. Likely reasons: "
            + ("; ".join(reasons) if reasons else "none the run measured")
            + "."
        )
    if agree:
        lines += ([""] if differ else []) + ["Agree with the literature: " + ", ".join(agree) + "."]
    return lines + ["", *_caveats(results, options, comparisons)]


def _reasons(claim: Claim, results, comparisons: Comparisons) -> list[str]:
    if claim.verdict == "not tested":
        return [f"the test did not run ({claim.evidence})"]
    out = []
    if claim.verdict == "control failed":
        out.append(f"its positive control failed ({claim.control}), so the test could not see the effect")
    if claim.verdict == "not supported":
        out.append("a difference the test can see goes against the claim (the effect column)")
    for d in claim.effects:
        interval = f"[{d.low:+.{d.digits}f}, {d.high:+.{d.digits}f}]"
        if d.p is None:
            out.append(f"{d.name}: no test ({d.untested})")
        elif d.counts:
            continue
        elif d.low <= 0 <= d.high:
            out.append(
                f"{d.name}: its 95% interval {interval} includes 0, so at these seeds the test cannot tell "
                "the effect from none"
            )
        else:
            out.append(
                f"{d.name}: its 95% interval {interval} excludes 0 (p {pvalue(d.p)}), but not after "
                f"Holm's correction over the claim's {comparisons.family_size(d)} tests "
                f"(p_Holm {pvalue(d.adjusted)}): more seeds could tell"
            )
    return out + _measured(LITERATURE[claim.key].group, results)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _measured(group: str, results) -> list[str]:
    """What the group's runs say about their own budget, size and failures."""
    runs = [r for r in results if r.experiment.group == group]
    done = [r for r in runs if ok(r) and r.train]
    out = []
    capped = [r for r in done if r.train.get("stopped_by") in BUDGETS]
    if done and len(capped) == len(done):
        steps = [int(r.train["steps"]) for r in done if r.train.get("steps") is not None]
        why = BUDGETS[capped[0].train["stopped_by"]]
        span = f"{_span(steps)} updates" if steps else "its budget"
        out.append(
            f"every finished {group} run stopped at {why} ({span}), none by converging: the verdict measures "
            "what a family learns within this budget"
        )
    elif capped:
        out.append(f"{len(capped)} of {len(done)} finished {group} runs stopped at their budget")
    sizes = [r.experiment.parameters for r in runs if r.experiment.parameters]
    if sizes:
        out.append(f"models of {_span(sizes)} parameters")
    failed = len(runs) - len(done)
    if failed:
        out.append(f"{failed} of {len(runs)} {group} runs failed or diverged")
    return out


def _caveats(results, options, comparisons: Comparisons) -> list[str]:
    n = min_seeds(results)
    seeds = sorted({r.experiment.seed for r in results})
    m = max((comparisons.family_size(d) for d in comparisons.tested), default=1)
    lines = [
        f"- **Budget.** Every run is a small model trained on {'a GPU' if options.gpu else 'CPU cores'} "
        f"for a fixed budget (text {options.text_tokens:,} tokens, probe {options.probe_steps:,} updates, "
        f"explosion {options.explode_minutes:g} min, cloze {options.cloze_minutes:g} min), far smaller and "
        "shorter than the papers' models and training: a verdict here holds at this budget.",
    ]
    lines += _text_floor(results, options)
    if n >= 2:
        t = stats.t_quantile(0.975, n - 1)
        lines.append(
            f"- **Seeds.** {n} seeds per cell: a mean's 95% interval is ±{t:.2f} sd/√{n}, and Holm's "
            f"correction within a claim of up to {m} tests asks its smallest p to fall below "
            f"{ALPHA / max(m, 1):.4f}: a real but small effect can read *tie*."
        )
    else:
        lines.append(
            "- **Seeds.** One seed per cell: no test is possible, a difference counts by its sign alone and "
            "every verdict is provisional."
        )
    if cells(results, "probe"):
        lines.append(_tuning(options, seeds))
    cloze = by_label(results, "cloze")
    if "bilstm" in cloze and "lstm (left to right)" in cloze:
        ratio = cloze["bilstm"].experiment.parameters / max(
            cloze["lstm (left to right)"].experiment.parameters, 1
        )
        if ratio > 1.15 and CLOZE_MATCHED not in cloze:  # beyond the 15% the text families are matched to
            lines.append(
                f"- **Size.** The BiLSTM has {ratio - 1:.0%} more parameters than its left-to-right control: "
                "part of its gain may be its size."
            )
    return lines


def _text_floor(results, options) -> list[str]:
    """A line when no text family beats the add-one bigram: the text claims then compare models that have
    not yet learned what counting token pairs knows, and a verdict among them says little about the
    families at convergence."""
    text = by_label(results, "text")
    means = {label: s.mean for label, c in text.items() if (s := c.stat(bpb)) is not None}
    floor = stat(bigram_bpb(r) for c in text.values() for r in c.results)
    if not means or floor is None:
        return []
    best = min(means, key=means.get)
    if means[best] < floor.mean:
        return []
    return [
        f"- **Text budget.** No text family beats the add-one bigram at {options.text_tokens:,} training "
        f"tokens (the best, {best}, {means[best]:.3f} bits/byte against the bigram's {floor.mean:.3f}): the "
        "text claims compare models still short of what counting token pairs knows, so their verdicts say "
        "how fast each family starts, not what it reaches; `--text-tokens` trains them longer."
    ]


def _tuning(options, seeds) -> str:
    """Which rates the probes ran at, and whether they were chosen on seeds the report also shows."""
    if not options.probe_lrs:
        shared = SEED in seeds
        return (
            f"- **Tuning.** Not tuned: every probe family trained at `PROBE_LR` ({PROBE_LR:g}), chosen "
            f"before the study by a sweep on the valid split with `base.seed` {SEED}"
            + (
                ", also a reported seed: the rate was chosen on runs the probe verdicts count, which "
                "flatters them. `seqlm study --tune` chooses a rate per family on seeds kept apart."
                if shared
                else "; no reported seed is among them."
            )
        )
    shared = sorted(set(tuning.TUNING_SEEDS) & set(seeds))
    rates = ", ".join(f"{family} {lr:g}" for family, lr in options.probe_lrs)
    return (
        f"- **Tuning.** Each probe family trained at the rate `seqlm study --tune` chose ({rates}) from "
        f"{', '.join(f'{lr:g}' for lr in tuning.LR_GRID)} at delay {tuning.TUNING_DELAY} by seeds solved and "
        f"updates to solve on the valid split, with `base.seed` {', '.join(map(str, tuning.TUNING_SEEDS))}; "
        + (
            f"{', '.join(map(str, shared))} is also a reported seed, so tuning is not kept apart."
            if shared
            else "no reported seed is among them: tuning is kept apart from the reported seeds."
        )
    )
