"""Lineage tags for a run: the git commit and state, library versions, the data hashes in dvc.lock."""

from __future__ import annotations

from seqlm.core.git import git
from seqlm.core.paths import Paths


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


def lineage_tags(paths: Paths) -> dict[str, str]:
    import lightning
    import torch

    commit = git(paths.root, "rev-parse", "HEAD")
    status = git(paths.root, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        "torch.version": torch.__version__,
        "lightning.version": lightning.__version__,
        "seqlm.root": str(paths.root),
    }
    tags.update({f"dvc.md5.{path}": md5 for path, md5 in dvc_hashes(paths).items()})
    return tags
