"""Every path the pipeline reads or writes, named once, relative to the project root.

The root is the directory holding ``params.yaml``: the current directory for `dvc repro`
(DVC runs stages from the folder of dvc.yaml), overridable with ``SEQLM_ROOT``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_env(cls) -> "Paths":
        return cls(Path(os.environ.get("SEQLM_ROOT", os.getcwd())).resolve())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # download
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    def raw_split(self, split: str) -> Path:
        return self.raw_dir / f"{split}.txt"

    @property
    def manifest(self) -> Path:
        return self.raw_dir / "manifest.json"

    # tokenize
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def spm_model(self) -> Path:
        return self.tokenizer_dir / "spm.model"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "data" / "tokens"

    def tokens(self, split: str) -> Path:
        return self.tokens_dir / f"{split}.bin"

    @property
    def tokens_meta(self) -> Path:
        return self.tokens_dir / "meta.json"

    # train
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def checkpoint_dir(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def model_dir(self) -> Path:
        return self.models_dir / "model"

    @property
    def run_json(self) -> Path:
        return self.models_dir / "run.json"

    @property
    def train_reports(self) -> Path:
        return self.root / "reports" / "train"

    # evaluate / register
    @property
    def eval_reports(self) -> Path:
        return self.root / "reports" / "eval"

    @property
    def register_json(self) -> Path:
        return self.root / "reports" / "register.json"

    # MLflow's embedded store (DESIGN decision 7)
    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
