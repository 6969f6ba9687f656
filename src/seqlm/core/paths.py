"""Every path the pipeline reads or writes, named once, relative to the project root.

The root is the directory holding ``params.yaml``: the current directory for `dvc repro`
(DVC runs stages from the folder of dvc.yaml), overridable with ``SEQLM_ROOT``. Library code that fills
a folder it is handed (an ``atomic_dir``'s temporary twin of an output folder) takes the file names from
the constants below, which ``Paths`` is built from; tests/test_paths.py finds names spelled elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")
PARAMS = "params.yaml"
SPM_MODEL = "spm.model"  # sentencepiece writes it and spm.vocab from the prefix "spm"
# The evaluate stage's diagnostics: rows for `dvc plots` in the JSON, drawn in the PNG.
CONTEXT_ABLATION = "context_ablation.json"
CONTEXT_ABLATION_PLOT = "context_ablation.png"
GRADIENT_FLOW = "gradient_flow.json"
GRADIENT_FLOW_PLOT = "gradient_flow.png"


def raw_split_name(split: str) -> str:
    """The name of ``data/raw/<split>.txt``."""
    return f"{split}.txt"


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_env(cls) -> "Paths":
        return cls(Path(os.environ.get("SEQLM_ROOT", os.getcwd())).resolve())

    @property
    def params(self) -> Path:
        return self.root / PARAMS

    # download
    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    def raw_split(self, split: str) -> Path:
        return self.raw_dir / raw_split_name(split)

    @property
    def manifest(self) -> Path:
        return self.raw_dir / "manifest.json"

    # tokenize
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def spm_model(self) -> Path:
        return self.tokenizer_dir / SPM_MODEL

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
    def last_ckpt(self) -> Path:
        """The checkpoint an interrupted run resumes from (not a DVC output: it outlives failed runs)."""
        return self.models_dir / "last.ckpt"

    @property
    def last_state(self) -> Path:
        """Which run ``last.ckpt`` belongs to: its resume fingerprint, MLflow run id, whether it finished."""
        return self.models_dir / "last.json"

    @property
    def last_plan(self) -> Path:
        """The budget plan (train.plan: auto) of the run ``last.ckpt`` belongs to, reused when it resumes."""
        return self.models_dir / "last.plan.json"

    @property
    def unsent_metrics(self) -> Path:
        """Step metrics a lost tracking store did not take; sent when the run resumes."""
        return self.models_dir / "last.metrics.json"

    @property
    def previous_resume_dir(self) -> Path:
        """Resume state moved aside when params change or ``--fresh``: one folder per fingerprint."""
        return self.models_dir / "previous"

    @property
    def best_weights(self) -> Path:
        """The weights of the best validation so far, exported when training ends."""
        return self.models_dir / "best.safetensors"

    @property
    def model_dir(self) -> Path:
        return self.models_dir / "model"

    @property
    def run_json(self) -> Path:
        return self.models_dir / "run.json"

    @property
    def train_reports(self) -> Path:
        return self.root / "reports" / "train"

    @property
    def train_metrics(self) -> Path:
        return self.train_reports / "metrics.json"

    @property
    def train_curve(self) -> Path:
        return self.train_reports / "train_curve.json"

    @property
    def val_curve(self) -> Path:
        return self.train_reports / "val_curve.json"

    # evaluate / register
    @property
    def eval_reports(self) -> Path:
        return self.root / "reports" / "eval"

    @property
    def eval_metrics(self) -> Path:
        return self.eval_reports / "metrics.json"

    @property
    def eval_samples(self) -> Path:
        return self.eval_reports / "samples.md"

    @property
    def context_ablation(self) -> Path:
        return self.eval_reports / CONTEXT_ABLATION

    @property
    def context_ablation_plot(self) -> Path:
        return self.eval_reports / CONTEXT_ABLATION_PLOT

    @property
    def gradient_flow(self) -> Path:
        return self.eval_reports / GRADIENT_FLOW

    @property
    def gradient_flow_plot(self) -> Path:
        return self.eval_reports / GRADIENT_FLOW_PLOT

    @property
    def register_json(self) -> Path:
        return self.root / "reports" / "register.json"

    # MLflow's embedded store (docs/architecture.md, decision 7)
    def output_folders(self) -> tuple[Path, ...]:
        """The folders the stages write into: where a killed write's leftovers can be."""
        reports = self.train_reports.parent
        return (self.raw_dir.parent, self.models_dir, reports, self.train_reports, self.eval_reports)

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
