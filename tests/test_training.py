import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from seqlm_testing import TINY_TRAIN, make_tokens

from seqlm.core.errors import SeqlmError


@pytest.fixture
def tiny(project):
    make_tokens(project)
    project.set(**TINY_TRAIN)
    return project


def train(project, **options):
    from seqlm.stages.train import run_train

    return run_train(project.config(), project.paths(), **options)


def unigram_bits_per_byte(paths) -> float:
    meta = json.loads(paths.tokens_meta.read_text())
    dtype = meta["dtype"]
    counts = np.bincount(np.fromfile(paths.tokens("train"), dtype=dtype), minlength=meta["vocab_size"]) + 1
    logp = np.log2(counts / counts.sum())
    valid = np.fromfile(paths.tokens("valid"), dtype=dtype)
    return float(-logp[valid].sum() / meta["splits"]["valid"]["bytes"])


@pytest.mark.slow
def test_train_exports_model_reports_and_mlflow_run(tiny):
    import mlflow

    from seqlm.models import export

    paths = tiny.paths()
    metrics = train(tiny)
    for name in ("weights.safetensors", "config.json", "spm.model"):
        assert (paths.model_dir / name).is_file()
    saved = json.loads((paths.train_reports / "metrics.json").read_text())
    for key in (
        "train_loss",
        "val_loss",
        "val_bits_per_byte",
        "steps",
        "tokens",
        "tokens_per_s",
        "wall_seconds",
    ):
        assert key in saved and saved[key] == metrics[key]
    assert saved["steps"] == 200
    assert saved["tokens"] == 200 * 8 * 32
    curve = json.loads((paths.train_reports / "val_curve.json").read_text())
    assert [row["step"] for row in curve] == [100, 200]
    train_curve = json.loads((paths.train_reports / "train_curve.json").read_text())
    assert train_curve[-1]["train_loss"] < train_curve[0]["train_loss"]
    assert {"step", "train_loss", "lr", "grad_norm"} <= set(train_curve[0])
    # far better than a unigram model of the same tokens
    assert saved["val_bits_per_byte"] < 0.8 * unigram_bits_per_byte(paths)

    model, config = export.load(paths.model_dir)
    assert config["model"]["family"] == "lstm"

    run = json.loads(paths.run_json.read_text())
    client = mlflow.MlflowClient(f"sqlite:///{paths.mlflow_db}")
    got = client.get_run(run["run_id"])
    assert got.data.params["model.hidden_size"] == "64"
    assert {"git.commit", "git.dirty", "torch.version", "lightning.version", "device", "precision"} <= set(
        got.data.tags
    )
    assert len(client.get_metric_history(run["run_id"], "train_loss")) == 200 // 5
    assert len(client.get_metric_history(run["run_id"], "val_loss")) == 2
    assert "grad_norm" in got.data.metrics and "tokens_per_s" in got.data.metrics
    assert got.info.status == "FINISHED"


@pytest.mark.slow
def test_same_params_give_the_same_validation_loss(tiny, capsys):
    first = train(tiny)["val_loss"]
    second = train(tiny)["val_loss"]
    assert "starting fresh (the last run finished)" in capsys.readouterr().out
    assert f"{first:.6f}" == f"{second:.6f}"


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_at_the_saved_step(tiny, capsys):
    tiny.set(**{"train.max_steps": 600, "train.val_every_steps": 200, "model.dropout": 0.1})
    reference = train(tiny)["val_loss"]
    paths = tiny.paths()

    tiny.set(**{"train.checkpoint_every_minutes": 0.002})
    (paths.models_dir / "last.ckpt").unlink()  # the reference run's; the subprocess must write its own
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqlm.cli", "train", "--fresh"],
        cwd=tiny.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt, deadline = paths.models_dir / "last.ckpt", time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the training subprocess never wrote a checkpoint"
    assert not json.loads((paths.models_dir / "last.json").read_text())["complete"]

    import torch

    saved_step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved_step < 600
    capsys.readouterr()
    resumed = train(tiny)
    assert "resuming from models/last.ckpt" in capsys.readouterr().out
    assert resumed["steps"] == 600
    # Same stream position, carried state, optimizer and RNG state: the result matches the uninterrupted run.
    assert resumed["val_loss"] == pytest.approx(reference, rel=1e-5)


@pytest.mark.slow
def test_changed_params_start_fresh(tiny, capsys):
    train(tiny)
    paths = tiny.paths()
    state = json.loads((paths.models_dir / "last.json").read_text())
    (paths.models_dir / "last.json").write_text(json.dumps(state | {"complete": False}))
    tiny.set(**{"train.lr": 0.02})
    capsys.readouterr()
    train(tiny)
    assert "starting fresh (params or data changed)" in capsys.readouterr().out


def test_divergence_stops_with_the_step_and_exports_nothing(tiny):
    tiny.set(
        **{
            "model.family": "rnn",
            "model.nonlinearity": "relu",
            "model.recurrent_init": "identity",
            "train.optimizer": "sgd",
            "train.lr": 1e6,
            "train.grad_clip": 0,
            "train.warmup_steps": 0,
        }
    )
    with pytest.raises(
        SeqlmError, match=r"training diverged: the loss became (nan|inf) at step \d+; lower train.lr"
    ):
        train(tiny)
    paths = tiny.paths()
    assert not paths.model_dir.exists()
    assert not (paths.models_dir / "last.ckpt").exists()
    assert not (paths.train_reports / "metrics.json").exists()


def test_unreachable_tracking_server_fails_before_training(tiny, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(SeqlmError, match=rf"MLflow tracking server http://127.0.0.1:{port} is unreachable"):
        train(tiny)
    paths = tiny.paths()
    # Refused before any training step: no run record, no checkpoint, no model.
    assert not paths.last_state.exists()
    assert not paths.last_ckpt.exists()
    assert not paths.model_dir.exists()


# gru and rnn train for about a minute each on 2 shared cores, ffn_window and bow for seconds
@pytest.mark.parametrize(
    "family",
    [
        pytest.param("gru", marks=pytest.mark.slow),
        pytest.param("rnn", marks=pytest.mark.slow),
        "ffn_window",
        "bow",
    ],
)
def test_every_family_trains_and_exports(tiny, family):
    tiny.set(**{"model.family": family})
    metrics = train(tiny)
    assert math.isfinite(metrics["val_loss"])
    assert metrics["val_bits_per_byte"] < unigram_bits_per_byte(tiny.paths())


def test_a_presigned_url_source_never_reaches_the_run_params(project):
    # Refused when params.yaml is read, before any stage (or MLflow run) sees it; the credential goes
    # through the environment instead (SEQLM_URL_QUERY, SEQLM_HTTP_TOKEN, ~/.netrc)
    url = "https://user:secret@example.org/corpus.txt?X-Amz-Signature=TOKEN123"
    project.set(**{"data.source": f"url:{url}", "data.sha256": "0" * 64})
    with pytest.raises(SeqlmError, match="must not hold a credential") as refused:
        project.config()
    assert "TOKEN123" not in str(refused.value) and "secret" not in str(refused.value)


def test_a_loss_past_float_range_reports_no_perplexity_instead_of_crashing():
    from seqlm.stages.train import perplexity

    assert perplexity(1.0) == pytest.approx(math.e)
    assert perplexity(83_526.0) is None  # the study's provoked explosion, 3 s in: finite, but e^loss is not
