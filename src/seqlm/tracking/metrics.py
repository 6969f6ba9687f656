"""Metrics to MLflow in batches: one round trip per flush, not one per value.

When the tracking server stops answering, what could not be sent is kept (and written next to the
resume checkpoint), so a resumed run sends it and the run's curves have no hole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from seqlm.core.atomic import write_json
from seqlm.core.errors import SeqlmError
from seqlm.tracking.run import METRICS_PER_BATCH, RunHandle
from seqlm.tracking.store import describe_lost, store_errors

__all__ = ["MetricBuffer", "TrackingLost", "metric_list", "send_unsent", "store_errors"]


class TrackingLost(SeqlmError):
    """The tracking store stopped answering during training."""

    def __init__(self, cause: Exception):
        self.cause = cause
        super().__init__(f"lost {describe_lost(cause)}")


class MetricBuffer:
    """Collects step metrics and sends them in batches: one round trip per flush, not per value."""

    def __init__(self, run: RunHandle | None, flush_every: int = 500):
        self.run = run  # None until rank 0 attaches its run; the other ranks never add metrics
        self.flush_every = flush_every
        self.pending: list[Any] = []
        self.lost: Exception | None = None  # set when a flush failed; the metrics stay pending

    def add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in values.items())
        if len(self.pending) >= self.flush_every and self.lost is None:
            self.flush()

    def flush(self) -> bool:
        """Send what is pending; False, keeping it, when the store does not answer."""
        try:
            while self.pending:  # what was sent leaves the queue at once: a lost store keeps the rest
                self.run.client.log_batch(self.run.run_id, metrics=self.pending[:METRICS_PER_BATCH])
                del self.pending[:METRICS_PER_BATCH]
        except store_errors() as exc:
            self.lost = exc
            return False
        return True

    def save_unsent(self, path: Path) -> int:
        """Write the metrics not yet sent to ``path`` (for ``send_unsent`` on resume); how many."""
        if self.pending:
            rows = [[m.key, m.value, m.timestamp, m.step] for m in self.pending]
            old = json.loads(path.read_text()) if path.is_file() else []
            write_json(path, old + rows)
        return len(self.pending)


def send_unsent(run: RunHandle, path: Path) -> int:
    """Send the metrics a lost store could not take (``MetricBuffer.save_unsent``), then remove the file."""
    if not path.is_file():
        return 0
    from mlflow.entities import Metric

    metrics = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in json.loads(path.read_text())]
    run.log_metrics(metrics)
    path.unlink()
    return len(metrics)


def metric_list(values: dict[str, float], step: int) -> list:
    """MLflow ``Metric`` entities for ``values`` at ``step``, stamped now (for one ``log_batch``)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]
