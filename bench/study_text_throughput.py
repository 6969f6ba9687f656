"""Training tokens per second of each study text family, as `seqlm study` builds it, on one thread.

    python bench/study_text_throughput.py [--steps 30] [--rounds 3]

Each family gets the study's text overrides (the parameter-matched hidden size, the wide window's 32) on
params.yaml's batch and bptt and its vocabulary, and trains on random tokens with a carried state: forward,
chunk-free cross-entropy, backward, clipping and an AdamW step, in the precision ``train.precision: auto``
resolves to on this machine, one thread (the study runs its experiments with OMP_NUM_THREADS=1). The
families alternate in each round so all see the same machine state; the best round is kept. Per family:

    family=… parameters=… tokens_per_step=… tokens_per_s=…

then the load average over the run, which says how much other work shared the cores. These are the model's
steps alone: the pipeline adds Lightning's logging, validation and checkpoints (study.budget says how much).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import contextlib
import os
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


def models(params: dict):
    """(family, config, model) for each study text family, as the study plans it."""
    from seqlm import config
    from seqlm.models.build import build_model
    from seqlm.study import plan as planning

    cells = planning.plan(planning.preset("quick", stamp="bench"), params)
    for e in cells:
        if e.group == "text":
            cfg = config.parse(planning.apply(params, e.overrides))
            yield e.family, cfg, build_model(cfg.model, cfg.tokenizer.vocab_size)


def tokens_per_s(cfg, model, steps: int) -> float:
    from seqlm.training.device import detect_device, resolve_precision

    batch, bptt, vocab = cfg.train.batch_size, cfg.train.bptt, cfg.tokenizer.vocab_size
    bf16 = resolve_precision("auto", detect_device("cpu")) == "bf16-mixed"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = model.init_state(batch)
    model.train()
    data = torch.randint(0, vocab, (steps + 2, batch, bptt + 1))
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            started = time.perf_counter()
        x, y = data[i, :, :-1], data[i, :, 1:]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            logits, state = model(x, state)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        state = model.detach_state(state)
    return steps * batch * bptt / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per family per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each family's best is kept")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    built = list(models(params))
    best: dict[str, float] = {}
    load = []
    for _ in range(args.rounds):
        for family, cfg, model in built:
            best[family] = max(best.get(family, 0.0), tokens_per_s(cfg, model, args.steps))
            load.append(os.getloadavg()[0])
    for family, cfg, model in built:
        count = sum(p.numel() for p in model.parameters())
        print(
            f"family={family} parameters={count} tokens_per_step={cfg.train.batch_size * cfg.train.bptt} "
            f"tokens_per_s={best[family]:.0f}"
        )
    print(f"load_average_mean={sum(load) / len(load):.1f} cores={os.cpu_count()}")


if __name__ == "__main__":
    main()
