"""`seqlm score` throughput, and its memory against the size of the file.

    python -P bench/score.py [--model models/model] [--text data/raw/test.txt] [--mb 1] [--batch-size 32]
                             [--threads N]

The text (by default the project's test split) is repeated to about ``--mb`` MB and to four times that;
each file is scored per line and with ``--document`` in a fresh process (`seqlm score … --output`), which
reports its wall time and peak RSS. ``--threads`` sets torch's threads there (default: torch's own):
on a 2-core machine shared with other work, one thread scored lines 5-12x faster than two. Records
stream to the output as lines are scored, so the peak must not grow with the file. Last lines:

    score_rss_growth_mb=… (line) document_rss_growth_mb=…
    line_bytes_per_s=… line_lines_per_s=… document_bytes_per_s=…
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def child(argv: list[str], threads: int | None) -> None:
    """Run `seqlm score` in this fresh process; print its seconds and peak RSS as JSON on stdout."""
    import torch

    from seqlm.cli import main

    if threads:
        torch.set_num_threads(threads)

    start = time.perf_counter()
    code = main(["score", *argv])
    seconds = time.perf_counter() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    peak_mb = int(status["VmHWM"].split()[0]) / 1024  # VmHWM: this process's own peak, not its parent's
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": peak_mb}))


def run(argv: list[str], threads: int | None) -> dict:
    cmd = [sys.executable, "-P", __file__, "--child", json.dumps(argv)]
    cmd += ["--threads", str(threads)] if threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"seqlm score {' '.join(argv)} failed: {out.stderr.strip()}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/model", help="a model folder or models:/ URI")
    parser.add_argument("--text", default="data/raw/test.txt", help="text to repeat into the scored files")
    parser.add_argument("--mb", type=float, default=1.0, help="size of the 1x file in MB")
    parser.add_argument("--batch-size", type=int, default=32, help="lines per batch (per-line mode)")
    parser.add_argument("--threads", type=int, help="torch threads in the scoring process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child), args.threads)

    import torch

    text = Path(args.text).read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="seqlm-bench-score-"))
    print(
        f"threads={args.threads or torch.get_num_threads()} model={args.model} text={args.text} "
        f"batch_size={args.batch_size}"
    )
    found: dict[tuple[str, int], dict] = {}
    for scale in (1, 4):
        path = tmp / f"{scale}x.txt"
        path.write_bytes(text * max(1, round(scale * args.mb * 1e6 / len(text))))
        size, lines = path.stat().st_size, path.read_bytes().count(b"\n")
        for mode, extra in (("line", ["--batch-size", str(args.batch_size)]), ("document", ["--document"])):
            argv = [str(path), "--model", args.model, "--output", str(tmp / f"{mode}.jsonl"), *extra]
            r = found[mode, scale] = run(argv, args.threads) | {"bytes": size, "lines": lines}
            print(
                f"{mode} {scale}x: {size:,} bytes {lines:,} lines {r['seconds']:.1f} s "
                f"peak_rss_mb={r['peak_rss_mb']:.1f}",
                flush=True,
            )
    shutil.rmtree(tmp, ignore_errors=True)
    growth = {m: found[m, 4]["peak_rss_mb"] - found[m, 1]["peak_rss_mb"] for m in ("line", "document")}
    print(f"score_rss_growth_mb={growth['line']:.1f} (line) document_rss_growth_mb={growth['document']:.1f}")
    line, document = found["line", 4], found["document", 4]
    print(
        f"line_bytes_per_s={line['bytes'] / line['seconds']:.0f} "
        f"line_lines_per_s={line['lines'] / line['seconds']:.0f} "
        f"document_bytes_per_s={document['bytes'] / document['seconds']:.0f}"
    )


if __name__ == "__main__":
    main()
