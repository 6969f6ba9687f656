"""The MLflow store: its URI (sqlite beside the project by default), whether it answers, a client."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from seqlm.core.errors import SeqlmError
from seqlm.core.paths import Paths
from seqlm.core.redact import redact_url


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
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Paths(store_root(paths)).mlflow_db}"


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
        except (http.client.InvalidURL, ValueError):  # the message would repeat the URL, password and all
            reason = "not a valid URL; check the host and port"
        raise SeqlmError(
            f"MLflow tracking server {redact_url(uri)} is unreachable ({redact_url(reason)}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to use the local sqlite store"
        )
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not os.access(db.parent, os.W_OK):
            raise SeqlmError(
                f"MLflow store {db}: folder is not writable; fix its permissions or set MLFLOW_TRACKING_URI"
            )


def connect(uri: str):
    """A client for ``uri``, also made MLflow's current store (``mlflow.start_run``, ``log_model`` use it).

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI; the user's own value (or its absence)
    is kept, so a later project in the same process is not sent to this one's store. A URI holding a
    ``user:password@`` or a query also turns off MLflow's printing of run links, which would repeat it.
    """
    import mlflow

    if redact_url(uri) != uri:
        # MLflow prints "View run … at: <tracking URI>/#/…" to stdout as a run ends, password and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    user_choice = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_choice
    with _first_use_lock(uri):
        # MLflow opens the store here, and a fresh one gets its schema (tests/test_store_first_use.py
        # fails should a later MLflow open it lazily, outside the lock)
        return mlflow.MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """Serialise the first connection to a sqlite store across processes.

    MLflow creates the schema and the default experiment when a process first opens a store, without a
    lock: two `seqlm train` started together on a fresh ``mlflow.db`` both ran the migrations and all but
    one died ("table ... already exists"). A server's database is created by the server, once.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        lock = open(db.with_name(f".{db.name}.lock"), "a")  # noqa: SIM115 - held across the yield
    except OSError:  # a read-only folder: nobody can create the store there, so there is no race
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def experiment_id(mlflow_client, name: str, paths: Paths) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_location = None
    if mlflow_client.tracking_uri.startswith("sqlite:"):
        artifact_location = Paths(store_root(paths)).mlflow_artifacts.as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:
        # another process (a second `seqlm train` on the same store) created it since we looked
        found = mlflow_client.get_experiment_by_name(name)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id
