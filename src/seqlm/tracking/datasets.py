"""The corpus splits as MLflow datasets: the training run's inputs and the datasets a logged model's
evaluation metrics were measured on.

Each split of ``data/raw/manifest.json`` is one dataset: named by the data source (credentials
redacted), its digest the start of the split's sha256, its profile the manifest's counts with the
whole sha256. The run's inputs tag each with its role (``mlflow.data.context``); the metrics name the
same dataset, so the UI links a model's test bits per byte to the test text it was scored on.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from seqlm.core.paths import SPLITS, Paths
from seqlm.core.redact import redact_url

if TYPE_CHECKING:
    from mlflow.entities import Dataset

    from seqlm.tracking.run import RunHandle

# MLflow caps a dataset digest at 36 characters, so the digest is a prefix of the split's sha256 (the
# length the download cache keys weights by); the profile keeps the whole hash.
DIGEST_CHARS = 16
CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}  # MLflow's own context words
CONTEXT_TAG = "mlflow.data.context"
# The MLflow source type of each data.source kind; builtin and synthetic corpora come from code.
SOURCE_TYPES = {"files": "local", "url": "http", "hf": "hugging_face"}
NAME_CHARS = 500  # MLflow's limit on a dataset name


def read_manifest(paths: Paths) -> dict | None:
    """The download manifest, or None when there is none (tokens made without the download stage)."""
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def split_datasets(manifest: dict) -> dict[str, Dataset]:
    """One MLflow ``Dataset`` per split that the manifest gives a sha256."""
    from mlflow.entities import Dataset

    source = redact_url(str(manifest.get("source", "unknown")))  # recorded redacted; again, to be sure
    splits = manifest.get("splits") or {}
    datasets = {}
    for split in SPLITS:
        stats = splits.get(split)
        if not isinstance(stats, dict) or not isinstance(stats.get("sha256"), str):
            continue
        datasets[split] = Dataset(
            name=source[:NAME_CHARS],
            digest=stats["sha256"][:DIGEST_CHARS],
            source_type=SOURCE_TYPES.get(source.partition(":")[0], "code"),
            source=json.dumps({"uri": source}),
            profile=json.dumps({"split": split} | stats, sort_keys=True),
        )
    return datasets


def log_dataset_inputs(run: RunHandle, paths: Paths) -> int:
    """The three splits as the run's dataset inputs (training, validation, test); how many."""
    from mlflow.entities import DatasetInput, InputTag

    manifest = read_manifest(paths)
    if manifest is None:
        return 0
    inputs = [
        DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, CONTEXTS[split])])
        for split, dataset in split_datasets(manifest).items()
    ]
    if inputs:
        _log_inputs_once_inserted(run, inputs)
    return len(inputs)


def _log_inputs_once_inserted(run: RunHandle, inputs, attempts: int = 3) -> None:
    """Two runs logging the same new dataset at once race to insert its row (PostgreSQL: UniqueViolation on
    dataset_pk, seen with two trainings at once on a shared server); the loser's retry finds the row and only
    links it to its run."""

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException as e:
            if attempt == attempts - 1 or "unique" not in str(e).lower():
                raise
            time.sleep(0.5 * (attempt + 1))


def evaluation_metrics(metrics: dict) -> dict[str, dict[str, float]]:
    """The numbers of ``reports/eval/metrics.json`` per split, under the names the run logs them by
    (``test_*`` and ``valid_*``, as the evaluate stage mirrors them)."""

    def numeric(d: dict) -> dict[str, float]:
        return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    return {
        "test": {f"test_{k}": v for k, v in numeric(metrics).items()},
        "valid": {f"valid_{k}": v for k, v in numeric(metrics.get("valid") or {}).items()},
    }


def log_model_metrics(run: RunHandle, model_id: str, metrics: dict, manifest: dict | None) -> int:
    """The evaluation's metrics on the logged model ``model_id``, each naming the split's dataset; how
    many were sent.

    Logging a model copies the run's step-0 metrics onto it, the evaluation's among them, but naming no
    dataset; a model metric cannot be changed, so these are sent beside them (MLflow adds them to the
    run's history too, at step 0, with the same values). What the model already holds with this
    dataset and value is not sent again: a retry adds nothing.
    """
    from mlflow.entities import Metric

    datasets = split_datasets(manifest) if manifest else {}
    on_model = run.client.get_logged_model(model_id).metrics or ()
    held = {(m.key, m.dataset_digest, m.value) for m in on_model}
    now = int(time.time() * 1000)
    batch = []
    for split, values in evaluation_metrics(metrics).items():
        dataset = datasets.get(split)
        name, digest = (dataset.name, dataset.digest) if dataset else (None, None)
        batch += [
            Metric(key, value, now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
            for key, value in values.items()
            if (key, digest, value) not in held
        ]
    run.log_metrics(batch)
    return len(batch)
