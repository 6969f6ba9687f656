"""models/run.json: the id of the pipeline's MLflow run, written by train, read by evaluate and register."""

from __future__ import annotations

import json

from seqlm.core.atomic import write_json
from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.core.redact import redact_url

RUN_FORMAT = "seqlm-run/1"


def write_run_json(paths: Paths, run_id: str, experiment: str, uri: str) -> None:
    write_json(
        paths.run_json,
        # redacted: a server's URI may hold user:password@, and models/ travels to DVC remotes
        {"format": RUN_FORMAT, "run_id": run_id, "experiment": experiment, "tracking_uri": redact_url(uri)},
    )


def read_run_json(paths: Paths) -> dict:
    """The pipeline's run, as recorded by the train stage; a missing or foreign file is a user error."""
    if not paths.run_json.is_file():
        raise SeqlmError(f"{paths.run_json}: not found; run the train stage first (`dvc repro train`)")
    try:
        info = json.loads(paths.run_json.read_text())
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or not info.get("run_id"):
        raise SeqlmError(
            f"{paths.run_json}: not a seqlm run record; re-run the train stage (`dvc repro -f train`)"
        )
    return info
