"""A DVC remote on S3 (dvc-s3 against moto's S3 server on 127.0.0.1): a teammate pulls instead of retraining.

One clone of the project runs the pipeline (`dvc repro`, tiny budget), commits dvc.lock and pushes; a
second clone of that commit pulls, and finds every stage output byte-identical and `dvc repro` with
nothing to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from seqlm_testing import QUICK_EVALUATE, REPO
from team_stack import REGION, S3_KEYS, moto_s3

pytestmark = [pytest.mark.slow, pytest.mark.services]  # moto's S3 server, two whole pipelines

BUCKET = "seqlm-dvc"
TINY = QUICK_EVALUATE | {
    "tokenizer.vocab_size": 500,
    "model.embedding_size": 32,
    "model.hidden_size": 32,
    "train.max_steps": 20,
    "train.max_minutes": 0,
    "train.val_every_steps": 10,
    "evaluate.prompts": ["In the beginning"],
    "evaluate.cloze_prompts": ["And God said"],
}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def git(cwd: Path, env: dict, *args: str) -> str:
    return run(["git", "-c", "user.name=seqlm", "-c", "user.email=seqlm@example.invalid", *args], cwd, env)


def the_project(dest: Path, env: dict) -> None:
    """A git repository holding the project's tracked files (as in a fresh clone), with tiny params."""
    files = run(["git", "ls-files", "-z"], REPO, env).split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for dotted, value in TINY.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, env, "init", "-q")
    git(dest, env, "add", "-A")
    git(dest, env, "commit", "-qm", "the project")


def add_remote(clone: Path, endpoint: str, env: dict) -> None:
    dvc = [str(Path(sys.executable).parent / "dvc"), "remote"]
    run([*dvc, "add", "-d", "-f", "team", f"s3://{BUCKET}/cache"], clone, env)
    run([*dvc, "modify", "team", "endpointurl", endpoint], clone, env)
    run([*dvc, "modify", "team", "region", REGION], clone, env)
    # Credentials stay out of git: .dvc/config.local, as a teammate would keep them.
    run([*dvc, "modify", "--local", "team", "access_key_id", S3_KEYS["AWS_ACCESS_KEY_ID"]], clone, env)
    run(
        [*dvc, "modify", "--local", "team", "secret_access_key", S3_KEYS["AWS_SECRET_ACCESS_KEY"]], clone, env
    )


def outputs(clone: Path) -> list[str]:
    """Every output path dvc.lock records (files and folders), relative to the clone."""
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    return sorted({out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])})


def digests(clone: Path, paths: list[str]) -> dict[str, str]:
    found = {}
    for rel in paths:
        target = clone / rel
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for f in files:
            found[str(f.relative_to(clone))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def test_push_from_one_clone_and_pull_into_another_with_nothing_to_rerun(tmp_path):
    venv_bin = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SEQLM_ROOT", None)
    for key in (*S3_KEYS, "AWS_PROFILE"):  # the remote's credentials come from .dvc/config.local only
        env.pop(key, None)
    dvc = str(venv_bin / "dvc")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    the_project(first, env)

    with moto_s3(BUCKET) as endpoint:
        run([dvc, "repro"], first, env)
        add_remote(first, endpoint, env)
        git(first, env, "add", "dvc.lock", ".dvc/config")
        git(first, env, "commit", "-qm", "pipeline run and the team's remote")
        run([dvc, "push"], first, env)

        git(tmp_path, env, "clone", "-q", str(first), str(second))
        add_remote(second, endpoint, env)  # the same remote, credentials again local to this clone
        run([dvc, "pull"], second, env)
        repro = run([dvc, "repro"], second, env)
        status = run([dvc, "status"], second, env)

    assert "Running stage" not in repro, repro
    assert "up to date" in status, status
    outs = outputs(first)
    assert {"data/raw", "data/tokens", "models/model", "reports/eval/metrics.json"} <= set(outs)
    pushed, pulled = digests(first, outs), digests(second, outs)
    assert pulled == pushed and len(pushed) > len(outs)  # folders hold several files each
    assert not (second / "mlflow.db").exists()  # a pull brings outputs, not the first clone's runs
