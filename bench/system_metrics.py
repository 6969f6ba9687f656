"""What one system-metrics sample costs: MLflow's monitors read and the averages sent to a sqlite store.

    python bench/system_metrics.py [--samples 50] [--every-seconds 10]

Creates a run in a scratch sqlite store, takes one sample to warm up, then times ``--samples`` more.
Last line: `sample_ms=… share_of_one_core_pct=… samples_per_5_min=…` at ``--every-seconds``, the
figure train.system_metrics_seconds was chosen by (docs/architecture.md, decision 7).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50, help="timed samples")
    parser.add_argument("--every-seconds", type=float, default=10.0, help="the interval to cost")
    args = parser.parse_args()

    from seqlm.tracking.run import RunHandle
    from seqlm.tracking.store import connect
    from seqlm.tracking.system import SystemSampler

    with tempfile.TemporaryDirectory() as scratch:
        client = connect(f"sqlite:///{Path(scratch) / 'mlflow.db'}")
        run = RunHandle.create(client, client.create_experiment("bench"))
        sampler = SystemSampler(run, args.every_seconds)
        sampler._sample()  # the first opens the store's connection
        start = time.perf_counter()
        for _ in range(args.samples):
            sampler._sample()
        seconds = (time.perf_counter() - start) / args.samples
    print(
        f"sample_ms={seconds * 1000:.1f} share_of_one_core_pct={seconds / args.every_seconds * 100:.3f} "
        f"samples_per_5_min={300 / args.every_seconds:.0f}"
    )


if __name__ == "__main__":
    main()
