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
