"""DVC's experiment queue, as the study drives it (docs/architecture.md, decision 12).

Owns the ``dvc exp run --queue`` and ``dvc queue start`` command lines, running dvc (captured through
files, retried while another dvc command holds the repository lock), reading ``dvc queue status``,
replacing queue workers that DVC lost, and waiting for the study's experiments to end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seqlm.core.errors import SeqlmError
from seqlm.core.git import git
from seqlm.core.paths import Paths
from seqlm.study.plan import Experiment

TARGET_STAGE = "evaluate"  # reproduce up to evaluate: study models are not registered
LOCK_RETRIES, LOCK_WAIT_S = 60, 10
STATES = ("Queued", "Running", "Success", "Failed")


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
    overrides = set_param_args(exp.overrides)
    return ["dvc", "exp", "run", "--queue", "-n", exp.name, *overrides, *copies, TARGET_STAGE]


def start_queue(jobs: int) -> list[str]:
    return ["dvc", "queue", "start", "-j", str(jobs)]


def worker_env() -> dict[str, str]:
    """The environment of the queue's workers and so of every stage they run.

    One intra-op thread per experiment: PyTorch's OpenMP threads spin-wait for each other, so on a machine
    whose cores another job also wants, a two-thread process of these small models ran up to 20× slower
    (docs/performance.md); ``--jobs`` experiments side by side use the cores instead. PATH starts with
    this environment's bin/, because DVC starts its workers as ``dvc`` and the stages as ``python``.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Each stage is a fresh interpreter: without cached bytecode every one of them compiles torch, lightning
    # and mlflow again (42 s of CPU against 15 s; the Makefile's comment), so let Python write .pyc files.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_dvc(
    args: list[str], paths: Paths, capture: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run dvc (this interpreter's, whatever PATH says); with ``capture``, its stdout and stderr as text.

    Captured through files, not pipes: `dvc queue start` leaves workers behind that inherit its output,
    and a pipe would not reach end-of-file before the last of them exits.
    """
    command = [sys.executable, "-m", "dvc", *args[1:]] if args[0] == "dvc" else args
    if not capture:
        return subprocess.run(command, check=False, cwd=paths.root, text=True, env=env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(
            command, check=False, cwd=paths.root, text=True, stdout=out, stderr=err, env=env
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, done.returncode, out.read(), err.read())


def run_locked(command: list[str], paths: Paths, env: dict | None = None) -> None:
    """Run a dvc command that takes the repository lock, waiting while another dvc command holds it."""
    for _ in range(LOCK_RETRIES):
        out = run_dvc(command, paths, capture=True, env=env)
        print((out.stdout + out.stderr).strip(), flush=True)
        if out.returncode == 0:
            return
        if "lock" not in out.stderr.lower():
            raise SeqlmError(f"`{' '.join(command[:5])} …` failed; see DVC's message above")
        print(
            f"study: another dvc command holds the repository lock; retrying in {LOCK_WAIT_S} s", flush=True
        )
        time.sleep(LOCK_WAIT_S)
    minutes = LOCK_RETRIES * LOCK_WAIT_S // 60
    raise SeqlmError(f"the DVC repository stayed locked for {minutes} minutes; try again later")


def untracked_sources(paths: Paths) -> list[str]:
    """Files the stages import or depend on that git does not track yet.

    A queued experiment runs in a copy of the last commit plus tracked changes; these files are
    copied in with ``-C`` (and named in a warning: the experiments' commits do not record them).
    """
    listed = git(paths.root, "ls-files", "--others", "--exclude-standard", "--", "src", "pipeline") or ""
    return [line for line in listed.splitlines() if line.endswith(".py")]


def queue_status(paths: Paths) -> tuple[dict[str, str], int | None]:
    """`dvc queue status`: experiment name -> Queued | Running | Success | Failed, and the live workers."""
    return parse_queue_status(run_dvc(["dvc", "queue", "status"], paths, capture=True).stdout)


def parse_queue_status(text: str) -> tuple[dict[str, str], int | None]:
    """`dvc queue status` output -> (experiment name -> state, live workers or None if not reported)."""
    status, workers = {}, None
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in STATES:
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


def check_empty(paths: Paths) -> None:
    """Refuse to start while the queue already holds queued or running experiments."""
    busy = [name for name, state in queue_status(paths)[0].items() if state in ("Queued", "Running")]
    if busy:
        raise SeqlmError(
            f"the DVC experiment queue already holds {len(busy)} queued or running experiments ({busy[0]}, "
            "…); "
            "run them (`dvc queue start`) or remove them (`dvc queue remove --queued`) before `seqlm study`"
        )


def wait_for(
    paths: Paths, names: list[str], jobs: int, load: list[float], poll_s: float = 15.0, grace_s: float = 60.0
) -> dict[str, str]:
    """Poll `dvc queue status` until none of ``names`` is queued or running; report each as it ends.

    Appends the 1-minute load average to ``load`` at every poll (the report says whether the study had
    the cores to itself).

    Polling, not `dvc exp run --run-all`: that holds the repository lock for the whole run, and so
    would lock every other dvc command in the workspace out for the better part of an hour. Workers that
    DVC lost are replaced (``workers_to_start``), once they have been missing for ``grace_s``: a worker
    just started, or between two experiments, may briefly not be counted.
    """
    done: dict[str, str] = {}
    short_since: float | None = None
    absent_since: dict[str, float] = {}
    while True:
        load.append(os.getloadavg()[0])
        status, workers = queue_status(paths)
        ours = _with_absent(names, status, absent_since, grace_s)
        short_since = _replace_lost_workers(paths, ours, workers, jobs, short_since, grace_s)
        for name, state in ours.items():
            if state in ("Success", "Failed") and name not in done:
                done[name] = state
                print(f"study: {len(done)}/{len(names)} {name}: {state}", flush=True)
        if len(done) == len(names):
            return done
        time.sleep(poll_s)


def _with_absent(names: list[str], status: dict[str, str], since: dict[str, float], grace_s: float) -> dict:
    """Each name's state; one gone from `dvc queue status` without a result is Failed once it has been
    missing for ``grace_s`` (a single listing can miss an experiment moving from Queued to Running: seen
    here, a running experiment reported failed)."""
    now = time.monotonic()
    ours = {}
    for name in names:
        if name in status:
            since.pop(name, None)
            ours[name] = status[name]
        else:
            gone = now - since.setdefault(name, now)
            ours[name] = "Failed" if gone >= grace_s else "Running"
    return ours


def _replace_lost_workers(
    paths: Paths, status: dict[str, str], workers: int | None, jobs: int, since: float | None, grace_s: float
) -> float | None:
    """Start the workers DVC lost once they have been missing for ``grace_s``; the new missing-since."""
    missing = workers_to_start(status, workers, jobs)
    if not missing:
        return None
    if since is None:
        return time.monotonic()
    if time.monotonic() - since < grace_s:
        return since
    print(
        f"study: DVC's queue is running {workers} of {jobs} workers with experiments still queued "
        f"(its workers sometimes stop early); starting {missing} more",
        flush=True,
    )
    # `dvc queue start -j N` makes sure workers 1 … N run and starts only the missing ones, so it gets the
    # total, not the number missing: `-j 1` beside a live worker 1 started nothing ("Started '0' new
    # experiments task queue worker") and the study went on with one worker. A worker started with nothing
    # left to take stops when the queue is empty.
    run_locked(start_queue(jobs), paths, env=worker_env())
    return None
