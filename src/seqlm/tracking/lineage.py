"""Lineage tags for a run: the git commit and state, library versions, the data hashes in dvc.lock."""

from __future__ import annotations

import hashlib

from seqlm.core.git import git
from seqlm.core.paths import Paths

# The pipeline rewrites dvc.lock itself (`dvc repro` records each stage's hashes as it runs), so a
# fresh clone would be "dirty" by the time train starts; the data it pins is tagged as dvc.md5.*.
OWN_WRITES = (":(exclude)dvc.lock",)


def dvc_hashes(paths: Paths) -> dict[str, str]:
    """md5 of each stage output recorded in dvc.lock (the data and tokenizer a run was trained on)."""
    lock = paths.root / "dvc.lock"
    if not lock.is_file():
        return {}
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def git_state(paths: Paths) -> dict[str, str]:
    """The commit, whether tracked files differ from it (dvc.lock aside), and the hash of the diff."""
    commit = git(paths.root, "rev-parse", "HEAD")
    status = git(paths.root, "status", "--porcelain", "--untracked-files=no", "--", ":/", *OWN_WRITES)
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
    }
    if status:
        # Which uncommitted change the run saw: equal hashes, equal code.
        diff = git(paths.root, "diff", "HEAD", "--binary", "--", ":/", *OWN_WRITES)
        if diff is not None:
            tags["git.diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return tags


def lineage_tags(paths: Paths) -> dict[str, str]:
    import lightning
    import torch

    tags = git_state(paths)
    tags.update(
        {
            "torch.version": torch.__version__,
            "lightning.version": lightning.__version__,
            "seqlm.root": str(paths.root),
        }
    )
    tags.update({f"dvc.md5.{path}": md5 for path, md5 in dvc_hashes(paths).items()})
    return tags
