"""Metrics to MLflow in batches: one round trip per flush, not one per value."""

from __future__ import annotations

import time
from typing import Any


class MetricBuffer:
    """Collects step metrics and sends them in batches: one round trip per flush, not per value."""

    def __init__(self, mlflow_client, run_id: str, flush_every: int = 500):
        self.client = mlflow_client
        self.run_id = run_id
        self.flush_every = flush_every
        self.pending: list[Any] = []

    def add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in values.items())
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)


def metric_list(values: dict[str, float], step: int) -> list:
    """MLflow ``Metric`` entities for ``values`` at ``step``, stamped now (for one ``log_batch``)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]
