"""Nothing lost, nothing leaked: what a changed budget, --fresh, SIGTERM and a lost tracking store leave.

Each interrupted run is compared with an uninterrupted one to the last digit, like the kill -9 test in
tests/test_training.py.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from seqlm_testing import TINY_TRAIN, interrupt_training, make_tokens

from seqlm.training import resume

META = {"vocab_size": 320, "splits": {"train": {"tokens": 1000}}}


def fingerprint(project, **overrides) -> str:
    project.set(**overrides)
    return resume.resume_fingerprint(project.config(), META)


@pytest.mark.parametrize(
    ("key", "value", "resumes"),
    [
        ("train.max_minutes", 60.0, True),
        ("train.log_every_steps", 1, True),
        ("train.checkpoint_every_minutes", 0.5, True),
        ("train.early_stopping_patience", 9, True),
        ("train.max_epochs", 99, True),  # max_steps > 0 sets the cosine horizon, not max_epochs
        ("train.max_steps", 999, False),  # the cosine schedule spans max_steps
        ("train.val_every_steps", 7, False),  # which weights are best, plateau, early stopping
        ("train.lr", 0.5, False),
        ("model.hidden_size", 8, False),
        ("base.seed", 7, False),
    ],
)
def test_budgets_keep_the_fingerprint_and_everything_else_changes_it(project, key, value, resumes):
    project.set(**TINY_TRAIN)
    before = fingerprint(project)
    assert (fingerprint(project, **{key: value}) == before) is resumes


def test_max_steps_is_a_budget_when_the_schedule_does_not_span_it(project):
    project.set(**(TINY_TRAIN | {"train.schedule": "constant"}))
    before = fingerprint(project)
    assert fingerprint(project, **{"train.max_steps": 999}) == before


def test_the_recall_threshold_is_a_budget(project):
    """stop_at_recall only decides after which validation a run ends, so a changed one resumes."""
    project.set(**(TINY_TRAIN | {"train.episodic": True, "train.stop_at_recall": 0.9}))
    before = fingerprint(project)
    assert fingerprint(project, **{"train.stop_at_recall": 0.5}) == before
    assert fingerprint(project, **{"train.stop_at_recall": 0.0}) == before


def fake_resume_state(paths, fp: str, complete: bool = False) -> None:
    paths.models_dir.mkdir(exist_ok=True)
    paths.last_ckpt.write_bytes(b"checkpoint " + fp.encode())
    paths.best_weights.write_bytes(b"weights " + fp.encode())
    paths.last_state.write_text(json.dumps({"fingerprint": fp, "run_id": "r", "complete": complete}))


def test_other_params_move_the_checkpoint_aside_and_keep_the_last_two(project, capsys):
    paths = project.paths()
    for i, fp in enumerate(("aaaa", "bbbb", "cccc")):
        fake_resume_state(paths, fp)
        start = resume.resume_point(paths, "new", fresh=False)
        assert start.ckpt_path is None
        out = capsys.readouterr().out
        assert f"moved models/last.ckpt aside to models/previous/{fp}/" in out
        moved = paths.previous_resume_dir / fp
        assert (moved / "last.ckpt").read_bytes() == b"checkpoint " + fp.encode()
        assert (moved / "best.safetensors").is_file() and (moved / "last.json").is_file()
        assert not paths.last_ckpt.exists() and not paths.best_weights.exists()
        os.utime(moved, (1000 + i, 1000 + i))
        time.sleep(0.01)
    assert "deleted the oldest: models/previous/aaaa" in out
    assert sorted(p.name for p in paths.previous_resume_dir.iterdir()) == ["bbbb", "cccc"]


def test_fresh_moves_the_checkpoint_aside_too(project, capsys):
    paths = project.paths()
    fake_resume_state(paths, "same")
    assert resume.resume_point(paths, "same", fresh=True).ckpt_path is None
    assert "starting fresh (--fresh); moved models/last.ckpt aside" in capsys.readouterr().out
    assert (paths.previous_resume_dir / "same" / "last.ckpt").is_file()


def test_same_fingerprint_resumes(project, capsys):
    paths = project.paths()
    fake_resume_state(paths, "same")
    assert resume.resume_point(paths, "same", fresh=False).ckpt_path == str(paths.last_ckpt)
    assert "resuming from models/last.ckpt" in capsys.readouterr().out


# ----------------------------------------------------------------------------- interrupted trainings

LONGER = {"train.max_steps": 300, "train.val_every_steps": 100, "model.dropout": 0.1}


@pytest.fixture
def tiny(project):
    make_tokens(project)
    project.set(**(TINY_TRAIN | LONGER))
    return project


def train(project, **options):
    from seqlm.stages.train import run_train

    return run_train(project.config(), project.paths(), **options)


def mlflow_client(paths):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}")


@pytest.mark.slow
def test_sigterm_saves_marks_the_run_killed_and_the_rerun_matches(tiny, capsys):
    paths = tiny.paths()
    reference = train(tiny)["val_loss"]
    paths.last_ckpt.unlink()  # the reference run's; the subprocess must write its own
    tiny.set(**{"train.checkpoint_every_minutes": 0.002})  # a budget: the rerun still resumes

    rc, text = interrupt_training(tiny.root, paths.last_ckpt, signal.SIGTERM)
    assert rc != 0
    assert "Traceback" not in text
    assert "stopped by SIGTERM at step" in text and "saved models/last.ckpt" in text

    import torch

    saved_step = torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved_step < 300
    state = json.loads(paths.last_state.read_text())
    assert not state["complete"]
    assert mlflow_client(paths).get_run(state["run_id"]).info.status == "KILLED"

    capsys.readouterr()
    resumed = train(tiny)
    assert "resuming from models/last.ckpt" in capsys.readouterr().out
    assert resumed["steps"] == 300
    assert resumed["val_loss"] == reference


@pytest.mark.slow
def test_lost_tracking_store_saves_keeps_unsent_metrics_and_the_rerun_matches(tiny, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from seqlm.core.errors import SeqlmError

    paths = tiny.paths()
    reference = train(tiny)["val_loss"]
    tiny.set(**{"train.max_minutes": 30.0})  # a budget: the rerun still resumes

    real_log_batch = mlflow.MlflowClient.log_batch

    def server_gone_at_step_200(self, run_id, metrics=(), **kwargs):
        # The one failure point: what MLflow raises when its server has gone away.
        if any(m.key == "val_loss" and m.step == 200 for m in metrics):
            raise MlflowException(
                "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                "ConnectionError: [Errno 111] Connection refused"
            )
        return real_log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", server_gone_at_step_200)
    with pytest.raises(
        SeqlmError, match=r"lost the MLflow tracking store: .* at step 201; saved models/last"
    ):
        train(tiny, fresh=True)
    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", real_log_batch)

    import torch

    assert torch.load(paths.last_ckpt, map_location="cpu", weights_only=False)["global_step"] == 201
    run_id = json.loads(paths.last_state.read_text())["run_id"]
    assert mlflow_client(paths).get_run(run_id).info.status == "FAILED"
    unsent = json.loads(paths.unsent_metrics.read_text())
    assert {"train_loss", "val_loss"} <= {row[0] for row in unsent}

    resumed = train(tiny)
    assert resumed["steps"] == 300 and resumed["val_loss"] == reference
    assert not paths.unsent_metrics.exists()
    client = mlflow_client(paths)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(5, 301, 5))  # no hole, no duplicate
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [100, 200, 300]


@pytest.mark.parametrize("where", ["before_the_run", "after_the_loop"])
@pytest.mark.slow
def test_sigterm_outside_the_training_loop_is_one_line_and_never_leaves_the_run_running(
    tiny, monkeypatch, where
):
    from seqlm.core.errors import SeqlmError
    from seqlm.stages import train as stage

    paths = tiny.paths()
    reference = train(tiny)["val_loss"]
    target = "read_meta" if where == "before_the_run" else "_export"
    module = __import__("seqlm.data.tokens", fromlist=["read_meta"]) if where == "before_the_run" else stage
    real = getattr(module, target)

    def sigterm_then(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the stage's handler at the next bytecode
        return real(*args, **kwargs)

    monkeypatch.setattr(module, target, sigterm_then)
    runs_before = {r.info.run_id for r in mlflow_client(paths).search_runs(["0", "1"])}
    with pytest.raises(SeqlmError, match="stopped by SIGTERM") as stopped:
        train(tiny, fresh=True)
    monkeypatch.setattr(module, target, real)
    runs = mlflow_client(paths).search_runs(["0", "1"])
    assert "RUNNING" not in {r.info.status for r in runs}
    if where == "before_the_run":
        assert "before training started; nothing was saved" in str(stopped.value)
        assert {r.info.run_id for r in runs} == runs_before
        return
    assert "saved models/last.ckpt; re-run `seqlm train` to resume" in str(stopped.value)
    state = json.loads(paths.last_state.read_text())
    assert mlflow_client(paths).get_run(state["run_id"]).info.status == "KILLED"
    assert not paths.run_json.exists()  # evaluate must not take the killed run for a finished one
    resumed = train(tiny)
    assert resumed["steps"] == 300 and resumed["val_loss"] == reference
    assert mlflow_client(paths).get_run(state["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_store_lost_while_logging_the_results_is_one_line_and_the_rerun_finishes(tiny, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from seqlm.core.errors import SeqlmError

    paths = tiny.paths()
    reference = train(tiny)["val_loss"]

    def server_gone(self, *args, **kwargs):
        raise MlflowException("API request to http://127.0.0.1:5000 failed: [Errno 111] Connection refused")

    monkeypatch.setattr(mlflow.MlflowClient, "log_artifact", server_gone)
    with pytest.raises(
        SeqlmError, match=r"lost the MLflow tracking store: .*Connection refused \(after training\)"
    ):
        train(tiny, fresh=True)
    monkeypatch.undo()
    state = json.loads(paths.last_state.read_text())
    assert mlflow_client(paths).get_run(state["run_id"]).info.status == "FAILED"
    assert not paths.run_json.exists()

    resumed = train(tiny)
    assert resumed["steps"] == 300 and resumed["val_loss"] == reference
    assert mlflow_client(paths).get_run(state["run_id"]).info.status == "FINISHED"
    assert json.loads(paths.run_json.read_text())["run_id"] == state["run_id"]
