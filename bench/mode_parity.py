"""Every metric of the three data protocols (streamed, episodic, cloze) at fixed steps and seeds, so that a
refactor's before and after compare number for number (decision 23 was checked this way).

    python -P bench/mode_parity.py OUT.json [--steps 60]     # train + evaluate each mode in a tmp project
    python -P bench/mode_parity.py --compare BEFORE.json AFTER.json

Each mode runs the real download, tokenize, train and evaluate stage scripts of the checkout this file
belongs to, on a generated grammar corpus (the copy probe for episodic), in 32-true with one thread, and
keeps train and eval metrics and the validation curve, timings dropped. ``--compare`` prints every value
that differs with its relative difference, and the worst per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMINGS = {"tokens_per_s", "wall_seconds", "eval_tokens_per_s", "eval_blanks_per_s"}


def modes(steps: int) -> dict[str, dict]:
    from seqlm.data import synthetic

    probe = synthetic.episodic_probe_params("copy", 10, steps)
    return {
        "streamed": {},
        "cloze": {"train.objective": "cloze", "model.bidirectional": True, "model.family": "lstm"},
        "episodic": {
            **probe,
            "data.synthetic_symbols": 60_000,
            "evaluate.prompts": ["C"],
            "evaluate.cloze_prompts": ["C....?"],
        },
    }


def run(steps: int) -> dict:
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]
    from seqlm_testing import TINY_TRAIN, Project, grammar_text

    env = dict(
        os.environ,
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO / "src"),
    )
    result = {}
    for mode, keys in modes(steps).items():
        root = Path(tempfile.mkdtemp(prefix=f"seqlm-parity-{mode}-"))
        try:
            project = Project(root)
            (root / "corpus").mkdir()
            for split, n, seed in (("train", 3000, 0), ("valid", 300, 1), ("test", 300, 2)):
                (root / "corpus" / f"{split}.txt").write_text(grammar_text(n, seed))
            project.set(
                **{
                    "data.source": "files:corpus",
                    "tokenizer.vocab_size": 320,
                    **TINY_TRAIN,
                    "train.max_steps": steps,
                    "train.max_minutes": 0,
                    "train.val_every_steps": steps // 3,
                    "train.warmup_steps": 5,
                    "train.precision": "32-true",
                    "train.early_stopping_patience": 0,
                    "evaluate.context_resets": [1, 16],
                    "evaluate.gradient_flow_steps": 16,
                    "evaluate.sample_tokens": 10,
                    **keys,
                }
            )
            for stage in ("download", "tokenize", "train", "evaluate"):
                done = subprocess.run(
                    [sys.executable, str(REPO / "pipeline" / f"{stage}.py")],
                    cwd=root,
                    env=dict(env, SEQLM_ROOT=str(root)),
                    capture_output=True,
                    text=True,
                )
                if done.returncode:
                    sys.exit(f"{mode}: {stage} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            read = lambda p: json.loads((root / p).read_text())  # noqa: E731
            result[mode] = {
                "train": _drop(read("reports/train/metrics.json")),
                "eval": _drop(read("reports/eval/metrics.json")),
                "val_curve": read("reports/train/val_curve.json"),
            }
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _drop(d):
    return {k: _drop(v) if isinstance(v, dict) else v for k, v in d.items() if k not in TIMINGS}


def _flat(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, d


def compare(before: dict, after: dict) -> None:
    a, b = dict(_flat(before)), dict(_flat(after))
    worst: dict[str, tuple[float, str]] = {}
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key, "missing"), b.get(key, "missing")
        if x == y:
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        rel = abs(x - y) / max(abs(x), 1e-12) if numeric else float("inf")
        mode = key.split(".")[0]
        worst[mode] = max(worst.get(mode, (0.0, "")), (rel, key))
        print(f"{key}: {x!r} -> {y!r}" + (f" (relative {rel:.2e})" if numeric else ""))
    print(
        f"compared={len(a)} differing={sum(1 for k in a if a[k] != b.get(k))} "
        f"worst_relative={ {m: f'{r:.2e} {k}' for m, (r, k) in worst.items()} or 'none' }"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="where to write this checkout's metrics (JSON)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per mode")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        compare(*(json.loads(p.read_text()) for p in args.compare))
    elif args.out:
        args.out.write_text(json.dumps(run(args.steps), indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    else:
        parser.error("give OUT.json or --compare BEFORE AFTER")


if __name__ == "__main__":
    main()
