"""Training throughput: our Lightning step against a minimal raw PyTorch loop, same model and data.

    python bench/train_throughput.py [--precisions 32-true,bf16-mixed] [--steps 40] [--rounds 2]

The default model is the pytorch/examples word_language_model configuration (2-layer LSTM 256,
batch 32, bptt 35, a 25.7k-word vocabulary), on synthetic Zipf-distributed tokens. The paths
alternate in one process so all see the same machine state. Per precision:

    precision=… tokens_per_s=… raw_tokens_per_s=… overhead_ratio=… mfu=…

tokens_per_s is seqlm's train step (Lightning, params.yaml's train.loss_chunk_mb); raw_tokens_per_s a
hand-written loop with the full logits tensor. mfu = model FLOP/s (6 × matrix parameters used per token,
the nanoGPT estimate) ÷ the GEMM peak *of that precision's compute dtype* (fp32, bf16 or fp16 2048²
matmuls), measured in the same run, so each precision is judged against what this hardware can do in it.

The last line compares seqlm as a user gets it (``train.precision: auto`` resolved on this machine, the
default loss chunking) with the reference as pytorch/examples runs it (32-true, full logits, the default
allocator), same model and data:

    speedup_vs_reference=… seqlm_precision=… seqlm_tokens_per_s=… reference_tokens_per_s=…
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def gemm_peak_gflops(dtype=torch.float32, n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(model: torch.nn.Module) -> float:
    """6 × the matrix parameters a token passes through (forward 2×, backward 4×).

    The embedding is a lookup (no FLOPs) but, when tied, the same matrix is the decoder's.
    """
    matrix = sum(
        p.numel() for name, p in model.named_parameters() if p.dim() == 2 and not name.startswith("embedding")
    )
    if model.config.get("tie_weights"):
        matrix += model.embedding.weight.numel()
    return 6.0 * matrix


def make_project(root: Path, vocab: int, tokens: int, seed: int) -> None:
    from seqlm.core.atomic import write_json

    rng = np.random.default_rng(seed)
    # Zipf-like unigram frequencies, as in natural text.
    ids = np.minimum(rng.zipf(1.2, size=tokens) - 1, vocab - 1).astype(np.uint16)
    (root / "data" / "tokens").mkdir(parents=True)
    split = {"train": ids, "valid": ids[: tokens // 20], "test": ids[: tokens // 20]}
    for name, arr in split.items():
        arr.tofile(root / "data" / "tokens" / f"{name}.bin")
    meta = {
        "vocab_size": vocab,
        "dtype": "uint16",
        "splits": {
            k: {"tokens": len(v), "bytes": 4 * len(v), "words": len(v), "lines": 1} for k, v in split.items()
        },
    }
    write_json(root / "data" / "tokens" / "meta.json", meta)


DTYPES = {
    "32-true": torch.float32,
    "bf16-mixed": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16-mixed": torch.float16,
    "16-true": torch.float16,
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def raw_loop(
    model, windows, steps: int, lr: float, clip: float, precision: str, device: str = "cpu"
) -> float:
    """The hand-written loop: forward, loss, backward, clip, step, carry the detached state."""
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    autocast = precision.startswith(("bf16", "16"))
    scaler = torch.amp.GradScaler(device, enabled=precision.startswith("16"))  # fp16 needs loss scaling
    state = None
    it = iter(windows)
    timed_from, t0 = 5, 0.0
    for step in range(steps):
        if step == timed_from:
            _sync(device)
            t0 = time.perf_counter()
        x, y, _ = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        state = model.init_state(x.shape[0], x.device) if state is None else model.detach_state(state)
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
    _sync(device)
    return (steps - timed_from) * x.numel() / (time.perf_counter() - t0)


class _Stopwatch:
    """A callback timing training batches after a warm-up, like the raw loop."""

    def __init__(self, timed_from: int):
        import lightning.pytorch as pl

        class Watch(pl.Callback):
            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == timed_from:
                    self.t0 = time.perf_counter()

            def on_train_end(cb, trainer, pl_module):
                self.t1 = time.perf_counter()

        self.callback = Watch()
        self.t0 = self.t1 = 0.0


def lightning_loop(
    root: Path, cfg, vocab: int, steps: int, precision: str, mlflow_uri: str, device: str = "cpu"
) -> float:
    import lightning.pytorch as pl
    import mlflow

    from seqlm.core.paths import Paths
    from seqlm.models import build_model
    from seqlm.tracking.run import RunHandle
    from seqlm.training.callbacks import TrainProgress
    from seqlm.training.datamodule import TokenDataModule
    from seqlm.training.lightning_module import LitLanguageModel

    torch.manual_seed(0)
    model = build_model(cfg.model, vocab)
    dm = TokenDataModule(Paths(root), cfg.train.batch_size, cfg.train.bptt)
    client = mlflow.MlflowClient(mlflow_uri)
    run = RunHandle.create(client, client.get_experiment_by_name("Default").experiment_id)
    watch = _Stopwatch(timed_from=5)
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[TrainProgress(run, cfg.train.log_every_steps), watch.callback],
    )
    lm = LitLanguageModel(model, cfg.train, {"tokens": 1, "bytes": 1}, total_steps=steps)
    trainer.fit(lm, datamodule=dm)
    return (steps - 5) * cfg.train.batch_size * cfg.train.bptt / (watch.t1 - watch.t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precisions", default="32-true,bf16-mixed")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per measurement (5 warm-up)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; the best of each path is kept"
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=25_700)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda on a GPU box, e.g. --hidden 1024 --layers 1 --vocab 32000 --batch 128 --bptt 128 "
        "--precisions 32-true,bf16-mixed,16-mixed",
    )
    args = parser.parse_args()

    import logging

    import mlflow

    from seqlm import config
    from seqlm.data.tokens import StreamWindows, open_tokens
    from seqlm.models import build_model

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    cfg = config.parse(
        {
            "model": {
                "family": "lstm",
                "embedding_size": args.hidden,
                "hidden_size": args.hidden,
                "num_layers": args.layers,
                "dropout": 0.2,
                "input_dropout": 0.2,
                "tie_weights": True,
            },
            "train": {
                "batch_size": args.batch,
                "bptt": args.bptt,
                "warmup_steps": 0,
                "schedule": "constant",
                "grad_clip": 0.25,
                "lr": 1e-3,
                "log_every_steps": 10,
            },
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix="seqlm-bench-"))
    make_project(tmp, args.vocab, 400_000, seed=0)
    mlflow_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(mlflow_uri)

    from seqlm.training.device import detect_device, resolve_precision

    default_precision = resolve_precision("auto", detect_device("auto" if args.device == "cuda" else "cpu"))
    precisions = list(dict.fromkeys(["32-true", default_precision, *args.precisions.split(",")]))
    peaks = {
        dtype: gemm_peak_gflops(dtype, device=args.device)
        for dtype in {DTYPES[p] for p in precisions} | {torch.float32}
    }
    where = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu threads={torch.get_num_threads()}"
    )
    print(
        f"device={where!r} "
        + " ".join(f"{str(d).removeprefix('torch.')}_gemm_peak_gflops={g:.0f}" for d, g in peaks.items())
    )
    tokens = open_tokens(tmp / "data" / "tokens" / "train.bin", "uint16")
    results = {}
    for precision in precisions:
        best_l = best_r = 0.0
        for _ in range(args.rounds):
            best_l = max(
                best_l, lightning_loop(tmp, cfg, args.vocab, args.steps, precision, mlflow_uri, args.device)
            )
            torch.manual_seed(0)
            model = build_model(cfg.model, args.vocab).train()
            windows = StreamWindows(tokens, cfg.train.batch_size, cfg.train.bptt)
            best_r = max(best_r, raw_loop(model, windows, args.steps, 1e-3, 0.25, precision, args.device))
        fpt = flops_per_token(build_model(cfg.model, args.vocab))
        results[precision] = {
            "tokens_per_s": best_l,
            "raw_tokens_per_s": best_r,
            "overhead_ratio": best_l / best_r,
            "mfu": best_l * fpt / (peaks[DTYPES[precision]] * 1e9),
        }
        r = results[precision]
        print(
            f"precision={precision} "
            + " ".join(f"{k}={v:.3f}" if v < 10 else f"{k}={v:.0f}" for k, v in r.items()),
            flush=True,
        )
    if "32-true" in results and "bf16-mixed" in results:
        speedup = results["bf16-mixed"]["tokens_per_s"] / results["32-true"]["tokens_per_s"]
        print(f"bf16_speedup={speedup:.2f}")
    reference = results["32-true"]["raw_tokens_per_s"]
    ours = results[default_precision]["tokens_per_s"]
    print(
        f"speedup_vs_reference={ours / reference:.2f} seqlm_precision={default_precision} "
        f"seqlm_tokens_per_s={ours:.0f} reference_tokens_per_s={reference:.0f}"
    )
    (Path(__file__).parent / "out").mkdir(exist_ok=True)
    (Path(__file__).parent / "out" / "train_throughput.json").write_text(json.dumps(results, indent=2))
    assert all(math.isfinite(r["tokens_per_s"]) for r in results.values())


if __name__ == "__main__":
    main()
