"""A full disk in every stage: one line naming the output, a non-zero exit, nothing half-written.

The disk is really full: each stage runs in its own mount namespace (``unshare``, util-linux) where the
folder it writes is a small tmpfs holding a copy of that folder's contents and a filler file that leaves
only a few KiB free, so the kernel itself answers ENOSPC to whichever library writes (sentencepiece,
numpy, torch's checkpoint writer, safetensors, MLflow). What the stage left there is listed before the
namespace, and with it the tmpfs, goes away.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from seqlm_testing import Project, evaluated_project

pytestmark = pytest.mark.slow  # a whole pipeline, then each stage again in its own namespace

ON_A_FULL_DISK = r"""
set -eu
mount -t tmpfs -o size=256m tmpfs "$FOLDER"
cp -a "$BACKUP/." "$FOLDER/"
avail=$(df -B1 --output=avail "$FOLDER" | tail -n 1)
fallocate -l $((avail - HEADROOM)) "$FOLDER/.filler"
set +e
"$PYTHON" -m seqlm.cli "$STAGE"
rc=$?
rm -f "$FOLDER/.filler"
(cd "$FOLDER" && find . -mindepth 1 | sort) > "$LISTING"
exit $rc
"""


def run_on_full_disk(project: Project, stage: str, folder: str, inputs: tuple[str, ...], headroom_kib: int):
    """``seqlm <stage>`` with ``folder`` (relative to the project) on a tmpfs that holds a copy of the
    stage's ``inputs`` there and has ``headroom_kib`` free. The stage's old outputs are not copied: it
    removes them first, which would free their space.

    Returns (exit code, stderr, the folder's contents afterwards as relative paths).
    """
    target = project.root / folder
    backup = project.root.parent / "inputs-backup"
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir()
    for name in inputs:
        shutil.copytree(target / name, backup / name, symlinks=True)
    target.mkdir(parents=True, exist_ok=True)
    listing = project.root.parent / "listing.txt"
    env = {
        "FOLDER": str(target),
        "BACKUP": str(backup),
        "HEADROOM": str(headroom_kib * 1024),
        "PYTHON": sys.executable,
        "STAGE": stage,
        "LISTING": str(listing),
    }
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", ON_A_FULL_DISK],
        cwd=project.root,
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert listing.is_file(), f"the namespace did not run the stage: {proc.stderr[-2000:]}"
    left = [line.removeprefix("./") for line in listing.read_text().splitlines()]
    listing.unlink()
    return proc.returncode, proc.stderr, left


def the_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]


def leftovers(left: list[str]) -> list[str]:
    return [p for p in left if p.rsplit("/", 1)[-1].startswith(".") and p.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A project after download, tokenize, train (60 steps) and evaluate."""
    root = tmp_path_factory.mktemp("full-disk") / "project"
    root.mkdir()
    return evaluated_project(root)


@pytest.fixture
def proj(evaluated, monkeypatch) -> Project:
    monkeypatch.setenv("SEQLM_ROOT", str(evaluated.root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(evaluated.root)
    return evaluated


def test_tokenize_on_a_full_disk(proj):
    rc, stderr, left = run_on_full_disk(proj, "tokenize", "data", ("raw",), headroom_kib=16)
    line = the_error_line(stderr)
    assert rc != 0
    assert line.startswith("error: disk full (") and f"while writing {proj.root}/data/" in line
    assert ".tmp" not in line  # the output is named, not its temporary folder
    assert leftovers(left) == []
    assert not {"tokens", "tokenizer"} & {p.split("/")[0] for p in left}  # neither folder, not one alone
    assert {"raw/train.txt", "raw/valid.txt", "raw/test.txt"} <= set(left)  # the input is untouched


def test_train_on_a_full_disk(proj):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj.paths().mlflow_db}")
    before = {r.info.run_id for r in client.search_runs(["0", "1"])}
    proj.set(**{"train.checkpoint_every_minutes": 0.001})  # a checkpoint every step
    try:
        rc, stderr, left = run_on_full_disk(proj, "train", "models", (), headroom_kib=64)
    finally:
        proj.set(**{"train.checkpoint_every_minutes": 2.0})
    line = the_error_line(stderr)
    assert rc != 0
    assert line.startswith("error: disk full (") and f"while writing {proj.root}/models/" in line
    assert leftovers(left) == []
    assert "model" not in {p.split("/")[0] for p in left} and "run.json" not in left
    new = [r for r in client.search_runs(["0", "1"]) if r.info.run_id not in before]
    assert [r.info.status for r in new] == ["FAILED"]  # the run is closed, not left RUNNING


def test_evaluate_on_a_full_disk(proj):
    rc, stderr, left = run_on_full_disk(proj, "evaluate", "reports", ("train",), headroom_kib=16)
    line = the_error_line(stderr)
    assert rc != 0
    assert line.startswith("error: disk full (") and f"while writing {proj.root}/reports/eval" in line
    assert leftovers(left) == []
    assert not [p for p in left if p.startswith("eval")]  # no partial reports/eval
    assert "train/metrics.json" in left


def test_register_on_a_full_disk(proj):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj.paths().mlflow_db}")
    rc, stderr, left = run_on_full_disk(proj, "register", "mlartifacts", (), headroom_kib=16)
    line = the_error_line(stderr)
    assert rc != 0
    assert line.startswith("error: disk full (") and f"{proj.root}/mlartifacts" in line
    assert not client.search_model_versions("name = 'seqlm'")  # nothing half-registered
    assert not proj.paths().register_json.exists()
