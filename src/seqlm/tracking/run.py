"""The pipeline's MLflow run as one value: the client of the store that holds it, and its id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, Run

# The most one log_batch request may carry; MLflow refuses a larger batch.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100


@dataclass(frozen=True)
class RunHandle:
    """The run that train creates and evaluate and register reopen (decision 7, docs/architecture.md).

    In DDP only rank 0 holds one; the other ranks pass None, and log nothing.
    """

    client: MlflowClient
    run_id: str

    @classmethod
    def create(
        cls,
        client: MlflowClient,
        experiment_id: str,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        params: Sequence[Param] = (),
    ) -> RunHandle:
        """A new run in ``experiment_id``, its params sent in batches as large as MLflow takes."""
        run = cls(client, client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(run.run_id, params=params[i : i + PARAMS_PER_BATCH])
        return run

    def get(self) -> Run:
        return self.client.get_run(self.run_id)

    def log_metrics(self, metrics: list[Metric]) -> None:
        """Send ``metrics`` in as few requests as MLflow takes."""
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])
