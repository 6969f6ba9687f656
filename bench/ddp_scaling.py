"""Training tokens/s of one process with N threads against N DDP processes with one thread each.

    python bench/ddp_scaling.py [--processes 2] [--steps 200]

In one run, on one scratch project over the embedded corpus with the default params (model, batch,
precision), the real train stage (`python -m seqlm.cli train`) runs twice for the same number of
optimizer steps, validation pushed past the end so only training is timed:

- one process, `OMP_NUM_THREADS=N`, `train.devices: 1`;
- N processes by Lightning's DDP on the CPU (gloo), `OMP_NUM_THREADS=1` each.

Each side's tokens/s is the stage's own `tokens_per_s` (tokens of all ranks over training seconds, in
reports/train/metrics.json). Note that under DDP every rank runs `train.batch_size` streams, so the
global batch is N times larger: the same steps move N times the tokens. Last line:
`ddp_scaling one_process_tokens_per_s=… ddp_tokens_per_s=… speedup=… processes=N steps=… machine=…`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage(root: Path, name: str, threads: int) -> None:
    env = os.environ | {"SEQLM_ROOT": str(root), "OMP_NUM_THREADS": str(threads)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "seqlm.cli", name], cwd=root, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"ddp_scaling: {name} failed:\n{proc.stderr[-3000:]}")


def set_params(root: Path, **overrides) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tokens_per_s(root: Path, threads: int, **train) -> float:
    set_params(root, **train)
    stage(root, "train", threads)
    return json.loads((root / "reports" / "train" / "metrics.json").read_text())["tokens_per_s"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    n = args.processes
    with tempfile.TemporaryDirectory(prefix="seqlm-ddp-bench-") as tmp:
        root = Path(tmp)
        shutil.copy(ROOT / "params.yaml", root / "params.yaml")
        stage(root, "download", n)
        stage(root, "tokenize", n)
        budget = {
            "train.accelerator": "cpu",
            "train.max_steps": args.steps,
            "train.max_minutes": 0,
            "train.val_every_steps": args.steps * 10,  # validation only at the end, outside the timing
            "train.early_stopping_patience": 0,
        }
        one = tokens_per_s(root, n, **budget, **{"train.devices": 1, "train.strategy": "auto"})
        print(f"one process × {n} threads: {one:,.0f} tokens/s", flush=True)
        ddp = tokens_per_s(root, 1, **budget, **{"train.devices": n, "train.strategy": "ddp"})
        print(f"{n} processes × 1 thread (DDP, gloo): {ddp:,.0f} tokens/s", flush=True)
    print(
        f"ddp_scaling one_process_tokens_per_s={one:.0f} ddp_tokens_per_s={ddp:.0f} speedup={ddp / one:.2f} "
        f"processes={n} steps={args.steps} machine={cpu_name().replace(' ', '_')}"
    )


if __name__ == "__main__":
    main()
