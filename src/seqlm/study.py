"""`seqlm study` (`make study`): the seed's argument about sequence models as one reproducible study.

The source material argues, in order: fixed-window feed-forward models cannot hold long history;
bag-of-words loses order; RNNs share parameters across time but their gradients vanish or explode;
clipping tames explosion; ReLU with identity initialisation (IRNN) and gated cells (LSTM, GRU) keep
long-term dependencies. The study puts each step to the test as DVC experiments on the same data, each
with the same wall-clock budget (``train.max_minutes``, no step limit) and, within PARAM_TOLERANCE, the
same number of parameters:

- text (the default corpus): ffn_window, bow, rnn (tanh), rnn (tanh) without clipping, IRNN, lstm, gru;
- probe (``synthetic:copy``): PROBE_FAMILIES × delays, to find where each family stops remembering.

Every experiment is queued with ``dvc exp run --queue -S …`` and the queue is run with ``dvc queue
start -j 2``: two experiments side by side, one thread each (``worker_env``). Each is one MLflow run in
the study's MLflow experiment (``base.experiment``), tagged ``seqlm.study``. The register stage is not run:
study models are measurements, not candidates for serving, so they never meet the champion gate and add
no versions to the registry. docs/study.md is then written from the experiments' own reports
(study_report.py). To extend the study, add a family to FAMILIES or an option to ``seqlm study``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seqlm.errors import SeqlmError
from seqlm.paths import Paths

# Display name -> the model (and train) keys that make the family. The order is the argument's order.
FAMILIES: dict[str, dict[str, Any]] = {
    "ffn_window": {"model.family": "ffn_window", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "bow": {"model.family": "bow", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "rnn": {"model.family": "rnn", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "rnn-noclip": {"model.family": "rnn", "model.nonlinearity": "tanh", "model.recurrent_init": "default",
                   "train.grad_clip": 0.0},  # fmt: skip
    # IRNN: Le, Jaitly & Hinton (2015), arXiv:1504.00941
    "irnn": {"model.family": "rnn", "model.nonlinearity": "relu", "model.recurrent_init": "identity"},
    "lstm": {"model.family": "lstm", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "gru": {"model.family": "gru", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
}
TEXT_FAMILIES = tuple(FAMILIES)
PROBE_FAMILIES = ("rnn", "irnn", "lstm", "gru")
REFERENCE_FAMILY = "lstm"  # the others get the hidden size that gives them about its parameter count
PARAM_TOLERANCE = 0.15

# The probe's model and batching. Small, because the probe's vocabulary is 14 pieces; many small
# batches, because learning to bridge a long gap takes many updates more than many tokens per update.
PROBE_TASK = "copy"
PROBE_MODEL = {"model.embedding_size": 32, "model.hidden_size": 64, "model.dropout": 0.0, "model.num_layers": 1}
PROBE_TOKENIZER = {"tokenizer.type": "char", "tokenizer.byte_fallback": False, "tokenizer.vocab_size": 32}
PROBE_BATCH_SIZE = 8
# fp32, not the CPU's bf16-mixed: at the probe's sizes bf16 autocast slows the GRU and RNN by ~1.6× (their
# CPU kernels step through time; measured 1 thread, batch 8 × 128: GRU 53k tokens/s fp32 vs 35k bf16,
# RNN 98k vs 61k, LSTM 238k vs 300k), and equal minutes should buy as similar a number of updates as they can.
PROBE_PRECISION = "32-true"
PROBE_SYMBOLS = 1_000_000
# Samples and next-word tables need prompts the probe's alphabet can spell.
PROBE_EVALUATE = {"evaluate.prompts": ["C"], "evaluate.cloze_prompts": ["C....?"], "evaluate.gradient_flow_steps": 256}
# The minutes are the budget: no step limit, no early stopping, and an epoch limit no run reaches (the
# probe corpora are small, so the default of 20 epochs stopped the fast LSTM at delay 200 after about one of
# its 3 minutes in an earlier study).
BUDGET = {"train.max_steps": 0, "train.early_stopping_patience": 0, "train.max_epochs": 100_000}
TARGET_STAGE = "evaluate"  # reproduce up to evaluate: study models are not registered
LOCK_RETRIES, LOCK_WAIT_S = 60, 10


@dataclass(frozen=True)
class Options:
    name: str = "seqlm-study"  # MLflow experiment and the seqlm.study tag
    text_minutes: float = 4.0
    probe_minutes: float = 3.0
    delays: tuple[int, ...] = (10, 50, 200)
    text_families: tuple[str, ...] = TEXT_FAMILIES
    probe_families: tuple[str, ...] = PROBE_FAMILIES
    jobs: int = 2  # experiments at a time, one thread each
    stamp: str = ""  # suffix that keeps DVC experiment names unique across runs of the study


@dataclass(frozen=True)
class Experiment:
    name: str  # the DVC experiment name
    group: str  # "text" | "probe"
    family: str  # a key of FAMILIES
    overrides: dict[str, Any] = field(default_factory=dict)  # params.yaml keys, set with -S
    parameters: int = 0  # model parameters, computed from the config before training

    @property
    def delay(self) -> int | None:
        return self.overrides.get("data.delay") if self.group == "probe" else None


# ------------------------------------------------------------------------------------------- planning


def plan(options: Options, params: dict) -> list[Experiment]:
    """The study's experiments, with hidden sizes that match the reference family's parameter count.

    ``params`` is the parsed params.yaml every experiment starts from.
    """
    from seqlm import config

    for family in (*options.text_families, *options.probe_families):
        if family not in FAMILIES:
            raise SeqlmError(f"seqlm study: no family {family!r}; families: {', '.join(FAMILIES)}")
    base = config.parse(params)
    common = {"base.experiment": options.name, **BUDGET}
    text_vocab = base.tokenizer.vocab_size  # bpe and unigram vocabularies have exactly this size
    text = {**common, "train.max_minutes": options.text_minutes}
    experiments = _matched(params, "text", options.text_families, text, text_vocab, options.stamp)
    for delay in options.delays:
        probe = {
            **common,
            "data.source": f"synthetic:{PROBE_TASK}",
            "data.delay": delay,
            "data.synthetic_symbols": PROBE_SYMBOLS,
            **PROBE_TOKENIZER,
            **PROBE_MODEL,
            "train.batch_size": PROBE_BATCH_SIZE,
            "train.precision": PROBE_PRECISION,
            "train.bptt": probe_bptt(PROBE_TASK, delay),
            "train.max_minutes": options.probe_minutes,
            **PROBE_EVALUATE,
        }
        vocab = probe_vocab_size(PROBE_TASK)
        experiments += _matched(params, f"{PROBE_TASK}{delay}", options.probe_families, probe, vocab, options.stamp)
    return experiments


def probe_bptt(task: str, delay: int) -> int:
    """A power of two at least twice the recall span: most episodes then lie inside one truncated-BPTT
    window, so the gradient from the recall position can reach the symbol it must recall."""
    from seqlm.data import synthetic

    span = synthetic.recall_convention(task, delay)["span"]
    return max(64, 1 << math.ceil(math.log2(2 * span)))


def probe_vocab_size(task: str) -> int:
    """<unk> <s> </s>, sentencepiece's word-start piece ▁ and one piece per symbol of the probe."""
    from seqlm.data import synthetic

    return 4 + len(synthetic.alphabet(task))


def _matched(params: dict, label: str, families, overrides: dict, vocab: int, stamp: str) -> list[Experiment]:
    reference = {**overrides, **FAMILIES[REFERENCE_FAMILY]}
    reference.setdefault("model.hidden_size", config_value(params, "model.hidden_size"))
    target = count_parameters(params, reference, vocab)
    out = []
    for family in families:
        keys = {**overrides, **FAMILIES[family]}
        if family == REFERENCE_FAMILY:
            keys["model.hidden_size"] = reference["model.hidden_size"]
        else:
            keys["model.hidden_size"] = matched_hidden_size(params, keys, vocab, target)
        name = f"{label}-{family}" + (f"-{stamp}" if stamp else "")
        out.append(Experiment(name, "text" if label == "text" else "probe", family, keys,
                              count_parameters(params, keys, vocab)))  # fmt: skip
    return out


def config_value(params: dict, dotted: str) -> Any:
    """A key's value in ``params``, or its code default (they are equal for the shipped params.yaml)."""
    from seqlm import config

    return config.parse(params).flat()[dotted]


def apply(params: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``params`` with dotted keys set, as ``dvc exp run -S`` would."""
    out = {section: dict(values or {}) for section, values in params.items()}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return out


def count_parameters(params: dict, overrides: dict[str, Any], vocab: int) -> int:
    import torch

    from seqlm import config
    from seqlm.models import build_model

    cfg = config.parse(apply(params, overrides), where="seqlm study")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_model(cfg.model, vocab).num_parameters()


def matched_hidden_size(params: dict, overrides: dict[str, Any], vocab: int, target: int) -> int:
    """The hidden size (a multiple of 8) whose parameter count is closest to ``target``.

    A scan, not a bisection: counts are not monotonic in the hidden size, because a tied decoder needs
    a projection whenever the hidden size differs from the embedding size.
    """
    best, best_gap, h = 8, math.inf, 8
    while True:
        count = count_parameters(params, {**overrides, "model.hidden_size": h}, vocab)
        if abs(count - target) < best_gap:
            best, best_gap = h, abs(count - target)
        if count > 2 * target or h >= 1 << 16:
            return best
        h += 8


def check_comparable(experiments: list[Experiment]) -> None:
    """Every group's parameter counts lie within PARAM_TOLERANCE of its reference family's."""
    for group in {_group_key(e) for e in experiments}:
        members = [e for e in experiments if _group_key(e) == group]
        reference = next((e.parameters for e in members if e.family == REFERENCE_FAMILY), None)
        reference = reference or max(e.parameters for e in members)
        for e in members:
            if abs(e.parameters - reference) > PARAM_TOLERANCE * reference:
                raise SeqlmError(
                    f"seqlm study: {e.name} has {e.parameters:,} parameters, more than {PARAM_TOLERANCE:.0%} "
                    f"away from {REFERENCE_FAMILY}'s {reference:,}; adjust its hidden size"
                )


def _group_key(e: Experiment) -> str:
    return "text" if e.group == "text" else f"probe{e.delay}"


# ------------------------------------------------------------------------------------------- commands


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments; values in YAML flow style, strings quoted for DVC's override parser."""
    args = []
    for key, value in overrides.items():
        args += ["-S", f"{key}={_flow(value)}"]
    return args


def _flow(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_:/.?-]*", value) and value not in ("true", "false", "null")
        return value if plain else "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def queue_command(exp: Experiment, copy_paths: list[str]) -> list[str]:
    copies = [arg for path in copy_paths for arg in ("-C", path)]
    return ["dvc", "exp", "run", "--queue", "-n", exp.name, *set_param_args(exp.overrides), *copies, TARGET_STAGE]


def start_queue(jobs: int) -> list[str]:
    return ["dvc", "queue", "start", "-j", str(jobs)]


def worker_env() -> dict[str, str]:
    """The environment of the queue's workers and so of every stage they run.

    One intra-op thread per experiment: PyTorch's OpenMP threads spin-wait for each other, so on a machine
    whose cores another job also wants, a two-thread process of these small models ran up to 20× slower
    (docs/performance.md); ``--jobs`` experiments side by side use the cores instead. PATH starts with
    this environment's bin/, because DVC starts its workers as ``dvc`` and the stages as ``python``.
    """
    import os

    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def _dvc(args: list[str], paths: Paths, capture: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run dvc (this interpreter's, whatever PATH says); with ``capture``, its stdout and stderr as text.

    Captured through files, not pipes: `dvc queue start` leaves workers behind that inherit its output,
    and a pipe would not reach end-of-file before the last of them exits.
    """
    import tempfile

    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else args
    if not capture:
        return subprocess.run(command, cwd=paths.root, text=True, env=env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(command, cwd=paths.root, text=True, stdout=out, stderr=err, env=env)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, done.returncode, out.read(), err.read())


def _git(paths: Paths, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=paths.root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def untracked_sources(paths: Paths) -> list[str]:
    """Files the stages import or depend on that git does not track yet.

    A queued experiment runs in a copy of the last commit plus tracked changes; these files are
    copied in with ``-C`` (and named in a warning: the experiments' commits do not record them).
    """
    listed = _git(paths, "ls-files", "--others", "--exclude-standard", "--", "src", "pipeline")
    return [line for line in listed.splitlines() if line.endswith(".py")]


def queue_status(paths: Paths) -> tuple[dict[str, str], int | None]:
    """`dvc queue status`: experiment name -> Queued | Running | Success | Failed, and the live workers."""
    return parse_queue_status(_dvc(["dvc", "queue", "status"], paths, capture=True).stdout)


def parse_queue_status(text: str) -> tuple[dict[str, str], int | None]:
    """`dvc queue status` output -> (experiment name -> state, live workers or None if not reported)."""
    status, workers = {}, None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            status[words[1]] = words[-1]
        found = re.match(r"Worker status: (\d+) active, (\d+) idle", line.strip())
        if found:
            workers = int(found[1]) + int(found[2])
    return status, workers


def workers_to_start(status: dict[str, str], workers: int | None, jobs: int) -> int:
    """How many queue workers to start so that ``jobs`` run while experiments are still queued.

    DVC's workers sometimes stop while the queue still holds experiments (treeverse/dvc#10562,
    treeverse/dvc-task#77: seen here with `-j 2`, one of the two gone after four experiments), which
    would leave the study running one at a time, or not at all, with the rest waiting forever.
    """
    queued = sum(state == "Queued" for state in status.values())
    running = sum(state == "Running" for state in status.values())
    if workers is None or queued == 0:
        return 0
    return max(0, min(jobs - max(workers, running), queued))


def _queue_is_empty(paths: Paths) -> None:
    busy = [name for name, state in queue_status(paths)[0].items() if state in ("Queued", "Running")]
    if busy:
        raise SeqlmError(
            f"the DVC experiment queue already holds {len(busy)} queued or running experiments ({busy[0]}, …); "
            "run them (`dvc queue start`) or remove them (`dvc queue remove --queued`) before `seqlm study`"
        )


def _dvc_locked_retry(command: list[str], paths: Paths, env: dict | None = None) -> None:
    """Run a dvc command that takes the repository lock, waiting while another dvc command holds it."""
    for _ in range(LOCK_RETRIES):
        out = _dvc(command, paths, capture=True, env=env)
        print((out.stdout + out.stderr).strip(), flush=True)
        if out.returncode == 0:
            return
        if "lock" not in out.stderr.lower():
            raise SeqlmError(f"`{' '.join(command[:5])} …` failed; see DVC's message above")
        print(f"study: another dvc command holds the repository lock; retrying in {LOCK_WAIT_S} s", flush=True)
        time.sleep(LOCK_WAIT_S)
    raise SeqlmError(f"the DVC repository stayed locked for {LOCK_RETRIES * LOCK_WAIT_S // 60} minutes; try again later")


def wait_for(paths: Paths, names: list[str], jobs: int, load: list[float], poll_s: float = 15.0,
             grace_s: float = 60.0) -> dict[str, str]:  # fmt: skip
    """Poll `dvc queue status` until none of ``names`` is queued or running; report each as it ends.

    Appends the 1-minute load average to ``load`` at every poll (the report says whether the study had
    the cores to itself).

    Polling, not `dvc exp run --run-all`: that holds the repository lock for the whole run, and so
    would lock every other dvc command in the workspace out for the better part of an hour. Workers that
    DVC lost are replaced (``workers_to_start``), once they have been missing for ``grace_s``: a worker
    just started, or between two experiments, may briefly not be counted.
    """
    import os

    done: dict[str, str] = {}
    short_since: float | None = None
    while True:
        load.append(os.getloadavg()[0])
        status, workers = queue_status(paths)
        missing = workers_to_start({n: status.get(n, "Failed") for n in names}, workers, jobs)
        if not missing:
            short_since = None
        elif short_since is None:
            short_since = time.monotonic()
        elif time.monotonic() - short_since >= grace_s:
            print(f"study: DVC's queue is running {workers} of {jobs} workers with experiments still queued "
                  f"(its workers sometimes stop early); starting {missing} more", flush=True)  # fmt: skip
            _dvc_locked_retry(start_queue(missing), paths, env=worker_env())
            short_since = None
        for name in names:
            state = status.get(name, "Failed")  # gone from the queue without a result
            if state in ("Success", "Failed") and name not in done:
                done[name] = state
                print(f"study: {len(done)}/{len(names)} {name}: {state}", flush=True)
        if len(done) == len(names):
            return done
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------ the study


def run_study(paths: Paths, options: Options, dry_run: bool = False) -> list[Experiment]:
    import yaml

    started = time.time()
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    if not options.stamp:
        options = replace(options, stamp=dt.datetime.now().strftime("%m%d%H%M"))
    experiments = plan(options, params)
    check_comparable(experiments)
    copies = untracked_sources(paths)
    commands = [queue_command(e, copies) for e in experiments] + [start_queue(options.jobs)]
    if dry_run:
        for e in experiments:
            print(f"# {e.name}: {e.family}, {e.parameters:,} parameters")
        print("\n".join(" ".join(_shell_quote(a) for a in c) for c in commands))
        return experiments
    if copies:
        print(f"study: warning: untracked {', '.join(copies)} copied into the experiments with -C; commit them "
              "so the experiments' commits record them")  # fmt: skip
    _queue_is_empty(paths)
    _prepare_store(paths, options.name)
    baseline = _git(paths, "rev-parse", "HEAD")
    for e, command in zip(experiments, commands):
        print(f"study: queue {e.name} ({e.parameters:,} parameters)", flush=True)
        _dvc_locked_retry(command, paths)
    print(f"study: running {len(experiments)} experiments, {options.jobs} at a time; `dvc queue logs <name>` "
          "follows one", flush=True)  # fmt: skip
    _dvc_locked_retry(start_queue(options.jobs), paths, env=worker_env())
    load: list[float] = []
    wait_for(paths, [e.name for e in experiments], options.jobs, load)  # a failed experiment is reported, not raised
    from seqlm import study_report

    results = collect(paths, options, experiments, baseline, started)
    finished = time.time()
    study_report.write(paths.root / "docs", results, machine_info(paths, baseline, started, finished, load), options)
    print(f"study: wrote docs/study.md ({(finished - started) / 60:.1f} min for {len(experiments)} experiments)")
    return experiments


def _prepare_store(paths: Paths, experiment: str) -> None:
    """Create the MLflow store and the study's experiment now: experiments running side by side would
    otherwise race to create both (and one would fail)."""
    from seqlm import tracking

    uri = tracking.tracking_uri(paths)
    tracking.check_reachable(uri)
    tracking.experiment_id(tracking.client(uri), experiment, paths)


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


# ----------------------------------------------------------------------------------------- results


@dataclass
class Result:
    experiment: Experiment
    status: str = "missing"  # "success" | "failed"
    rev: str | None = None
    train: dict | None = None  # reports/train/metrics.json
    eval: dict | None = None  # reports/eval/metrics.json
    ablation: dict | None = None  # reports/eval/context_ablation.json
    gradient: dict | None = None  # reports/eval/gradient_flow.json
    diverged: bool = False
    note: str = ""
    run_id: str | None = None
    max_grad_norm: float | None = None  # the largest logged gradient norm (a mean over train.log_every_steps)


METRICS = {"train": "reports/train/metrics.json", "eval": "reports/eval/metrics.json"}
PLOTS = {"ablation": "eval/context_ablation.json", "gradient": "eval/gradient_flow.json"}  # MLflow artifacts


def collect(paths: Paths, options: Options, experiments: list[Experiment], baseline: str,
            started: float) -> list[Result]:  # fmt: skip
    """Each experiment's metrics from `dvc exp show` (DVC's JSON is the source of truth), its MLflow run
    (tagged with the study on the way), and the diagnostics' curves from that run's artifacts."""
    import yaml

    rows = experiment_rows(paths, baseline)
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    client, runs = study_runs(paths, options.name, started)
    results = []
    for e in experiments:
        result = Result(e)
        row = rows.get(e.name)
        if row is not None:
            result.rev = row.get("rev")
            metrics = row.get("metrics") or {}
            for attr, path in METRICS.items():
                setattr(result, attr, (metrics.get(path) or {}).get("data"))
        run = match_run(runs, params, e)
        if run is not None:
            runs.remove(run)
            result.run_id = run.info.run_id
            tag_run(client, run.info.run_id, options, e)
            for attr, artifact in PLOTS.items():
                setattr(result, attr, _artifact_json(client, run.info.run_id, artifact))
            norms = [m.value for m in client.get_metric_history(run.info.run_id, "grad_norm")]
            result.max_grad_norm = max(norms) if norms else None
        if result.eval is not None:
            result.status = "success"
        else:
            log = _dvc(["dvc", "queue", "logs", e.name], paths, capture=True)
            text = log.stdout + log.stderr
            result.status = "failed"
            result.diverged = "training diverged" in text
            result.note = _failure_line(text)
        results.append(result)
    return results


def experiment_rows(paths: Paths, baseline: str) -> dict[str, dict]:
    """DVC experiment name -> its `dvc exp show --json` data, for experiments derived from ``baseline``."""
    out = _dvc(["dvc", "exp", "show", "--json", "--rev", baseline, "--hide-queued", "--hide-workspace"],
               paths, capture=True)  # fmt: skip
    try:
        baselines = json.loads(out.stdout or "[]")
    except json.JSONDecodeError:
        return {}
    rows = {}
    for commit in baselines:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") and rev.get("data"):
                    rows[rev["name"]] = rev["data"]
    return rows


def _failure_line(log: str) -> str:
    for line in reversed(log.splitlines()):
        if line.startswith("error:") or "ERROR" in line:
            return line.removeprefix("error: ").strip()[:200]
    return "the experiment did not finish (see `dvc queue logs`)"


def study_runs(paths: Paths, experiment: str, started: float):
    """An MLflow client and the runs of the study's MLflow experiment that started after ``started``."""
    from seqlm import tracking

    client = tracking.client(tracking.tracking_uri(paths))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, []
    runs = client.search_runs([found.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"])
    return client, [r for r in runs if r.info.start_time >= int(started * 1000)]


def match_run(runs: list, params: dict, e: Experiment):
    """The (latest) run whose logged params equal the experiment's, as the train stage logs them.

    Every param the run logged is compared, not just the experiment's overrides: an experiment that keeps
    a default (the clipped tanh rnn: no ``train.grad_clip`` override) must not match a sibling that
    overrides it (``rnn-noclip``, whose run an earlier version tagged as the clipped one's).
    """
    from seqlm import config

    flat = config.parse(apply(params, e.overrides)).flat()
    wanted = {k: str(v)[:6000] for k, v in flat.items()}

    def same(run) -> bool:
        logged = run.data.params
        return all(k in logged for k in e.overrides) and all(logged[k] == v for k, v in wanted.items() if k in logged)

    return next((r for r in runs if same(r)), None)


def tag_run(client, run_id: str, options: Options, e: Experiment) -> None:
    """Tag the run with the study and name it after the DVC experiment, for the MLflow UI."""
    from mlflow.entities import RunTag

    tags = {"seqlm.study": options.name, "seqlm.study.stamp": options.stamp, "seqlm.study.family": e.family,
            "seqlm.study.group": e.group, "dvc.experiment": e.name}  # fmt: skip
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.update_run(run_id, name=e.name)


def _artifact_json(client, run_id: str, artifact: str) -> dict | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())
        except Exception:  # a run that failed before evaluation has no such artifact
            return None


def machine_info(paths: Paths, baseline: str, started: float, finished: float, load: list[float]) -> dict:
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        pass
    dirty = bool(_git(paths, "status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": cpu,
        "cores": cores,
        "memory": memory,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": baseline or "unknown",
        "dirty": dirty,
        "started": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(timespec="seconds"),
        "finished": dt.datetime.fromtimestamp(finished, dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_minutes": (finished - started) / 60,
        "load_mean": sum(load) / len(load) if load else None,
        "load_max": max(load) if load else None,
    }


# ------------------------------------------------------------------------------------------------ CLI


def cli_study(args) -> None:
    import os

    from seqlm.paths import Paths

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    options = Options(
        name=args.name,
        text_minutes=args.text_minutes,
        probe_minutes=args.probe_minutes,
        delays=tuple(args.delays),
        text_families=tuple(args.text_families),
        probe_families=tuple(args.probe_families),
        jobs=args.jobs,
    )
    run_study(Paths.from_env(), options, dry_run=args.dry_run)


def add_arguments(p) -> None:
    defaults = Options()
    p.add_argument("--name", default=defaults.name, help=f"MLflow experiment and seqlm.study tag (default {defaults.name})")
    p.add_argument("--text-minutes", type=float, default=defaults.text_minutes,
                   help=f"train.max_minutes of each text experiment (default {defaults.text_minutes:g})")
    p.add_argument("--probe-minutes", type=float, default=defaults.probe_minutes,
                   help=f"train.max_minutes of each copy-probe experiment (default {defaults.probe_minutes:g})")
    p.add_argument("--delays", type=int, nargs="+", default=list(defaults.delays),
                   help="copy-probe delays (default " + " ".join(map(str, defaults.delays)) + ")")
    p.add_argument("--text-families", nargs="*", default=list(defaults.text_families), choices=list(FAMILIES),
                   metavar="FAMILY", help="families trained on the text corpus (default: all)")
    p.add_argument("--probe-families", nargs="*", default=list(defaults.probe_families), choices=list(FAMILIES),
                   metavar="FAMILY", help="families trained on the copy probe (default " + " ".join(PROBE_FAMILIES) + ")")
    p.add_argument("--jobs", type=int, default=defaults.jobs,
                   help=f"experiments run side by side, one thread each (default {defaults.jobs})")
    p.add_argument("--dry-run", action="store_true", help="print the experiments and the dvc commands; run nothing")
