"""Evaluation throughput against training throughput, and evaluation memory against split length.

    python -P bench/eval_throughput.py [--steps 40] [--rounds 2] [--rss-tokens 50000] [--precision P]
    python -P bench/eval_throughput.py --model PROJECT/models/model [--rounds 2]

Same model and data as bench/train_throughput.py (2-layer LSTM 256, batch 32, bptt 35, a 25.7k
vocabulary, synthetic Zipf tokens), fp32. Evaluation is the evaluate stage's loop
(``seqlm.evaluation.metrics.stream_totals``: inference mode, carried state, float64 sums); training is
the minimal step loop of train_throughput.py (forward, backward, clip, AdamW). The two alternate in one
process; the best of each is kept. Evaluation does a third of training's matrix work and no optimizer
step, so the goal is ratio ≥ 3. The model's forward alone (no loss, no top-k) is timed too: its rate
÷ the training rate (``ceiling_ratio``) bounds what any evaluation loop can reach on this machine.

``--precision bf16-mixed`` times evaluation and the forward under bf16 autocast (the evaluate stage's
``evaluate.precision: auto`` on a model trained in bf16-mixed); training stays 32-true, the baseline.

``--model`` instead scores an exported model (a real run's ``models/model``) on its project's valid split
(``data/tokens/valid.bin``, found beside it) in fp32 and under bf16 autocast, alternating, and prints the
bits per byte and tokens/s of each, the difference and the speedup; last line:

    fp32_bits_per_byte=… bf16_bits_per_byte=… difference=… fp32_tokens_per_s=… bf16_tokens_per_s=… speedup=…

Memory: fresh child processes evaluate a split of N and of 4N tokens and report their peak RSS; the
difference must stay near zero (no logits or per-token values are kept). Last two lines:

    eval_rss_growth_mb=…
    eval_tokens_per_s=… train_tokens_per_s=… ratio=…
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _train_bench():
    # Loaded by path: putting bench/ on sys.path would let bench/tokenize.py shadow the stdlib module.
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config(hidden: int, layers: int):
    from seqlm import config

    return config.parse(
        {
            "model": {
                "family": "lstm",
                "embedding_size": hidden,
                "hidden_size": hidden,
                "num_layers": layers,
                "dropout": 0.2,
                "tie_weights": True,
            },
        }
    ).model


def build(hidden: int, layers: int, vocab: int):
    from seqlm.models import build_model

    torch.manual_seed(0)
    return build_model(model_config(hidden, layers), vocab)


def dtype_of(precision: str):
    return torch.bfloat16 if precision.startswith("bf16") else None


def eval_tokens_per_s(model, tokens, batch: int, bptt: int, precision: str = "32-true") -> float:
    from seqlm.evaluation import precision as eval_precision
    from seqlm.evaluation.metrics import stream_totals

    with eval_precision.autocast(dtype_of(precision), "cpu"):
        totals = stream_totals(model, tokens, batch, bptt)
    return totals.tokens / totals.seconds


def forward_tokens_per_s(model, tokens, batch: int, bptt: int, precision: str = "32-true") -> float:
    """The model's forward alone, state carried: the ceiling for any evaluation loop."""
    from seqlm.data.tokens import StreamWindows
    from seqlm.evaluation import precision as eval_precision

    stream, count = StreamWindows(tokens, batch, bptt), 0
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode(), eval_precision.autocast(dtype_of(precision), "cpu"):
        state = model.init_state(batch)
        for window in stream.windows():
            x, _ = stream.read(window)
            _, state = model(x, state)
            count += x.numel()
    return count / (time.perf_counter() - start)


def rss_child(args) -> None:
    """Evaluate ``args.rss_child`` (a token file) in this fresh process; print peak and anonymous RSS."""
    from seqlm.data.tokens import open_tokens

    model = build(args.hidden, args.layers, args.vocab)
    tokens = open_tokens(Path(args.rss_child), "uint16")
    eval_tokens_per_s(model, tokens, args.batch, args.bptt)
    # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork + exec.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"peak_rss_mb": _mb(status["VmHWM"]), "rss_anon_mb": _mb(status["RssAnon"])}))


def _mb(field: str) -> float:
    return int(field.split()[0]) / 1024  # "123456 kB"


def peak_rss_mb(path: Path, args) -> dict:
    model_args = {
        "--hidden": args.hidden,
        "--layers": args.layers,
        "--vocab": args.vocab,
        "--batch": args.batch,
    }
    cmd = [sys.executable, "-P", __file__, "--rss-child", str(path), "--bptt", str(args.bptt)]
    cmd += [str(x) for option in model_args.items() for x in option]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def real_model(args) -> None:
    """fp32 against bf16 autocast on an exported model and its project's valid split: bits/byte and speed."""
    from seqlm.data.tokens import open_tokens
    from seqlm.evaluation import precision as eval_precision
    from seqlm.evaluation.metrics import bits_per_byte, stream_totals
    from seqlm.models import export

    model_dir = Path(args.model)
    tokens_dir = model_dir.parent.parent / "data" / "tokens"
    meta = json.loads((tokens_dir / "meta.json").read_text())
    valid, split = open_tokens(tokens_dir / "valid.bin", meta["dtype"]), meta["splits"]["valid"]
    model, config = export.load(model_dir)
    trained = config.get("training", {}).get("precision")
    print(
        f"threads={torch.get_num_threads()} model={model_dir} trained_in={trained} valid_tokens={len(valid)} "
        f"batch={args.batch} bptt={args.bptt}",
        flush=True,
    )
    bpb, best = {}, {"32-true": 0.0, "bf16-mixed": 0.0}
    for _ in range(args.rounds):
        for precision in best:
            with eval_precision.autocast(dtype_of(precision), "cpu"):
                totals = stream_totals(model, valid, args.batch, args.bptt)
            bpb[precision] = bits_per_byte(totals.loss, split["tokens"], split["bytes"])
            best[precision] = max(best[precision], totals.tokens / totals.seconds)
            print(f"round: {precision} bits_per_byte={bpb[precision]:.6f} tokens_per_s={best[precision]:.0f}")
    fp32, bf16 = bpb["32-true"], bpb["bf16-mixed"]
    print(
        f"fp32_bits_per_byte={fp32:.6f} bf16_bits_per_byte={bf16:.6f} difference={bf16 - fp32:+.6f} "
        f"fp32_tokens_per_s={best['32-true']:.0f} bf16_tokens_per_s={best['bf16-mixed']:.0f} "
        f"speedup={best['bf16-mixed'] / best['32-true']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement (5 warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best of each kept")
    parser.add_argument("--eval-tokens", type=int, default=100_000, help="tokens per evaluation measurement")
    parser.add_argument("--rss-tokens", type=int, default=50_000, help="the 1× split for the memory check")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=25_700)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="evaluation's precision (bf16-mixed: bf16 autocast); training stays 32-true",
    )
    parser.add_argument("--model", help="an exported model: fp32 against bf16 on its project's valid split")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args)
    if args.model:
        return real_model(args)

    from seqlm.data.tokens import StreamWindows, open_tokens

    train_bench = _train_bench()
    tmp = Path(tempfile.mkdtemp(prefix="seqlm-bench-eval-"))
    total = max(args.eval_tokens, 4 * args.rss_tokens, args.batch * args.bptt * (args.steps + 1) + args.batch)
    train_bench.make_project(tmp, args.vocab, total, seed=0)
    tokens = open_tokens(tmp / "data" / "tokens" / "train.bin", "uint16")
    print(
        f"threads={torch.get_num_threads()} model=lstm {args.layers}x{args.hidden} vocab={args.vocab} "
        f"batch={args.batch} bptt={args.bptt} precision={args.precision}",
        flush=True,
    )

    best_eval = best_train = best_forward = 0.0
    split = tokens[: args.eval_tokens]
    for _ in range(args.rounds):
        model = build(args.hidden, args.layers, args.vocab)
        evaluation = eval_tokens_per_s(model, split, args.batch, args.bptt, args.precision)
        forward = forward_tokens_per_s(model, split, args.batch, args.bptt, args.precision)
        model = build(args.hidden, args.layers, args.vocab).train()
        windows = StreamWindows(tokens, args.batch, args.bptt)
        training = train_bench.raw_loop(model, windows, args.steps, 1e-3, 0.25, "32-true")
        print(
            f"round: eval_tokens_per_s={evaluation:.0f} forward_only_tokens_per_s={forward:.0f} "
            f"train_tokens_per_s={training:.0f}",
            flush=True,
        )
        best_eval, best_train = max(best_eval, evaluation), max(best_train, training)
        best_forward = max(best_forward, forward)
    # forward ÷ train bounds the ratio: what the evaluation adds (softmax normaliser, top-6) comes off it
    print(f"forward_only_tokens_per_s={best_forward:.0f} ceiling_ratio={best_forward / best_train:.2f}")

    sizes = {}
    for scale in (1, 4):
        path = tmp / f"rss_{scale}x.bin"
        np.asarray(tokens[: scale * args.rss_tokens]).tofile(path)
        sizes[scale] = peak_rss_mb(path, args)
        print(
            f"split={scale * args.rss_tokens} tokens peak_rss_mb={sizes[scale]['peak_rss_mb']:.1f} "
            f"rss_anon_mb={sizes[scale]['rss_anon_mb']:.1f}",
            flush=True,
        )
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"eval_rss_growth_mb={sizes[4]['peak_rss_mb'] - sizes[1]['peak_rss_mb']:.1f}")
    print(
        f"eval_tokens_per_s={best_eval:.0f} train_tokens_per_s={best_train:.0f} "
        f"ratio={best_eval / best_train:.2f}"
    )


if __name__ == "__main__":
    main()
