"""docs/study.md, written by `seqlm study` from the experiments' own reports.

Owns the markdown: provenance (machine, commit, budgets, load), the claims table, the text and copy-probe
tables, the figures' places and captions, and how to reproduce the study. The verdicts come from
``claims`` and the PNGs from ``figures``; nothing here is written by hand.
"""

from __future__ import annotations

from pathlib import Path

from seqlm.core import atomic
from seqlm.study import figures as plots
from seqlm.study.claims import claims, fmt, longest_delay_verdict, reach
from seqlm.study.results import bpb, ok, probe_grid

FIGURES = "study"  # docs/study/*.png


def write(docs: Path, results, machine: dict, options) -> Path:
    """docs/study.md and its figures under docs/study/; the path of the markdown."""
    drawn = plots.draw(results, docs / FIGURES)
    path = docs / "study.md"
    atomic.write_text(path, render(results, machine, options, {k: v for k, v in drawn.items() if v}))
    return path


def render(results, machine: dict, options, figures: dict[str, bool]) -> str:
    lines = [
        "# The sequence-model study",
        "",
        (
            "Written by `seqlm study` (`make study`) from the experiments' own reports; do not edit by hand, "
            "rerun it."
        ),
        "",
        _provenance(results, machine, options),
        "",
        "## The seed's argument, claim by claim",
        "",
        "| claim | verdict | evidence |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in claims(results)]
    lines += ["", *_text_section(results, figures), "", *_probe_section(results, figures), ""]
    lines += _footer(options, machine)
    return "\n".join(lines) + "\n"


def _provenance(results, machine: dict, options) -> str:
    failed = sum(r.status != "success" for r in results)
    dirty = " with uncommitted changes" if machine.get("dirty") else ""
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    return (
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores{gpu}, {machine.get('memory') or '? GiB'} "
        "RAM; "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}.  \n"
        f"**Commit:** `{machine['commit'][:12]}`{dirty}. "
        f"**Date:** {machine['started']} to {machine['finished']} (UTC).  \n"
        f"**Wall-clock:** {machine['wall_minutes']:.1f} minutes for {len(results)} experiments "
        f"({failed} failed), queueing, training, evaluation and this report; {options.jobs} experiments at a "
        "time, one thread each. "
        f"Budgets: {options.text_minutes:g} min of training per text experiment, {options.probe_minutes:g} "
        "min "
        f"per probe experiment, no step or epoch limit, no early stopping.{_load(machine, options)}  \n"
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
        (
            "Each family trained for the same wall-clock minutes on the same corpus and tokenizer, with a "
            "hidden "
            "size chosen so its parameter count is within 15% of the LSTM's. Test metrics use the "
            "carried-state "
            "protocol of the evaluate stage."
        ),
        "",
        (
            "| family | DVC experiment | parameters | test bits/byte | word perplexity | tokens/s | steps | "
            "stopped by | fraction of steps clipped | diverged? |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in text:
        lines.append(_row(r, [fmt(bpb(r)), fmt(r.eval.get("word_perplexity") if ok(r) else None, 1)]))
    lines.append("")
    if figures.get("gradient_flow"):
        lines += [
            f"![Gradient flow per family]({FIGURES}/gradient_flow.png)",
            "",
            (
                "Mean ‖∂ℓ_t/∂h_(t−k)‖ over k steps back, on the valid split after training (window models: 0 "
                "for every k > 0, not drawn)."
            ),
            "",
        ]
    if figures.get("context_ablation"):
        lines += [
            f"![Context ablation per family]({FIGURES}/context_ablation.png)",
            "",
            "Test bits per byte when the state is reset every K tokens; ∞ is the carried state.",
            "",
        ]
    return lines


def _row(r, metrics: list[str]) -> str:
    e, t = r.experiment, r.train or {}
    parameters = t.get("num_parameters", e.parameters)
    diverged = "yes" if r.diverged else ("failed: " + r.note if r.status != "success" else "no")
    return (
        f"| {e.family} | `{e.name}` | {parameters:,} | {' | '.join(metrics)} | "
        f"{fmt(t.get('tokens_per_s'), 0)} | {t.get('steps', '—')} | {t.get('stopped_by', '—')} | "
        f"{fmt(t.get('fraction_clipped'))} | {diverged} |"
    )


def _probe_section(results, figures: dict[str, bool]) -> list[str]:
    grid = probe_grid(results)
    if not grid:
        return []
    delays = sorted({d for probes in grid.values() for d in probes})
    sample = next((r for probes in grid.values() for r in probes.values() if ok(r)), None)
    chance = sample.eval["recall_chance"] if sample else None
    lines = [
        "## Copy probe: how far back does each family remember?",
        "",
        (
            "`data.source: synthetic:copy`: each line is a key (one of 8 letters), `data.delay` filler dots, "
            "the cue `?` and the key again (`A.....?A`); with `tokenizer.type: char` every symbol is one "
            "token. "
            "Recall accuracy is measured at the key's second appearance in the test stream: the prediction "
            f"counts when the key is the most likely of the 8 (chance {fmt(chance)}). A family *remembers* a "
            f"delay when it recalls at least halfway from chance to perfect."
        ),
        "",
        "| family | " + " | ".join(f"delay {d}" for d in delays) + " | remembers up to |",
        "| --- | " + " | ".join("---:" for _ in delays) + " | ---: |",
    ]
    for family, probes in grid.items():
        cells = [_recall_cell(probes.get(d)) for d in delays]
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {reach(probes) or 'none'} |")
    lines += ["", longest_delay_verdict(grid), "", _updates(grid, delays), ""]
    if figures.get("copy_recall"):
        lines += [f"![Copy-probe recall against delay]({FIGURES}/copy_recall.png)", ""]
    if figures.get("probe_gradient_flow"):
        lines += [
            f"![Gradient flow on the copy probe]({FIGURES}/probe_gradient_flow.png)",
            "",
            "The dashed line is the recall span: how far back the gradient must reach the key.",
            "",
        ]
    return lines + _probe_rows(grid, delays)


def _probe_rows(grid: dict, delays: list[int]) -> list[str]:
    lines = [
        (
            "| family | delay | DVC experiment | parameters | recall bits | test bits/byte | tokens/s | "
            "steps | "
            "stopped by | fraction of steps clipped | diverged? |"
        ),
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for family, probes in grid.items():
        for d in delays:
            r = probes.get(d)
            if r is not None:
                row = _row(r, [fmt(r.eval.get("recall_bits") if ok(r) else None), fmt(bpb(r))])
                lines.append(row.replace(f"| {family} |", f"| {family} | {d} |", 1))
    return lines


def _updates(grid: dict, delays: list[int]) -> str:
    """Equal minutes are not equal updates: the step counts behind each delay's comparison."""
    parts = []
    for d in delays:
        steps = {
            f: probes[d].train["steps"]
            for f, probes in grid.items()
            if d in probes and ok(probes[d]) and probes[d].train
        }
        if len(steps) > 1:
            ratio = max(steps.values()) / max(min(steps.values()), 1)
            parts.append(
                f"delay {d}: " + ", ".join(f"{f} {n:,}" for f, n in steps.items()) + f" ({ratio:.1f}× apart)"
            )
    if not parts:
        return ""
    return (
        "Equal minutes are not equal updates: the families' CPU kernels differ in speed, so within the same "
        "budget they trained for different numbers of steps ("
        + "; ".join(parts)
        + "). A family that did not "
        "learn a delay in fewer steps may yet learn it in more."
    )


def _recall_cell(r) -> str:
    if r is None:
        return ""
    if not ok(r):
        return "diverged" if r.diverged else "failed"
    return f"{r.eval['recall_accuracy']:.2f} (n={r.eval['recall_positions']})"


def _footer(options, machine: dict) -> list[str]:
    commit = machine["commit"][:7]
    return [
        "## Reproduce and extend",
        "",
        "```bash",
        "make study                     # or: seqlm study; prints the dvc commands with --dry-run",
        (
            f"dvc exp show --rev {commit}    # these experiments, params and metrics "
            f"(plain `dvc exp show` while HEAD is {commit})"
        ),
        "make ui                        # MLflow: experiment " + options.name + ", one run per experiment",
        "```",
        "",
        (
            "Each experiment is `dvc exp run --queue -S …` up to the evaluate stage (study models are not "
            f"registered, so they never meet the champion gate), run {options.jobs} at a time with "
            f"`dvc queue start -j {options.jobs}` (one thread each: `OMP_NUM_THREADS=1`). "
            "Add a family to `FAMILIES` in `src/seqlm/study/plan.py`, or change budgets and delays with "
            "`seqlm study --text-minutes … --probe-minutes … --delays …`."
        ),
    ]
