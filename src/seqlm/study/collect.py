"""What the study's experiments left behind, gathered into ``Result``s, and the machine they ran on.

Owns reading each experiment's metrics from `dvc exp show` (DVC's JSON is the source of truth),
matching it to its MLflow run (a diverged run's too: it is an outcome, not an error) and tagging that run
with the study, the diagnostics' curves from the run's artifacts, the loss and gradient-norm traces from its
step metrics, the failure line of a failed experiment, and ``machine_info`` for the report.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path

from seqlm.core.git import git
from seqlm.core.paths import CONTEXT_ABLATION, GRADIENT_FLOW, Paths
from seqlm.study.plan import Experiment, Options, apply
from seqlm.study.queue import run_dvc
from seqlm.study.results import Result

IN_PROJECT = Paths(Path())  # paths relative to the project root, as `dvc exp show` names them
METRICS = {"train": IN_PROJECT.train_metrics.as_posix(), "eval": IN_PROJECT.eval_metrics.as_posix()}
TRACES = (
    "grad_norm",
    "train_loss",
)  # MLflow step metrics (training.callbacks), kept for the explosion's figure
PLOTS = {"ablation": f"eval/{CONTEXT_ABLATION}", "gradient": f"eval/{GRADIENT_FLOW}"}  # MLflow artifacts


def collect(
    paths: Paths,
    options: Options,
    experiments: list[Experiment],
    baseline: str,
    started: float,
    failures: dict[str, dict] | None = None,
) -> list[Result]:
    """Each experiment's metrics from `dvc exp show`, its MLflow run (tagged with the study on the way),
    and the diagnostics' curves from that run's artifacts.

    ``failures`` (name -> ``failure``'s dict) are what the shards recorded of their failed experiments,
    for a study run on several machines: this machine's DVC queue has no logs of theirs.
    """
    import yaml

    rows = experiment_rows(paths, baseline)
    params = yaml.safe_load(paths.params.read_text(encoding="utf-8"))
    client, runs = study_runs(paths, options.name, started)
    results = []
    for e in experiments:
        result = Result(e)
        _read_metrics(result, rows.get(e.name))
        run = match_run(runs, params, e)
        if run is not None:
            runs.remove(run)
            _read_run(result, client, run.info.run_id, options)
        if result.eval is not None:
            result.status = "success"
        else:
            _read_failure(result, paths, failures)
        results.append(result)
    return results


def _read_metrics(result: Result, row: dict | None) -> None:
    if row is None:
        return
    result.rev = row.get("rev")
    metrics = row.get("metrics") or {}
    for attr, path in METRICS.items():
        setattr(result, attr, (metrics.get(path) or {}).get("data"))


def _read_run(result: Result, client, run_id: str, options: Options) -> None:
    result.run_id = run_id
    tag_run(client, run_id, options, result.experiment)
    for attr, artifact in PLOTS.items():
        setattr(result, attr, _artifact_json(client, run_id, artifact))
    for name in TRACES:
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        result.traces[name] = [(m.step, m.value) for m in history]
    norms = [v for _, v in result.traces["grad_norm"]]
    result.max_grad_norm = max(norms) if norms else None


def _read_failure(result: Result, paths: Paths, failures: dict[str, dict] | None) -> None:
    result.status = "failed"
    if failures is None:
        found = failure(paths, result.experiment.name)
    else:
        found = failures.get(result.experiment.name) or {
            "diverged": False,
            "note": "its shard ran it to success, but `dvc exp show` here has no metrics for it "
            "(did `dvc exp pull` bring it?)",
        }
    result.diverged, result.note = found["diverged"], found["note"]


def failure(paths: Paths, name: str) -> dict:
    """A failed queued experiment's failure line, and whether its training diverged, from its queue log."""
    log = run_dvc(["dvc", "queue", "logs", name], paths, capture=True)
    text = log.stdout + log.stderr
    return {"diverged": "training diverged" in text, "note": _failure_line(text)}


def experiment_rows(paths: Paths, baseline: str) -> dict[str, dict]:
    """DVC experiment name -> its `dvc exp show --json` data, for experiments derived from ``baseline``."""
    command = ["dvc", "exp", "show", "--json", "--rev", baseline, "--hide-queued", "--hide-workspace"]
    out = run_dvc(command, paths, capture=True)
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
    from seqlm.tracking.store import connect, tracking_uri

    client = connect(tracking_uri(paths))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, []
    runs = client.search_runs(
        [found.experiment_id], max_results=5000, order_by=["attributes.start_time DESC"]
    )
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
        has_overrides = all(k in logged for k in e.overrides)
        return has_overrides and all(logged[k] == v for k, v in wanted.items() if k in logged)

    return next((r for r in runs if same(r)), None)


def tag_run(client, run_id: str, options: Options, e: Experiment) -> None:
    """Tag the run with the study and name it after the DVC experiment, for the MLflow UI."""
    from mlflow.entities import RunTag

    tags = {
        "seqlm.study": options.name,
        "seqlm.study.stamp": options.stamp,
        "seqlm.study.family": e.family,
        "seqlm.study.group": e.group,
        "seqlm.study.cell": e.cell,
        "seqlm.study.seed": str(e.seed),
        "dvc.experiment": e.name,
    }
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.update_run(run_id, name=e.name)


def _artifact_json(client, run_id: str, artifact: str) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())
        except Exception:  # noqa: BLE001 - a run that failed before evaluation has no such artifact
            return None


def machine_info(paths: Paths, baseline: str, started: float, finished: float, load: list[float]) -> dict:
    import torch

    dirty = bool(git(paths.root, "status", "--porcelain", "--untracked-files=no") or "")
    return {
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": _memory(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": baseline or "unknown",
        "dirty": dirty,
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "finished": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat(timespec="seconds"),
        "wall_minutes": (finished - started) / 60,
        "load_mean": sum(load) / len(load) if load else None,
        "load_max": max(load) if load else None,
    }


def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def _memory() -> str:
    try:
        import psutil
    except ImportError:
        return ""
    return f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
