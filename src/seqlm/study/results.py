"""One experiment's outcome (``Result``) and the measurements the verdicts, tables and figures read off it.

Every reader here answers None (or an empty table) for a missing or failed experiment, so the claims
and the report can say "not tested" instead of failing. A diverged experiment is an outcome, not an
error: its ``status`` is "failed", ``diverged`` is set and its step metrics (the loss and gradient-norm
traces up to the divergence) are still read from its MLflow run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from seqlm.study.plan import Experiment

SPIKE_NATS = 0.5  # a logged training loss this far above the lowest logged before it is a spike


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
    # MLflow step metrics: name -> [(step, value)], for "grad_norm" and "train_loss"
    traces: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def ok(r) -> bool:
    return r is not None and r.status == "success" and r.eval is not None


def bpb(r) -> float | None:
    return r.eval.get("bits_per_byte") if ok(r) else None


def recall(r) -> float | None:
    return r.eval.get("recall_accuracy") if ok(r) else None


def solved(r) -> float | None:
    """1 when the probe run stopped because its valid recall reached train.stop_at_recall, 0 when it met its
    cap first (the study's probes: updates to solve)."""
    return (1.0 if r.train and r.train.get("stopped_by") == "solved" else 0.0) if ok(r) else None


def updates_to_solve(r) -> float | None:
    """The updates a solved probe run took; None when it did not solve."""
    return float(r.train["steps"]) if solved(r) else None


def unigram_bpb(r) -> float | None:
    """The add-one unigram's test bits per byte: what counting alone scores, the floor a model must beat."""
    return r.eval.get("unigram_bits_per_byte") if ok(r) else None


def bigram_bpb(r) -> float | None:
    """The add-one bigram's test bits per byte: the next floor, what one token of context buys by counting."""
    return r.eval.get("bigram_bits_per_byte") if ok(r) else None


def bits_per_blank(r) -> float | None:
    return r.eval.get("bits_per_blank") if ok(r) else None


def unigram_bits_per_blank(r) -> float | None:
    return r.eval.get("unigram_bits_per_blank") if ok(r) else None


def top1(r) -> float | None:
    return r.eval.get("top1_accuracy") if ok(r) else None


def top5(r) -> float | None:
    return r.eval.get("top5_accuracy") if ok(r) else None


def train_value(key: str):
    """A reader of reports/train/metrics.json's ``key`` (steps, wall_seconds, …)."""

    def read(r) -> float | None:
        return (r.train or {}).get(key) if r is not None and r.train else None

    return read


def minutes(r) -> float | None:
    seconds = train_value("wall_seconds")(r)
    return seconds / 60 if seconds is not None else None


def ablation(r) -> dict[str, float]:
    """``reset_every`` ("1", "4", …, "none") -> test bits per byte."""
    if not ok(r) or not r.ablation:
        return {}
    return {row["reset_every"]: row["bits_per_byte"] for row in r.ablation.get("rows", [])}


def context_gain(k: str):
    """A reader: bits per byte lost when the state is reset every k tokens, against the carried state."""

    def read(r) -> float | None:
        rows = ablation(r)
        return rows[k] - rows["none"] if k in rows and "none" in rows else None

    return read


def gradient_ratio(r, k: int | None = None) -> float | None:
    """‖∂ℓ/∂h_{t−k}‖ / ‖∂ℓ/∂h_t‖ from the gradient-flow report; the last k when k is None."""
    if not ok(r) or not r.gradient or not r.gradient.get("rows"):
        return None
    rows = r.gradient["rows"]
    k = len(rows) - 1 if k is None else k
    if k >= len(rows) or rows[0]["gradient_norm"] <= 0:
        return None
    return rows[k]["gradient_norm"] / rows[0]["gradient_norm"]


def log10_gradient_ratio(r) -> float | None:
    """log10 of ``gradient_ratio``; a ratio of 0 (below float64's range: the diagnostic runs in float64)
    reads as -324, its floor."""
    ratio = gradient_ratio(r)
    if ratio is None:
        return None
    return math.log10(ratio) if ratio > 0 else -324.0


def log10_max_grad_norm(r) -> float | None:
    """The largest logged gradient norm, log10; read from failed runs too (up to their divergence)."""
    norm = r.max_grad_norm if r is not None else None
    return math.log10(norm) if norm is not None and norm > 0 and math.isfinite(norm) else None


def loss_spikes(r) -> int | None:
    """Logged training losses more than SPIKE_NATS above the lowest logged before them."""
    trace = (r.traces or {}).get("train_loss") if r is not None else None
    if not trace:
        return None
    spikes, low = 0, math.inf
    for _, loss in trace:
        if not math.isfinite(loss) or loss > low + SPIKE_NATS:
            spikes += 1
        low = min(low, loss)
    return spikes


def by_label(results, group: str) -> dict[str, Any]:
    """Label -> the first result of that row (the tables' per-seed details read it)."""
    out: dict[str, Any] = {}
    for r in results:
        if r.experiment.group == group:
            out.setdefault(r.experiment.label or r.experiment.family, r)
    return out
