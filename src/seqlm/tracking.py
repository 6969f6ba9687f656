"""MLflow: where the store is, whether it answers, the pipeline's one run, and lineage tags.

DESIGN decision 7: one MLflow run per pipeline run. The train stage creates it and records its id
in ``models/run.json``; evaluate and register reopen it. DVC's JSON metrics are the source of truth,
MLflow mirrors them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from seqlm.errors import SeqlmError
from seqlm.paths import Paths

RUN_FORMAT = "seqlm-run/1"


def store_root(paths: Paths) -> Path:
    """The repository that owns the MLflow store.

    `dvc exp run --queue/--temp` runs stages in a copy under ``<repo>/.dvc/tmp/exps/``; its runs
    belong in the original repository's store, so they sit beside the others in the UI.
    """
    parts = paths.root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return paths.root


def tracking_uri(paths: Paths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(paths) / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail now, with one line, rather than after an hour of training."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status == 200:
                    return
                reason = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        raise SeqlmError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or unset it to use the local sqlite store"
        )
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not os.access(db.parent, os.W_OK):
            raise SeqlmError(f"MLflow store {db}: folder is not writable; fix its permissions or set MLFLOW_TRACKING_URI")


def client(uri: str):
    """A client for ``uri``, also made MLflow's current store (``mlflow.start_run``, ``log_model`` use it).

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI; the user's own value (or its absence)
    is kept, so a later project in the same process is not sent to this one's store.
    """
    import mlflow

    user_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_choice
    return mlflow.MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client, name: str, paths: Paths) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if mlflow_client.tracking_uri.startswith("sqlite:"):
        artifact_location = (store_root(paths) / "mlartifacts").as_uri()
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def write_run_json(paths: Paths, run_id: str, experiment: str, uri: str) -> None:
    from seqlm.io import write_json

    write_json(paths.run_json, {"format": RUN_FORMAT, "run_id": run_id, "experiment": experiment, "tracking_uri": uri})


def read_run_json(paths: Paths) -> dict:
    """The pipeline's run, as recorded by the train stage; a missing or foreign file is a user error."""
    if not paths.run_json.is_file():
        raise SeqlmError(f"{paths.run_json}: not found; run the train stage first (`dvc repro train`)")
    try:
        info = json.loads(paths.run_json.read_text())
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or not info.get("run_id"):
        raise SeqlmError(f"{paths.run_json}: not a seqlm run record; re-run the train stage (`dvc repro -f train`)")
    return info


# ------------------------------------------------------------------------------------------ lineage


def _git(paths: Paths, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=paths.root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def dvc_hashes(paths: Paths) -> dict[str, str]:
    """md5 of each stage output recorded in dvc.lock (the data and tokenizer a run was trained on)."""
    lock = paths.root / "dvc.lock"
    if not lock.is_file():
        return {}
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def lineage_tags(paths: Paths) -> dict[str, str]:
    import lightning
    import torch

    commit = _git(paths, "rev-parse", "HEAD")
    status = _git(paths, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "torch.version": torch.__version__,
        "lightning.version": lightning.__version__,
        "seqlm.root": str(paths.root),
    }
    tags.update({f"dvc.md5.{path}": md5 for path, md5 in dvc_hashes(paths).items()})
    return tags


# ------------------------------------------------------------------------------------------ metrics


class MetricBuffer:
    """Collects step metrics and sends them in batches: one round trip per flush, not per value."""

    def __init__(self, mlflow_client, run_id: str, flush_every: int = 500):
        self.client = mlflow_client
        self.run_id = run_id
        self.flush_every = flush_every
        self.pending: list[Any] = []

    def add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in values.items())
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)
