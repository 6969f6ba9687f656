"""Resume: whether models/last.ckpt continues this training, decided by a fingerprint of params and data.

Decision 9 in docs/architecture.md. ``models/last.json`` records the fingerprint, the MLflow run and
whether the run finished; a re-run with the same fingerprint continues from the checkpoint at the
same step and stream column. Anything else starts over, and the old resume state is moved aside to
``models/previous/<fingerprint>/`` (the last two are kept), never deleted unannounced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

from seqlm.config import Config
from seqlm.core.atomic import write_json
from seqlm.core.paths import Paths

# Keys that bound, report or checkpoint training without changing a single step of it: a run
# continued under new values is the run an uninterrupted one with those values would have been.
# max_minutes only paces a cosine schedule by the clock, which is not reproducible to begin with;
# loss_chunk_mb changes how the same loss is summed (float rounding), not what it is; stop_at_recall,
# like early stopping, only decides after which validation the same trajectory ends.
# Not here: val_every_steps (it decides which weights are best, drives the plateau schedule and
# early stopping, so a changed cadence matches no uninterrupted run).
BUDGET_KEYS = frozenset(
    {
        "train.max_minutes",
        "train.log_every_steps",
        "train.checkpoint_every_minutes",
        "train.early_stopping_patience",
        "train.stop_at_recall",
        "train.loss_chunk_mb",
        "train.system_metrics_seconds",
    }
)
KEEP_PREVIOUS = 2


def resume_fingerprint(cfg: Config, meta: dict, world_size: int = 1) -> str:
    """Everything that makes a checkpoint belong to this training: the optimisation's params, the data
    and the world size (each rank's carried state and streams are saved for that many ranks).

    ``max_steps`` (or ``max_epochs`` when it is 0) sets the cosine schedule's horizon, so it counts
    under ``schedule: cosine``; under the other schedules both are budgets like those in BUDGET_KEYS.
    """
    train = cfg.train
    budgets = set(BUDGET_KEYS)
    if train.schedule != "cosine":
        budgets |= {"train.max_steps", "train.max_epochs"}
    elif train.max_steps:
        budgets.add("train.max_epochs")
    params = {k: v for k, v in cfg.flat("base", "model", "train").items() if k not in budgets}
    payload = {"params": params, "meta": meta}
    if world_size != 1:  # a single process keeps the fingerprints it had before world sizes counted
        payload["world_size"] = world_size
    payload = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Resume:
    ckpt_path: str | None
    run_id: str | None


def resume_point(paths: Paths, fingerprint: str, fresh: bool) -> Resume:
    """Continue an interrupted run with the same params; anything else moves its state aside."""
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
            print(f"train: starting fresh ({why}); {move_aside(paths, state.get('fingerprint'))}")
        else:
            _remove_loose(paths)
        return Resume(None, None)
    print(f"train: resuming from {ckpt.relative_to(paths.root)} (same params; pass --fresh to start over)")
    return Resume(str(ckpt), state.get("run_id"))


def peek(paths: Paths, fingerprint: str, fresh: bool) -> Resume:
    """What ``resume_point`` decided, read without touching a file: for ranks other than 0.

    Lightning starts the other local ranks from inside ``fit``, after rank 0 has moved stale state aside
    and recorded its run in models/last.json, so they find the state rank 0 resumes from, or none.
    """
    state = json.loads(paths.last_state.read_text()) if paths.last_state.is_file() else {}
    if fresh or not paths.last_ckpt.is_file() or state.get("fingerprint") != fingerprint:
        return Resume(None, None)
    return Resume(str(paths.last_ckpt), None)


def _resume_files(paths: Paths) -> list:
    return [paths.last_ckpt, paths.last_state, paths.best_weights, paths.unsent_metrics]


def _remove_loose(paths: Paths) -> None:
    """Without a checkpoint the rest of the resume state belongs to nothing that could continue."""
    for f in _resume_files(paths):
        f.unlink(missing_ok=True)


def move_aside(paths: Paths, fingerprint: str | None) -> str:
    """Move the resume state to models/previous/<fingerprint>/, keep the newest two; what happened."""
    root = paths.previous_resume_dir
    dest = root / (fingerprint or "unknown")
    replaced = dest.exists()
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in _resume_files(paths):
        if f.is_file():
            os.replace(f, dest / f.name)
    os.utime(dest)
    older = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    dropped = [d for d in older[KEEP_PREVIOUS:]]
    for d in dropped:
        shutil.rmtree(d, ignore_errors=True)
    rel = dest.relative_to(paths.root)
    text = (
        f"moved {paths.last_ckpt.relative_to(paths.root)} aside to {rel}/ (move its files back to resume it)"
    )
    if replaced:
        text += "; it replaces an older copy of the same fingerprint"
    if dropped:
        text += "; deleted the oldest: " + ", ".join(str(d.relative_to(paths.root)) for d in dropped)
    return text


def record(paths: Paths, fingerprint: str, run_id: str, complete: bool) -> None:
    """Write models/last.json: which run the checkpoint belongs to and whether it finished."""
    write_json(paths.last_state, {"fingerprint": fingerprint, "run_id": run_id, "complete": complete})
