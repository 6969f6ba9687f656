"""The value of future context: a BiLSTM against a left-to-right LSTM on the same cloze task.

    python -P bench/cloze_context.py [--minutes 0.9] [--out /tmp/seqlm-cloze-bench]

Both run the real download, tokenize, train and evaluate stages on builtin:kjv (a 1000-piece BPE) with
train.objective: cloze (15% of each 32-token window blanked), a 1-layer 128-wide LSTM, the same seed and
the same wall-clock budget (--minutes each, one thread); the only difference is model.bidirectional.
Evaluation blanks the same test tokens for both (decision 20 in docs/architecture.md). The last line:

    bilstm_bits_per_blank=… lstm_bits_per_blank=… bilstm_top1=… lstm_top1=… unigram_bits_per_blank=…
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "data.source": "builtin:kjv",
    "tokenizer.vocab_size": 1000,
    "model.family": "lstm",
    "model.embedding_size": 128,
    "model.hidden_size": 128,
    "model.dropout": 0.0,
    "train.objective": "cloze",
    "train.cloze_rate": 0.15,
    "train.batch_size": 32,
    "train.bptt": 32,
    "train.lr": 0.01,
    "train.warmup_steps": 20,
    "train.max_steps": 0,
    "train.val_every_steps": 100,
    "train.early_stopping_patience": 0,
    "evaluate.batch_size": 16,
    "evaluate.bptt": 64,
}
KEYS = ("bits_per_blank", "top1_accuracy", "top5_accuracy", "unigram_bits_per_blank", "blanks")


def write_params(root: Path, settings: dict) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in settings.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(root: Path, bidirectional: bool, minutes: float) -> dict:
    from seqlm import config
    from seqlm.core.paths import Paths
    from seqlm.stages.download import run_download
    from seqlm.stages.evaluate import run_evaluate
    from seqlm.stages.tokenize import run_tokenize
    from seqlm.stages.train import run_train

    root.mkdir(parents=True, exist_ok=True)
    os.environ["SEQLM_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)
    write_params(root, SETTINGS | {"model.bidirectional": bidirectional, "train.max_minutes": minutes})
    cfg, paths = config.load(root / "params.yaml"), Paths(root)
    run_download(cfg, paths)
    run_tokenize(cfg, paths)
    trained = run_train(cfg, paths, fresh=True)
    evaluated = run_evaluate(cfg, paths)
    return {k: evaluated[k] for k in KEYS} | {"steps": trained["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.9, help="training budget of each model")
    parser.add_argument("--out", type=Path, default=Path("/tmp/seqlm-cloze-bench"), help="scratch folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shutil.rmtree(args.out, ignore_errors=True)
    results = {name: run(args.out / name, name == "bilstm", args.minutes) for name in ("bilstm", "lstm")}
    print(json.dumps(results, indent=1))
    bi, lr = results["bilstm"], results["lstm"]
    print(
        f"bilstm_bits_per_blank={bi['bits_per_blank']:.3f} lstm_bits_per_blank={lr['bits_per_blank']:.3f} "
        f"bilstm_top1={bi['top1_accuracy']:.3f} lstm_top1={lr['top1_accuracy']:.3f} "
        f"unigram_bits_per_blank={bi['unigram_bits_per_blank']:.3f}"
    )


if __name__ == "__main__":
    main()
