"""Does bf16-mixed on this CPU train as well as 32-true? Equal steps, same seed, real tokens.

    python bench/precision_parity.py [--steps 300]

Needs data/tokens and data/tokenizer from `make run` (or `dvc repro tokenize`). Runs the real train
stage twice in a scratch project (its own MLflow store) with the default params except
train.precision, train.max_steps and the wall-clock budget. Last line:

    fp32_val_loss=… bf16_val_loss=… rel_diff=… fp32_tokens_per_s=… bf16_tokens_per_s=… speedup=…

`precision: auto` may pick bf16-mixed on the CPU only where rel_diff ≤ 0.01 (issue 3); the verdict
and the numbers go into docs/performance.md.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def train_once(scratch: Path, precision: str, steps: int) -> dict:
    from seqlm import config
    from seqlm.core.paths import Paths
    from seqlm.stages.train import run_train

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(
        precision=precision,
        max_steps=steps,
        max_minutes=0,
        val_every_steps=steps,
        early_stopping_patience=0,
        checkpoint_every_minutes=60,
    )
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))
    paths = Paths(scratch)
    return run_train(config.load(paths.params), paths, fresh=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not (ROOT / "data" / "tokens" / "meta.json").is_file():
        sys.exit("precision_parity: no data/tokens; run `make run` (or `dvc repro tokenize`) first")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="seqlm-parity-"))
    (scratch / "data").mkdir()
    for name in ("tokens", "tokenizer"):
        os.symlink(ROOT / "data" / name, scratch / "data" / name)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        fp32 = train_once(scratch, "32-true", args.steps)
        bf16 = train_once(scratch, "bf16-mixed", args.steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rel = abs(bf16["val_loss"] - fp32["val_loss"]) / fp32["val_loss"]
    print(
        f"fp32_val_loss={fp32['val_loss']:.4f} bf16_val_loss={bf16['val_loss']:.4f} rel_diff={rel:.4f} "
        f"fp32_tokens_per_s={fp32['tokens_per_s']:.0f} bf16_tokens_per_s={bf16['tokens_per_s']:.0f} "
        f"speedup={bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f} steps={args.steps}"
    )


if __name__ == "__main__":
    main()
