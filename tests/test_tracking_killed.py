"""A real `mlflow server` killed with SIGKILL mid-train, mid-evaluate and mid-register.

Each stage runs as its own process (`python -m seqlm.cli <stage>`) against a server on 127.0.0.1 with a
sqlite backend. When the server dies the stage must end within a minute, non-zero, with one line on stderr
that names the server and what to do, and leave no output a later stage would trust. After the server is
restarted on the same store and port, a plain re-run completes: train resumes at the step it saved, and
the run and the registry hold one run and one version, the champion where the gate put it.

One tiny project and one server serve the three tests, in pipeline order; a test whose earlier stage has
not run (run alone with -k) runs it first without a kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from seqlm_testing import QUICK_EVALUATE, TINY_TRAIN, in_project, make_tokens
from team_stack import MLFLOW, free_port, start, stop, wait_until_up

from seqlm.core.errors import SeqlmError

# The stage must notice the dead server and exit within this (seqlm's MLflow HTTP defaults: a refused
# connection gives up in about 3 s, a hung one in under 50 s).
DETECT_S = 60
NAME = "seqlm"


@dataclass
class Server:
    """`mlflow server` on a fixed port and sqlite store, killed and restarted in place."""

    store: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # One worker and no job runner: ready in seconds at ~0.5 GB (tests/test_mlflow_server.py)
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        backend, artifacts = f"sqlite:///{self.store / 'mlflow.db'}", str(self.store / "artifacts")
        cmd = [MLFLOW, "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts]
        cmd += ["--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = self.store / "server.log"
        self.proc = start(cmd, env, log)
        wait_until_up(f"{self.url}/health", self.proc, log, timeout_s=90)

    def ensure_up(self) -> None:
        """Start it again if an earlier test killed it and failed before restarting it."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        """SIGKILL the server's whole process group: no goodbye, as when its machine dies."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url, registry_uri=self.url)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            stop(server.proc)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    with in_project(root) as project:
        make_tokens(project, lines=1500)
        # checkpoints on a clock, from the first steps on; validation at 60 and 120
        schedule = {
            "train.max_steps": 120,
            "train.val_every_steps": 60,
            "train.checkpoint_every_minutes": 0.002,
        }
        project.set(**(TINY_TRAIN | QUICK_EVALUATE | schedule))
    return project


def stage(project, server: Server, name: str, log: Path) -> subprocess.Popen:
    """``seqlm <name>`` in the project against the server, its stderr into ``log`` (a full pipe would
    stall it)."""
    env = os.environ | {"SEQLM_ROOT": str(project.root), "MLFLOW_TRACKING_URI": server.url}
    env.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)  # seqlm's own defaults, not an earlier test's
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "seqlm.cli", name],
            cwd=project.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def run_stage(project, server: Server, name: str) -> None:
    log = project.root / f"{name}.stderr"
    proc = stage(project, server, name, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def kill_server_when(project, server: Server, name: str, ready) -> tuple[int, str, float]:
    """Start stage ``name``, SIGKILL the server once ``ready()`` holds, and wait for the stage to end;
    its exit status, its stderr and the seconds from the kill to its exit."""
    log = project.root / f"{name}.killed.stderr"
    proc = stage(project, server, name, log)
    deadline = time.time() + 300
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None or not ready():
        proc.kill()
        pytest.fail(f"`seqlm {name}` never reached the moment to kill the server:\n{log.read_text()[-3000:]}")
    server.kill()
    killed = time.time()
    try:
        rc = proc.wait(timeout=DETECT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(
            f"`seqlm {name}` still ran {DETECT_S} s after the server died:\n{log.read_text()[-3000:]}"
        )
    return rc, log.read_text(), time.time() - killed


def assert_one_line_naming_the_server(stderr: str, server: Server, remedy: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert server.url in errors[0] and remedy in errors[0], errors[0]


def leftovers(project) -> list[str]:
    """Temporary twins of outputs (``.<name>.<pid>.<random>.tmp``) anywhere in the project."""
    return [str(p.relative_to(project.root)) for p in project.root.rglob(".*.tmp")]


def ensure_trained(project, server: Server) -> None:
    server.ensure_up()
    if not project.paths().run_json.is_file():
        run_stage(project, server, "train")


def ensure_evaluated(project, server: Server) -> None:
    ensure_trained(project, server)
    if not project.paths().eval_metrics.is_file():
        run_stage(project, server, "evaluate")


# ------------------------------------------------------------------------------------------ the messages


def test_a_refused_request_names_the_server_and_the_errno(monkeypatch):
    import mlflow

    from seqlm.tracking.store import describe_lost, server_lost

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"  # bound and closed again: nothing listens there
    with pytest.raises(SeqlmError) as lost, server_lost("evaluate", "re-run it"):
        mlflow.MlflowClient(url).get_run("0" * 32)
    refused = rf"the MLflow tracking server {url} \(\[Errno \d+\] Connection refused\)"
    assert re.fullmatch(rf"evaluate: lost {refused}; re-run it", str(lost.value))
    assert re.fullmatch(refused, describe_lost(lost.value.__context__))


def test_a_server_that_never_answers_is_given_up_after_the_timeout(monkeypatch):
    import socket

    import mlflow

    from seqlm.tracking.store import server_lost

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes the handshake; nothing ever answers
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        with pytest.raises(
            SeqlmError, match=rf"lost the MLflow tracking server {url} \(no answer within 1 s\)"
        ):
            with server_lost("register", "re-run it"):
                mlflow.MlflowClient(url).get_run("0" * 32)


@pytest.mark.slow
@pytest.mark.services
def test_an_answering_server_s_refusal_passes_through(server):
    """A missing run is the server's answer, not its loss: it keeps its own error."""
    from mlflow.exceptions import MlflowException

    from seqlm.tracking.store import server_lost

    server.ensure_up()
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        with server_lost("evaluate", "re-run it"):
            server.client().get_run("0" * 32)


def test_seqlm_s_http_defaults_keep_the_user_s_values(monkeypatch):
    from seqlm.tracking.store import HTTP_DEFAULTS, set_http_defaults

    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    set_http_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


# ------------------------------------------------------------------------------------------ the kills


@pytest.mark.slow
@pytest.mark.services
def test_server_killed_mid_train_then_train_resumes_at_the_saved_step(project, server):
    import torch

    paths = project.paths()
    server.ensure_up()

    rc, stderr, took = kill_server_when(project, server, "train", paths.last_ckpt.is_file)
    assert rc != 0 and took < DETECT_S
    assert_one_line_naming_the_server(stderr, server, "re-run `seqlm train` to resume")
    saved = torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved < 120
    # nothing evaluate would read: no run record, no exported model, no half-written file
    assert not paths.run_json.exists() and not paths.model_dir.exists()
    assert leftovers(project) == []
    run_id = json.loads(paths.last_state.read_text())["run_id"]

    server.start()
    run_stage(project, server, "train")
    out = (project.root / "train.stderr").read_text()
    assert "Traceback" not in out
    metrics = json.loads(paths.train_metrics.read_text())
    assert metrics["steps"] == 120
    assert json.loads(paths.run_json.read_text())["run_id"] == run_id  # resumed into the same run
    client = server.client()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    # the step continued: every logged step once, none lost to the dead server
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train_loss"))
    assert steps == list(range(5, 121, 5))
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [60, 120]


@pytest.mark.slow
@pytest.mark.services
def test_server_killed_mid_evaluate_then_evaluate_reruns(project, server):
    paths = project.paths()
    ensure_trained(project, server)
    run_id = json.loads(paths.run_json.read_text())["run_id"]

    def assembling_reports() -> bool:  # the metrics are computed; the MLflow run is not yet written
        return any(paths.eval_reports.parent.glob(f".{paths.eval_reports.name}.*.tmp"))

    rc, stderr, took = kill_server_when(project, server, "evaluate", assembling_reports)
    assert rc != 0 and took < DETECT_S
    assert_one_line_naming_the_server(stderr, server, "re-run")
    assert not paths.eval_reports.exists()
    assert leftovers(project) == []

    server.start()
    run_stage(project, server, "evaluate")
    metrics = json.loads(paths.eval_metrics.read_text())
    logged = server.client().get_run(run_id).data.metrics
    assert logged["test_bits_per_byte"] == metrics["bits_per_byte"]


@pytest.mark.slow
@pytest.mark.services
def test_server_killed_mid_register_then_one_version_and_the_champion(project, server):
    import sqlite3

    paths = project.paths()
    ensure_evaluated(project, server)
    run_id = json.loads(paths.run_json.read_text())["run_id"]
    db = server.store / "mlflow.db"

    def model_logged() -> bool:  # the pyfunc's logged model exists; its files are not yet uploaded
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from logged_models").fetchone()[0] > 0

    rc, stderr, took = kill_server_when(project, server, "register", model_logged)
    assert rc != 0 and took < DETECT_S
    assert_one_line_naming_the_server(stderr, server, "re-run")
    assert not paths.register_json.exists()
    assert leftovers(project) == []

    server.start()
    run_stage(project, server, "register")
    report = json.loads(paths.register_json.read_text())
    assert report["version"] == 1 and report["decision"] == "promoted"
    client = server.client()
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    assert client.get_model_version_by_alias(NAME, "challenger").version == "1"


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize(
    "argv, remedy",
    [
        (["models"], "nothing was changed"),
        (["promote", "1"], "promoting again is safe"),
        (["rollback"], "`seqlm models --history`"),
    ],
)
def test_server_lost_after_the_health_check_ends_a_registry_command_with_one_line(
    project, server, monkeypatch, capsys, argv, remedy
):
    """The server answers the command's health check, then dies before its first registry request."""
    from seqlm.cli import main
    from seqlm.registry import commands
    from seqlm.tracking.store import check_reachable

    server.ensure_up()

    def healthy_then_killed(uri: str) -> None:
        check_reachable(uri)
        server.kill()

    monkeypatch.setattr(commands, "check_reachable", healthy_then_killed)
    monkeypatch.setenv("SEQLM_ROOT", str(project.root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.chdir(project.root)
    started = time.time()
    try:
        rc = main(argv)
    finally:
        server.ensure_up()  # the next test finds it answering
    assert rc != 0 and time.time() - started < DETECT_S
    assert_one_line_naming_the_server(capsys.readouterr().err, server, remedy)
