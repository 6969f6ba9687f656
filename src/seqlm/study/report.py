"""docs/study.md, written by `seqlm study` from the experiments' own reports.

Owns the markdown: provenance (machine, commit, the budget estimated and spent, load, the verdict rule),
the claims table (verdict, positive control, mean ± sd, the effect with its interval and adjusted p), one
section per group with its tables and figures, every experiment's row, and how to reproduce the study. The
verdicts come from ``claims`` and ``probe_claims``, the limitations from ``limitations``, the PNGs from
``figures``; nothing here is written by hand.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from seqlm.core import atomic
from seqlm.study import budget, limitations, tuning
from seqlm.study import figures as plots
from seqlm.study.aggregate import (
    RULE,
    Comparisons,
    by_label,
    cells,
    explode_grid,
    fmt,
    min_seeds,
    probe_grid,
    stat,
)
from seqlm.study.claims import Claim, cloze_claims, text_claims
from seqlm.study.plan import SEED, SOLVED_RECALL, Options, preset
from seqlm.study.probe_claims import SOLVES, cell_text, control, probe_claims, reach, updates_line
from seqlm.study.results import (
    bigram_bpb,
    bits_per_blank,
    bpb,
    context_gain,
    log10_gradient_ratio,
    log10_max_grad_norm,
    loss_spikes,
    minutes,
    ok,
    top1,
    top5,
    train_value,
    unigram_bits_per_blank,
    unigram_bpb,
)
from seqlm.study.shard_records import describe as describe_shards

FIGURES = "study"  # docs/study/*.png
CAPTIONS = {
    "gradient_flow": "Mean ‖∂ℓ_t/∂h_(t−k)‖ over k steps back, on the valid split after training, one line "
    "per seed (window models: 0 for every k > 0).",
    "context_ablation": "Test bits per byte when the state is reset every K tokens; ∞ is the carried state. "
    "The line joins the seeds' means; each dot is one seed.",
    "copy_recall": "Recall at the key's second appearance: each seed a dot, the mean with its 95% "
    "interval (t, over seeds) as a bar; a run stops once its valid recall reaches the threshold, or at "
    "the cap.",
    "explosion": "Against the gain (W_hh's spectral radius), one line per clip threshold: the peak "
    "gradient norm measured before clipping (so the clipped runs show what clipping caught) and the test "
    "bits per byte, each seed a dot, the line through the means; x marks a diverged seed, the dashed line "
    "the unigram floor.",
}


def write(docs: Path, results, machine: dict, options) -> Path:
    """docs/study.md and its figures under docs/study/; the path of the markdown."""
    drawn = plots.draw(results, docs / FIGURES)
    path = docs / "study.md"
    atomic.write_text(path, render(results, machine, options, {k: v for k, v in drawn.items() if v}))
    return path


def all_claims(results) -> tuple[list[Claim], Comparisons]:
    """Every verdict, judged after the p-values of all the table's comparisons are adjusted together."""
    comparisons = Comparisons()
    judges = [
        *text_claims(results, comparisons),
        *probe_claims(results, comparisons),
        *cloze_claims(results, comparisons),
    ]
    comparisons.adjust()
    return [judge() for judge in judges], comparisons


def render(results, machine: dict, options, figures: dict[str, bool]) -> str:
    seeds = min_seeds(results)
    claims, comparisons = all_claims(results)
    lines = [
        "# The sequence-model study",
        "",
        "Written by `seqlm study` (`make study`) from the experiments' own reports; do not edit by hand, "
        "rerun it.",
        "",
        _provenance(results, machine, options),
        "",
        "## The classic argument, claim by claim",
        "",
        _rule(seeds, comparisons),
        "",
        "| claim | verdict | test | positive control | evidence | effect [95% CI], Holm-adjusted p |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c.claim} | **{c.verdict}** | {c.test} | {c.control} | {c.evidence} | {c.effect} |"
        for c in claims
    ]
    probe = partial(_probe_section, options=options)
    for section in (_text_section, probe, _explode_section, _cloze_section):
        lines += ["", *section(results, figures)]
    lines += ["", *limitations.section(claims, results, options, comparisons)]
    lines += ["", *_experiments(results), "", *_footer(options, machine)]
    return "\n".join(lines) + "\n"


def _rule(seeds: int, comparisons: Comparisons) -> str:
    families = {d.family for d in comparisons.tested}
    tests = (
        f" This table makes {len(comparisons.tested)} tests in {len(families)} claims."
        if comparisons.tested
        else ""
    )
    one = (
        " **One seed: no spread and no test (a difference counts by its sign alone), so every verdict is "
        "provisional.**"
    )
    return (
        f"**Verdict rule:** {RULE}.{tests} Each claim is judged only when its *positive control* shows the "
        "test can see the effect; otherwise it reads **control failed**. Numbers are mean ± sd over "
        f"{seeds} seed{'s' if seeds != 1 else ''} (`base.seed` {SEED}, {SEED + 1}, …; a seed changes the "
        "split, the tokenizer's sampling, the initialisation and the batch order)."
        + (one if seeds < 2 else "")
    )


def _provenance(results, machine: dict, options) -> str:
    failed = sum(r.status != "success" for r in results)
    dirty = " with uncommitted changes" if machine.get("dirty") else ""
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    experiments = [r.experiment for r in results]
    return (
        f"**Machine:** {machine['cpu']}, {machine['cores']} cores{gpu}, "
        f"{machine.get('memory') or '? GiB'} RAM; "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}.  \n"
        f"{describe_shards(machine)}"
        f"**Commit:** `{machine['commit'][:12]}`{dirty}. "
        f"**Date:** {machine['started']} to {machine['finished']} (UTC).  \n"
        f"**Budget:** preset `{options.preset}`{_changed(options)}, estimated before queueing at "
        f"{budget.summary(experiments, options, preset(options.preset))}; "
        f"spent {machine['wall_minutes']:.1f} minutes for {len(results)} experiments ({failed} failed or "
        "diverged), "
        f"{options.jobs} at a time, one thread each. Per experiment: text {options.text_tokens:,} training "
        f"tokens (every family alike), probe {options.probe_steps:,} updates (neither with a minute limit), "
        f"explosion {options.explode_minutes:g} min, cloze {options.cloze_minutes:g} min; no early "
        f"stopping.{_load(machine, options)}  \n"
        f"**Tracking:** MLflow experiment `{options.name}`, runs tagged `seqlm.study={options.name}`, "
        f"`seqlm.study.stamp={options.stamp}`, `seqlm.study.cell` and `seqlm.study.seed`; DVC experiments "
        f"`<cell>-s<i>-{options.stamp}`."
    )


def _changed(options) -> str:
    flags = budget.changed(options, preset(options.preset))
    return f" with `{flags}` (so not held to the preset's limit)" if flags else ""


def _load(machine: dict, options) -> str:
    mean, peak = machine.get("load_mean"), machine.get("load_max")
    if mean is None:
        return ""
    busy = (
        "other work competed for the cores, so tokens/s and minutes are worse than on a quiet machine"
        if mean > options.jobs + 0.5
        else "the study had the cores to itself"
    )
    return (
        f" Load average while the experiments ran: mean {mean:.1f}, peak {peak:.1f}, against {options.jobs} "
        f"for the study's own experiments: {busy}."
    )


def _figure(figures: dict, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({FIGURES}/{name}.png)", "", CAPTIONS[name], ""] if figures.get(name) else []


def _text_section(results, figures) -> list[str]:
    text = by_label(results, "text")
    if not text:
        return []
    o = next(iter(text.values())).experiment.overrides
    steps, per_step = o.get("train.max_steps"), o.get("train.batch_size", 0) * o.get("train.bptt", 0)
    lines = [
        "## Text: one corpus, equal tokens, matched sizes (the wide window excepted)",
        "",
        f"Each family trained on the same tokens ({steps:,} updates of {per_step:,} tokens: every family "
        "predicts every position of its window, so equal updates are equal tokens) from the same corpus "
        "and tokenizer, with a hidden size that puts its parameters within 15% of the LSTM's; the wide "
        "ffn_window keeps the narrow one's hidden size, so its extra parameters are the price of its window. "
        "Wall clock is not a budget but its own column: what the same tokens cost each family on this "
        "machine. Test metrics use the evaluate stage's carried-state protocol; the unigram and bigram rows "
        "are the add-one n-gram models of the train tokens, scored on the same test text (the floors a model "
        "must beat).",
        "",
        "| family | parameters | test bits/byte | reset every 64: cost | log10 gradient ratio | updates | "
        "training tokens | wall-clock seconds | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, c in text.items():
        window = c.experiment.overrides.get("model.window")
        name = f"{label} (window {window})" if label.startswith("ffn_window") and window else label
        lines.append(
            f"| {name} | {c.experiment.parameters:,} | {_cell(c, bpb)} | "
            f"{_cell(c, context_gain('64'))} | "
            f"{_ratio(c)} | {_cell(c, train_value('steps'), 0)} | {_cell(c, train_value('tokens'), 0)} | "
            f"{_cell(c, train_value('wall_seconds'), 0)} | {c.failed}/{c.seeds} |"
        )
    runs = [r for c in text.values() for r in c.results]
    for name, metric in (("unigram", unigram_bpb), ("bigram", bigram_bpb)):
        floor = fmt(stat(metric(r) for r in runs))
        lines.append(f"| {name} (add-one, train counts) | — | {floor} | — | — | — | — | — | — |")
    return lines + [
        "",
        *_figure(figures, "gradient_flow", "Gradient flow per family"),
        *_figure(figures, "context_ablation", "Context ablation per family"),
    ]


def _cell(c, metric, digits: int = 3) -> str:
    """A table cell: mean ± sd over the seeds, and how many seeds it rests on when some failed."""
    s = c.stat(metric)
    text = fmt(s, digits)
    return text if s is None or s.n == c.seeds else f"{text} (n={s.n} of {c.seeds})"


def _ratio(c) -> str:
    """log10 of the gradient ratio; a window model has no path back past its window, so none."""
    window = c.experiment.overrides.get("model.family") in ("ffn_window", "bow")
    return "n/a (no recurrence)" if window else _cell(c, log10_gradient_ratio, 1)


def _probe_section(results, figures, options: Options) -> list[str]:
    grid = probe_grid(results)
    if not grid:
        return []
    delays = sorted({d for probes in grid.values() for d in probes})
    lines = [
        "## Episodic copy probe: how far back does each family remember?",
        "",
        "`data.source: synthetic:copy` with `train.episodic: true`: every line (a key, `data.delay` "
        "filler dots, the cue `?`, the key again) is an independent episode from a fresh state, B whole "
        "episodes per batch, the loss on every target. Every family trains alike (AdamW "
        f"{tuning.describe(options.probe_lrs)}, the pipeline's gradient clipping) and each run stops at "
        f"the first validation whose recall reaches {SOLVED_RECALL:g} (`train.stop_at_recall`), or at "
        f"{options.probe_steps:,} updates. A cell shows the seeds that solved it and their median updates "
        f"to solve; a family *solves* a delay when at least {SOLVES:.0%} of its seeds did, and the "
        "positive control is that it solves the shortest delay. The IRNN is a 2 × 2 (tanh or ReLU, "
        "default or identity W_hh); the LSTM runs with forget-gate bias 1, as `lstm-bias0` with "
        "PyTorch's 0, and as `lstm-chrono` with chrono initialisation up to the episode's length "
        "(Tallec & Ollivier 2018); `ffn_window` and `bow` are negative controls that see only their "
        "window.",
        "",
        "| family | "
        + " | ".join(f"delay {d}" for d in delays)
        + " | control (shortest delay) | solves up to |",
        "| --- | " + " | ".join("---:" for _ in delays) + " | --- | ---: |",
    ]
    for label, probes in grid.items():
        row = [_solved_cell(probes.get(d)) for d in delays]
        passed, _ = control(probes)
        lines.append(
            f"| {label} | "
            + " | ".join(row)
            + f" | {'passed' if passed else 'failed'} | {reach(probes) or 'none'} |"
        )
    return lines + [
        "",
        updates_line(grid, options.probe_steps),
        "",
        *_figure(figures, "copy_recall", "Copy-probe recall against delay"),
    ]


def _solved_cell(c) -> str:
    if c is None:
        return ""
    text = cell_text(c)
    if c.failed:
        text += f" ({c.failed}/{c.seeds} {'diverged' if c.diverged else 'failed'})"
    return text


def _explode_section(results, figures) -> list[str]:
    grid = explode_grid(results)
    if not grid:
        return []
    o = next(iter(next(iter(grid.values())).values())).experiment.overrides
    clips = sorted({c for row in grid.values() for c in row})
    floor = stat(v for row in grid.values() for c in row.values() for v in c.values(unigram_bpb))
    lines = [
        "## The provoked explosion: a grid of gains and clip thresholds",
        "",
        "A tanh RNN on the text with W_hh orthogonal × a gain (`model.recurrent_gain`: its spectral radius; "
        f"gain 1 is the unprovoked baseline) and plain SGD at lr {o.get('train.lr')}, so a gradient's size "
        "is its step's size (Pascanu, Mikolov & Bengio 2013), trained unclipped and with each clip threshold "
        "(`train.grad_clip`). A cell shows the seeds that stayed finite, their mean test bits per byte, the "
        "mean peak gradient norm (log10, measured before clipping) and the mean number of *loss spikes* (a "
        "logged training loss more than 0.5 nats above the lowest before it); *diverged* is a non-finite "
        "loss, which stops the run (recorded, not a crash of the study). A clip value *fixes* a gain when "
        f"every run stays finite and ends below the unigram floor ({fmt(floor)} bits/byte): finite but above "
        "it is an explosion hidden, not fixed.",
        "",
        "| gain | " + " | ".join(f"clip {c:g}" if c else "unclipped" for c in clips) + " |",
        "| --- | " + " | ".join("---:" for _ in clips) + " |",
    ]
    for gain, row in grid.items():
        lines.append(f"| {gain:g} | " + " | ".join(_grid_cell(row.get(c)) for c in clips) + " |")
    return lines + [
        "",
        "Every run's gradient-norm and training-loss traces are in MLflow (tag `seqlm.study.cell` "
        "`explode-g<gain>-c<clip>`).",
        "",
        *_figure(figures, "explosion", "Peak gradient norm and test bits per byte over the gain × clip grid"),
    ]


def _grid_cell(c) -> str:
    """ "5/5 finite · 1.552 · 10^6.9 · 0.4 spikes": seeds finite, mean test bits/byte, mean log10 peak
    gradient norm, mean loss spikes."""
    if c is None:
        return ""
    finite = c.seeds - c.diverged
    return (
        f"{finite}/{c.seeds} finite · {_cell(c, bpb)} · 10^{fmt(c.stat(log10_max_grad_norm), 1)} · "
        f"{fmt(c.stat(loss_spikes), 1)} spikes"
    )


def _cloze_section(results, figures) -> list[str]:
    cloze = by_label(results, "cloze")
    if not cloze:
        return []
    lines = [
        "## The bidirectional RNN where it belongs: filling a blank",
        "",
        "`train.objective: cloze`: 15% of each window's tokens blanked, the model predicts them; the only "
        "difference between the rows is `model.bidirectional`. Evaluation blanks the same test tokens "
        "for both.",
        "",
        "| model | parameters | bits per blank | top-1 | top-5 | unigram bits per blank | steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, c in cloze.items():
        lines.append(
            f"| {label} | {c.experiment.parameters:,} | {_cell(c, bits_per_blank)} | "
            f"{_cell(c, top1)} | "
            f"{_cell(c, top5)} | {_cell(c, unigram_bits_per_blank)} | "
            f"{_cell(c, train_value('steps'), 0)} |"
        )
    return lines


def _experiments(results) -> list[str]:
    lines = [
        "## Every experiment",
        "",
        "| DVC experiment | seed | status | steps | minutes | stopped by | note |",
        "| --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for cell in cells(results).values():
        for r in cell.results:
            t = r.train or {}
            status = "ok" if ok(r) else ("diverged" if r.diverged else r.status)
            m = minutes(r)
            lines.append(
                f"| `{r.experiment.name}` | {r.experiment.seed} | {status} | {t.get('steps', '—')} | "
                f"{'—' if m is None else f'{m:.1f}'} | {t.get('stopped_by', '—')} | {r.note} |"
            )
    return lines


def _footer(options, machine: dict) -> list[str]:
    commit = machine["commit"][:7]
    return [
        "## Reproduce and extend",
        "",
        "```bash",
        f"make study                  # seqlm study: every cell over {Options().seeds} seeds, the ladder to "
        f"delay {max(Options().delays)} (hours on 2 cores: see the estimate)",
        "seqlm study --quick         # a first look: one seed, a short ladder, short budgets (under 20 min)",
        "seqlm study --gpu           # bigger models, longer delays and more updates, on a GPU",
        "seqlm study --dry-run       # the plan, its time estimate and the dvc commands; runs nothing",
        f"dvc exp show --rev {commit} # these experiments, params and metrics",
        "```",
        "",
        "Each experiment is `dvc exp run --queue -S …` up to the evaluate stage (study models are never "
        f"registered), run {options.jobs} at a time (`OMP_NUM_THREADS=1`). Add a family to `FAMILIES` in "
        "`src/seqlm/study/plan.py`; change seeds, budgets and delays with `seqlm study --seeds … "
        "--text-tokens … "
        "--probe-steps … --delays …`.",
    ]
