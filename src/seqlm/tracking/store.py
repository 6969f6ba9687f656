"""The MLflow store: its URI (sqlite beside the project by default), whether it answers, a client."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
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


# MLflow's own defaults retry a refused connection for about four minutes (7 retries, the wait doubling
# from 4 s to 120 s) and wait 120 s for each answer, so a run whose server died or hung learned it
# minutes late, in the worst case twenty. Ours give up within a minute either way: 3 attempts of at most
# 15 s each, 0 s and 2 s apart (+ up to 1 s jitter each), and a refused connection in about 3 s. The
# timeout bounds each wait for the server's next bytes, not a whole upload. A value the user exported
# wins (docs/operations.md).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def set_http_defaults() -> None:
    """MLflow's HTTP client reads these at every request: set before the first, the user's kept."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


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

    set_http_defaults()
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


# ------------------------------------------------------------------------------------------ a lost server


def store_errors() -> tuple[type[BaseException], ...]:
    """What MLflow raises when its store is gone (a server refusing, timing out, or a broken database)."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, OSError)


def lost_connection(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the server stopped answering (refused, reset, timed out)."""
    import requests

    lost = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, lost):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_lost(exc: BaseException) -> str:
    """``the MLflow tracking server <url> (<what went wrong>)`` for a request that found no server, else
    the first line of MLflow's message; redacted either way."""
    import requests

    found = lost_connection(exc)
    if found is None:
        lines = str(exc).strip().splitlines()
        return "the MLflow tracking store: " + redact_url((lines[0] if lines else type(exc).__name__)[:200])
    request = getattr(found, "request", None)
    url = urllib.parse.urlsplit(getattr(request, "url", None) or "")
    server = f"{url.scheme}://{url.netloc}" if url.netloc else "(unknown address)"
    # urllib3 buries the cause in a long repr: "... [Errno 111] Connection refused'))", and a read timeout
    # after the last retry arrives as a ConnectionError: "... Read timed out. (read timeout=15)"
    text = str(found)
    errno = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
    waited = re.search(r"timeout=(\d+(?:\.\d+)?)", text)
    if errno:
        reason = errno.group(0).strip()
    elif waited:
        reason = f"no answer within {waited.group(1)} s"
    elif isinstance(found, requests.Timeout):
        reason = "no answer in time"
    else:
        reason = type(found).__name__
    return f"the MLflow tracking server {redact_url(server)} ({reason})"


@contextlib.contextmanager
def server_lost(stage: str, then: str) -> Iterator[None]:
    """Around a stage's MLflow calls: a server that stops answering ends the stage with one line,
    ``then`` saying what was kept and how to go on; any other error passes through unchanged."""
    try:
        yield
    except store_errors() as exc:
        if lost_connection(exc) is None:
            raise
        raise SeqlmError(f"{stage}: lost {describe_lost(exc)}; {then}") from None
