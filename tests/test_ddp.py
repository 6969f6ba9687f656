"""Lightning's own DDP on CPU (gloo), 2 processes: one run, one export, each rank's state resumed.

`seqlm train` with `train.devices: 2, train.strategy: ddp` on the CPU: Lightning starts the second rank
itself (no launcher of ours). The run's val loss is checked against a single-process evaluation of the
exported weights, and a job killed with kill -9 mid-run resumes to the uninterrupted run's val loss.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from seqlm_testing import TINY_TRAIN, make_tokens

from seqlm.training import resume

DDP = {
    "train.accelerator": "cpu",
    "train.devices": 2,
    "train.strategy": "ddp",
    "train.max_steps": 60,
    # the val loss is compared with an fp32 recomputation: under `auto` a CPU with AVX512-BF16 or AMX
    # validates in bf16-mixed, 2e-4 away (the AMD EPYC here); the reduction across ranks is the point
    "train.precision": "32-true",
    "train.val_every_steps": 20,
    "train.checkpoint_every_minutes": 0.0005,  # about every step: the decision must be the same on both
    "model.dropout": 0.1,  # each rank's RNG matters
}


@pytest.fixture
def ddp_project(project):
    make_tokens(project, lines=1500)
    project.set(**(TINY_TRAIN | DDP))
    return project


def launch(project, *args: str, launcher: tuple[str, ...] = (sys.executable,), log: str = "train.log"):
    env = os.environ | {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}  # one thread per rank
    env.pop("MLFLOW_TRACKING_URI")
    log = open(project.root / log, "ab")
    return subprocess.Popen(
        [*launcher, "-m", "seqlm.cli", "train", *args],
        cwd=project.root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the ranks Lightning starts share the group: one kill reaches them all
    )


def finish(proc: subprocess.Popen, project, log: str = "train.log") -> None:
    try:
        rc = proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("DDP training hung:\n" + (project.root / log).read_text()[-3000:])
    assert rc == 0, (project.root / log).read_text()[-3000:]


def train_metrics(project) -> dict:
    return json.loads(project.paths().train_metrics.read_text())


def runs(project) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project.paths().mlflow_db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def single_process_val_loss(project, streams: int, bptt: int) -> float:
    """The exported weights over the valid split in one process: the same streams, the state carried."""
    import torch
    import torch.nn.functional as F

    from seqlm.data.tokens import StreamWindows, open_tokens, read_meta
    from seqlm.models import export

    paths = project.paths()
    model, _ = export.load(paths.model_dir)
    tokens = open_tokens(paths.tokens("valid"), read_meta(paths)["dtype"])
    nll, count, state = 0.0, 0, None
    with torch.no_grad():
        for x, y, _ in StreamWindows(tokens, streams, bptt):
            state = model.init_state(x.shape[0], x.device) if state is None else state
            logits, state = model(x, state)
            nll += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            ).item()
            count += y.numel()
    return nll / count


@pytest.mark.slow
def test_two_processes_train_one_run_and_its_val_loss_is_the_exported_weights(ddp_project):
    finish(launch(ddp_project), ddp_project)
    metrics = train_metrics(ddp_project)
    assert metrics["steps"] == 60
    [run] = runs(ddp_project)  # rank 1 opened no run of its own
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final_val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-9)
    cfg = ddp_project.config().train
    alone = single_process_val_loss(ddp_project, cfg.batch_size * 2, cfg.bptt)
    assert math.isclose(alone, metrics["val_loss"], rel_tol=1e-5), (alone, metrics["val_loss"])


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun_train_one_run(ddp_project):
    import socket

    ddp_project.set(**{"train.devices": 1, "train.num_nodes": 2})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    common = (
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
    )
    nodes = [
        launch(ddp_project, launcher=(torchrun, *common, "--node_rank", str(rank)), log=f"node{rank}.log")
        for rank in (0, 1)
    ]
    for rank, proc in enumerate(nodes):
        finish(proc, ddp_project, log=f"node{rank}.log")
    metrics = train_metrics(ddp_project)
    assert metrics["steps"] == 60
    [run] = runs(ddp_project)
    assert run.info.status == "FINISHED" and run.data.params["train.num_nodes"] == "2"
    cfg = ddp_project.config().train
    alone = single_process_val_loss(ddp_project, cfg.batch_size * 2, cfg.bptt)
    assert math.isclose(alone, metrics["val_loss"], rel_tol=1e-5), (alone, metrics["val_loss"])


@pytest.mark.slow
def test_a_ddp_job_killed_mid_run_resumes_to_the_uninterrupted_result(ddp_project):
    import torch

    paths = ddp_project.paths()
    finish(launch(ddp_project), ddp_project)
    reference = train_metrics(ddp_project)["val_loss"]
    paths.last_ckpt.unlink()  # the reference run's; the killed job must write its own

    proc = launch(ddp_project, "--fresh")
    deadline = time.time() + 600
    step = 0
    while time.time() < deadline and proc.poll() is None and step < 10:
        time.sleep(0.05)
        if paths.last_ckpt.is_file():
            try:
                step = torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)["global_step"]
            except Exception:  # caught mid-rename: read it again
                continue
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert 0 < step < 60, f"the job was not killed mid-run (step {step})"
    saved = torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)["seqlm"]["ranks"]
    assert len(saved) == 2 and not torch.equal(saved[0]["train_state"][0], saved[1]["train_state"][0])

    finish(launch(ddp_project), ddp_project)
    assert "resuming from models/last.ckpt" in (ddp_project.root / "train.log").read_text()
    resumed = train_metrics(ddp_project)
    assert resumed["steps"] == 60 and resumed["val_loss"] == reference


def test_the_world_size_is_part_of_the_resume_fingerprint(project):
    project.set(**TINY_TRAIN)
    meta = {"vocab_size": 320}
    cfg = project.config()
    one, two = (resume.resume_fingerprint(cfg, meta, n) for n in (1, 2))
    assert one != two and one == resume.resume_fingerprint(cfg, meta)
