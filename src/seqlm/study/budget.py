"""The study's budgets: the text runs' updates and warm-up, and how long the plan will take, estimated
before anything is queued.

Explosion and cloze experiments have a wall-clock budget (``train.max_minutes``); text and probe
experiments a step budget, so their minutes follow from tokens per step and each family's speed. Every
experiment also pays its group's OVERHEAD_MINUTES of DVC's bookkeeping, data preparation and evaluation.
``jobs`` experiments run side by side.
Experiments are queued one after another before the queue starts (QUEUE_SECONDS each: `dvc exp run
--queue` takes DVC's experiment lock, which a running worker also needs to start its next experiment, so the
queue starts only once everything is queued). The estimate is for the CPU path on a 2-core machine like the
one that measured the constants; ``--gpu`` runs are not held to a limit.
"""

from __future__ import annotations

from seqlm.core.errors import SeqlmError

# Per experiment: `dvc exp run` in a temporary workspace, download, tokenize, the train and evaluate stages'
# start-up (importing torch, lightning and mlflow from cached bytecode: ~5 s each), the validations,
# evaluation and DVC's bookkeeping, in job-minutes. Measured on 2026-12-02 (AMD EPYC, 2 cores, the study
# alone on the machine): `seqlm study --tune` ran 60 probe experiments (119,300 updates) in 18.3 minutes
# after queueing, two at a time: 36.6 job-minutes, 12.5 of them training at the rates below, 2.6 validating,
# so 0.36 job-minutes (22 s) each besides; rounded up to 0.5 for a machine something else also uses. A text
# experiment evaluates more (the context ablation scores 56k tokens four times, ~10 s): 57 s for 123 updates
# with another job on the machine, 39 s of it besides training; 0.8. (Before the stages wrote bytecode,
# 2026-12-01, one probe experiment paid 55 s and the constant was 1.1.)
OVERHEAD_MINUTES = {"probe": 0.5, "text": 0.8, "explode": 0.8, "cloze": 0.8}
QUEUE_SECONDS = 4.0  # one `dvc exp run --queue` on 2 cores (3.8 s alone; 4.4 s each in the 2026-12-01 study)
# One thread, fp32, the probe's model (embedding 32, hidden 64-136), 32 episodes a batch: training tokens per
# second (validation excluded), two experiments side by side, from the same tuning run at delay 25 (rnn 141k,
# rnn-identity 153k, rnn-relu 150k, irnn 156k, lstm 220k, lstm-bias0 222k, lstm-chrono 225k, gru 100k,
# ffn_window 150k, bow 103k: each family's mean over its six runs), rounded down by about a third.
PROBE_TOKENS_PER_S = {
    "rnn": 100_000,
    "rnn-identity": 100_000,
    "rnn-relu": 100_000,
    "irnn": 100_000,
    "lstm": 150_000,
    "lstm-bias0": 150_000,
    "lstm-chrono": 150_000,
    "gru": 70_000,
    "ffn_window": 100_000,
    "bow": 70_000,
}
# Per update besides its tokens: a validation every 100 updates (the valid split, ~0.1-0.5 s) and Lightning's
# own step cost
STEP_OVERHEAD_S = 0.005
# The text families at the study's size (about the LSTM's 1.04M parameters; the wide window 2.6M), batch 32 ×
# bptt 64, end to end in the train stage (Lightning's logging, validation and checkpoints included), two
# experiments side by side, one thread each: steps × 2048 / 90 s in the equal-minutes study of 2026-12-01
# (Intel Xeon @ 2.00GHz, 2 cores, load mean 2.1), rounded down. bench/study_text_throughput.py (the
# model's steps alone, one thread) on the AMD EPYC, 2 cores, under load 6.7 from other work: ffn_window 10.8k,
# wide 4.3k, bow 9.9k, rnn 10.5k, lstm 17.3k, gru 11.4k: the same order, the wide window slowest by 2.5-4×.
TEXT_TOKENS_PER_S = {
    "ffn_window": 5_300,
    "ffn_window-wide": 2_100,
    "bow": 4_600,
    "rnn": 5_900,
    "lstm": 6_400,
    "gru": 4_600,
}
# `seqlm study --quick` on 2 cores. The full plan is not held to a limit there: with the ladder to delay 200,
# 10,000-update caps and five seeds it is far beyond an afternoon on 2 cores (the summary says so and names
# the ways to run it: a GPU, or several machines); probes stop when solved, so its estimate is an upper bound.
LIMIT_MINUTES = {"quick": 20.0}
AFTERNOON_MINUTES = 180.0  # past this on 2 cores, the summary points at --gpu and several machines


def training_minutes(e) -> float:
    o = e.overrides
    if o.get("train.max_minutes"):
        return float(o["train.max_minutes"])
    tokens = o["train.batch_size"] * o["train.bptt"]  # probe: an episode per row, bptt is its length
    if e.group == "text":  # the measured rates hold the step's overhead already
        return (
            o["train.max_steps"]
            * tokens
            / TEXT_TOKENS_PER_S.get(e.family, min(TEXT_TOKENS_PER_S.values()))
            / 60
        )
    per_step = STEP_OVERHEAD_S + tokens / PROBE_TOKENS_PER_S.get(e.family, min(PROBE_TOKENS_PER_S.values()))
    return o["train.max_steps"] * per_step / 60


def overhead_minutes(e) -> float:
    """What an experiment costs besides its training, in job-minutes (OVERHEAD_MINUTES)."""
    return OVERHEAD_MINUTES.get(e.group, max(OVERHEAD_MINUTES.values()))


def estimate_minutes(experiments, jobs: int) -> float:
    """Wall-clock minutes for the plan: queueing it, then ``jobs`` experiments at a time."""
    work = sum(training_minutes(e) + overhead_minutes(e) for e in experiments)
    return len(experiments) * QUEUE_SECONDS / 60 + work / max(jobs, 1)


# The options that size a plan. A preset's limit holds only while none of them differs from the preset's:
# `--quick --seeds 5` is no longer the 20-minute first look, and the report says which options it changed.
SIZING = (
    "seeds",
    "text_tokens",
    "probe_steps",
    "delays",
    "explode_minutes",
    "explode_gains",
    "explode_clips",
    "cloze_minutes",
    "cloze_matched",
    "text_families",
    "probe_families",
    "jobs",
)


def changed(options, base) -> str:
    """The sizing options in which ``options`` differs from ``base`` (its preset), as `seqlm study` flags;
    "" if none."""
    flags = []
    for key in SIZING:
        value = getattr(options, key)
        if value == getattr(base, key):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            flags.append(" ".join([flag, *map(str, value if isinstance(value, tuple) else (value,))]))
    return " ".join(flags)


def summary(experiments, options, base=None) -> str:
    """One line for the terminal and the report: the estimate and the limit it is held to (``base``: the
    preset ``options`` started from; changed in a sizing option, the preset's limit no longer holds)."""
    head = f"{len(experiments)} experiments, {options.seeds} seed(s) each"
    if options.gpu:
        return head + "; not estimated on the GPU path (the constants are a 2-core CPU's)"
    minutes = estimate_minutes(experiments, options.jobs)
    limit = None if base is not None and changed(options, base) else LIMIT_MINUTES.get(options.preset)
    held = f" (limit {limit:g} min on 2 cores)" if limit else ""
    probes = any(e.group == "probe" for e in experiments)
    line = f"{head}, {'at most ' if probes else ''}about {minutes:.0f} min{held}"
    if minutes > AFTERNOON_MINUTES and not limit:
        line += (
            f" ({minutes / 60:.1f} h on 2 cores if no probe stops early: run it with `seqlm study --gpu` or "
            "across machines, docs/study-design.md)"
        )
    return line


def text_steps(per_step: int, tokens: int) -> int:
    """The updates that train every text family on at least ``tokens`` tokens, ``per_step`` (batch_size ×
    bptt) each."""
    if tokens < 1:
        raise SeqlmError(f"seqlm study: --text-tokens must be at least 1, got {tokens}")
    return -(-tokens // per_step)
