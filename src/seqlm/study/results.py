"""One experiment's outcome (``Result``) and the measurements the verdicts, tables and figures read off it.

Every reader here answers None (or an empty table) for a missing or failed experiment, so the claims
and the report can say "not tested" instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seqlm.study.plan import Experiment


@dataclass
class Result:
    experiment: Experiment
    status: str = "missing"  # "success" | "failed"
    rev: str | None = None
    train: dict | None = None  # reports/train/metrics.json
    eval: dict | None = None  # reports/eval/metrics.json
    ablation: dict | None = None  # reports/eval/context_ablation.json
    gradient: dict | None = None  # reports/eval/gradient_flow.json
    diverged: bool = False
    note: str = ""
    run_id: str | None = None
    max_grad_norm: float | None = None  # the largest logged gradient norm (a mean over train.log_every_steps)


def by_family(results, group: str) -> dict[str, Any]:
    return {r.experiment.family: r for r in results if r.experiment.group == group}


def probe_grid(results) -> dict[str, dict[int, Any]]:
    """Family -> delay -> the copy probe's result."""
    grid: dict[str, dict[int, Any]] = {}
    for r in results:
        if r.experiment.group == "probe":
            grid.setdefault(r.experiment.family, {})[r.experiment.delay] = r
    return grid


def ok(r) -> bool:
    return r is not None and r.status == "success" and r.eval is not None


def bpb(r) -> float | None:
    return r.eval["bits_per_byte"] if ok(r) else None


def recall(r) -> float | None:
    return r.eval.get("recall_accuracy") if ok(r) else None


def ablation(r) -> dict[str, float]:
    """``reset_every`` ("1", "4", …, "none") -> test bits per byte."""
    if not ok(r) or not r.ablation:
        return {}
    return {row["reset_every"]: row["bits_per_byte"] for row in r.ablation["rows"]}


def context_gain(r, k: str) -> float | None:
    """Bits per byte lost when the state is reset every k tokens, against the carried state."""
    rows = ablation(r)
    return rows[k] - rows["none"] if k in rows and "none" in rows else None


def gradient_ratio(r, k: int | None = None) -> float | None:
    """‖∂ℓ/∂h_{t−k}‖ / ‖∂ℓ/∂h_t‖ from the gradient-flow report; the last k when k is None."""
    if not ok(r) or not r.gradient:
        return None
    rows = r.gradient["rows"]
    k = len(rows) - 1 if k is None else k
    if k >= len(rows) or rows[0]["gradient_norm"] <= 0:
        return None
    return rows[k]["gradient_norm"] / rows[0]["gradient_norm"]
