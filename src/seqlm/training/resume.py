"""Resume: whether models/last.ckpt continues this training, decided by a fingerprint of params and data.

Decision 9 in docs/architecture.md. ``models/last.json`` records the fingerprint, the MLflow run and
whether the run finished; a re-run with the same fingerprint continues from the checkpoint at the
same step and stream column, anything else starts over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from seqlm.config import Config
from seqlm.core.atomic import remove, write_json
from seqlm.core.paths import Paths


def resume_fingerprint(cfg: Config, meta: dict) -> str:
    """Everything that makes a checkpoint belong to this training: params and the token data."""
    payload = json.dumps({"params": cfg.section_hash("base", "model", "train"), "meta": meta}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resume:
    ckpt_path: str | None
    run_id: str | None


def resume_point(paths: Paths, fingerprint: str, fresh: bool) -> Resume:
    """Continue an interrupted run with the same params; anything else starts over."""
    state_file = paths.last_state
    ckpt = paths.last_ckpt
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if fresh or not ckpt.is_file() or state.get("fingerprint") != fingerprint or state.get("complete"):
        if ckpt.is_file():
            why = (
                "--fresh"
                if fresh
                else ("the last run finished" if state.get("complete") else "params or data changed")
            )
            print(f"train: starting fresh ({why}); removing {ckpt.relative_to(paths.root)}")
        remove(ckpt, paths.best_weights, state_file)
        return Resume(None, None)
    print(
        f"train: resuming from {ckpt.relative_to(paths.root)} "
        "(same params; pass --fresh or delete it to start over)"
    )
    return Resume(str(ckpt), state.get("run_id"))


def record(paths: Paths, fingerprint: str, run_id: str, complete: bool) -> None:
    """Write models/last.json: which run the checkpoint belongs to and whether it finished."""
    write_json(paths.last_state, {"fingerprint": fingerprint, "run_id": run_id, "complete": complete})
