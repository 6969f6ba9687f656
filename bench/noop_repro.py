"""Seconds of a `dvc repro` with nothing changed: the cost of asking "is anything stale?".

    python bench/noop_repro.py [--runs 5]

Run from the project root after `make run` (the first, warming `dvc repro` brings the pipeline up to
date if it is not). Last line: `noop_repro_median_s=… runs=…`. Goal: ≤ 2 s.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repro() -> tuple[float, str]:
    dvc = Path(sys.executable).parent / "dvc"
    env = os.environ | {"PATH": f"{dvc.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    out = subprocess.run([str(dvc), "repro"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    repro()  # warm: brings the pipeline up to date and DVC's hash cache with it
    times = []
    for _ in range(args.runs):
        seconds, stdout = repro()
        if "Running stage" in stdout:
            sys.exit(f"noop_repro: a stage re-ran on an unchanged pipeline:\n{stdout}")
        times.append(seconds)
    print(" ".join(f"{t:.2f}" for t in times))
    print(f"noop_repro_median_s={statistics.median(times):.2f} runs={args.runs}")


if __name__ == "__main__":
    main()
