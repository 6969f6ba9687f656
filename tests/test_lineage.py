"""Lineage tags in a temporary git repository: the pipeline's own dvc.lock is not dirt, other changes are
recorded with a hash of their diff."""

from __future__ import annotations

import subprocess

from seqlm.core.paths import Paths
from seqlm.tracking.lineage import lineage_tags as git_state


def git(root, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=root, check=True
    )


def test_dvc_lock_rewritten_by_the_run_is_not_dirty_but_other_changes_are_hashed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "clone")
    paths = Paths(tmp_path)

    clean = git_state(paths)
    assert clean["git.dirty"] == "false" and "git.diff_sha256" not in clean

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # what `dvc repro` does
    assert git_state(paths)["git.dirty"] == "false"

    (tmp_path / "train.py").write_text("print(2)\n")
    first = git_state(paths)
    assert first["git.dirty"] == "true"
    assert len(first["git.diff_sha256"]) == 64
    assert git_state(paths)["git.diff_sha256"] == first["git.diff_sha256"]

    (tmp_path / "train.py").write_text("print(3)\n")
    assert git_state(paths)["git.diff_sha256"] != first["git.diff_sha256"]
