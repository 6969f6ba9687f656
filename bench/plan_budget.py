"""The budget planner against params.yaml as written: the same corpus, tokens and minutes, trained twice.

    python bench/plan_budget.py --minutes 3 [--corpus builtin:kjv] [--tokens-per-s N]

Runs the real download and tokenize stages once in a scratch project with the repository's params.yaml
(only ``data.source`` and ``train.max_minutes`` changed), then the train stage with ``train.plan: off``
and with ``train.plan: auto`` (tokens/s measured, or ``--tokens-per-s`` to simulate another machine).
Last line:

    plan=… expected_epochs=… off_valid_bpb=… auto_valid_bpb=… gain_bpb=… minutes=… corpus=… machine=…

gain_bpb = off − auto (positive: the plan helped).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_params(scratch: Path, corpus: str, minutes: float, plan: str, tokens_per_s: float) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = corpus
    params["train"].update(max_minutes=minutes, plan=plan, plan_tokens_per_s=tokens_per_s)
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))


def machine() -> str:
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    extras = [f for f in ("amx_bf16", "avx512_bf16") if f in cpuinfo]
    return f"{model} ({os.cpu_count()} cpus; {','.join(extras) or 'no bf16'})".replace(" ", "_")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes for each run")
    parser.add_argument("--corpus", default="builtin:kjv", help="a data.source, e.g. files:/path/*.txt")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="0: measure; else the plan's speed")
    args = parser.parse_args()

    from seqlm import config
    from seqlm.core.paths import Paths
    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize
    from seqlm.stages.train import run_train

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="seqlm-plan-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    paths, results = Paths(scratch), {}
    try:
        for plan in ("off", "auto"):
            write_params(scratch, args.corpus, args.minutes, plan, args.tokens_per_s)
            cfg = config.load(paths.params)
            if plan == "off":
                run_download(cfg, paths)
                run_tokenize(cfg, paths)
            results[plan] = run_train(cfg, paths, fresh=True)
            run = results[plan]
            print(
                f"plan {plan}: steps={run['steps']} tokens_per_s={run['tokens_per_s']:.0f} "
                f"valid_bpb={run['val_bits_per_byte']:.4f}",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    off, auto = results["off"]["val_bits_per_byte"], results["auto"]["val_bits_per_byte"]
    planned = results["auto"]
    print(
        f"plan={planned['plan_regime']} expected_epochs={planned['plan_expected_epochs']:.1f} "
        f"off_valid_bpb={off:.4f} auto_valid_bpb={auto:.4f} gain_bpb={off - auto:+.4f} "
        f"minutes={args.minutes:g} corpus={args.corpus} machine={machine()}"
    )


if __name__ == "__main__":
    main()
