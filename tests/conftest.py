"""Shared fixtures. No network: MLflow telemetry and Hugging Face hub access are off for every test."""

from __future__ import annotations

import os

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from seqlm_testing import Project  # noqa: E402


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    monkeypatch.setenv("SEQLM_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path)


@pytest.fixture(autouse=True)
def _isolate_mlflow_globals():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI and keeps a module global: undo both per test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        while mlflow.active_run() is not None:
            mlflow.end_run()
        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
