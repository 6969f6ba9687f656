"""Episodic probes at equal updates: which training loss learns the probe faster, and copy against adding.

    python bench/episodic_probes.py loss  [--steps N]  # copy × rnn/lstm: loss on every target or recall only
    python bench/episodic_probes.py tasks [--steps N]  # copy and adding × rnn/lstm × delays (--delays 10 25)

Each run trains a probe-sized model (embedding 32, hidden 64, one layer, no dropout; the study's probe
size) on ``EpisodeBatches`` of generated lines (``train.episodic``'s layout: B = 32 whole episodes per
batch, state reset per episode) with AdamW at lr 3e-3, weight decay 0.01, 50 warm-up steps, clipping at
0.5, one thread, and scores recall accuracy at the recall position on 1,024 test episodes (argmax over
the recall alphabet, as ``evaluation.probes`` does) every 25 updates. Symbols map to their own ids
(what ``tokenizer.type: char`` gives, without sentencepiece's ▁ piece); eos is id 2. One line per run:

    task=copy delay=10 family=lstm loss=all steps=600 first_90=175 final=1.000 chance=0.125 seconds=12.3
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
EOS = 2


def token_array(task: str, delay: int, lines: int, split: str, seed: int) -> tuple[np.ndarray, str]:
    from seqlm.data import synthetic

    alphabet = synthetic.alphabet(task)
    ids = {c: 3 + i for i, c in enumerate(alphabet)}
    text = "".join(synthetic.generate(task, delay, lines, seed, split))
    out = np.array([ids.get(c, EOS) for c in text], dtype=np.int64)
    return out, alphabet


def recall_accuracy(model, batches, symbol_ids) -> float:
    import torch

    from seqlm.data.episodes import recall_mask

    ids = torch.as_tensor(symbol_ids)
    correct = count = 0
    model.eval()
    with torch.inference_mode():
        for x, y, _ in batches:
            logits, _ = model(x, None)
            at = recall_mask(y)
            picked = logits[at][:, ids].argmax(1)
            correct += int((ids[picked] == y[at]).sum())
            count += int(at.sum())
    model.train()
    return correct / count


def run(
    task: str,
    delay: int,
    family: str,
    loss_on: str,
    steps: int,
    seed: int = 0,
    forget_bias: float = 0.0,
    lr: float = 3e-3,
    chrono_max: int = 0,
    stop_at: float = 0.0,
    input_dropout: float = 0.1,
    tie_weights: bool = True,
    embedding_init: str = "uniform",
) -> dict:
    import torch
    import torch.nn.functional as F

    from seqlm.config import ModelConfig
    from seqlm.data import synthetic
    from seqlm.data.episodes import IGNORE, EpisodeBatches, recall_mask
    from seqlm.models import build_model

    torch.manual_seed(seed)
    train, alphabet = token_array(task, delay, 32 * steps + 32, "train", seed)
    test, _ = token_array(task, delay, 1024, "test", seed)
    convention = synthetic.recall_convention(task, delay)
    symbol_ids = np.array([3 + alphabet.index(c) for c in convention["symbols"]])
    limit = synthetic.line_length(task, delay) + 1
    batches = EpisodeBatches(train, EOS, 32, limit, ("train", "train.bptt"), shuffle=True, seed=seed)
    scoring = list(EpisodeBatches(test, EOS, 256, limit, ("test", "evaluate.bptt")))
    gates = {"forget_bias": forget_bias, "chrono_max": chrono_max} if family in ("lstm", "gru") else {}
    if family == "gru":
        gates.pop("forget_bias")
    cfg = ModelConfig(
        family=family,
        embedding_size=32,
        hidden_size=64,
        dropout=0.0,
        input_dropout=input_dropout,
        tie_weights=tie_weights,
        embedding_init=embedding_init,
        **gates,
    )
    model = build_model(cfg, 3 + len(alphabet))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    first_90 = first_95 = None
    accuracy, start = 0.0, time.perf_counter()
    for step, (x, y, _) in enumerate(batches, start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 50)
        logits, _ = model(x, None)
        if loss_on == "recall":
            y = torch.where(recall_mask(y), y, IGNORE)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        if step % 25 == 0 or step == steps:
            accuracy = recall_accuracy(model, scoring, symbol_ids)
            if first_90 is None and accuracy >= 0.9:
                first_90 = step
            if first_95 is None and accuracy >= 0.95:
                first_95 = step
        if step == steps or (stop_at and accuracy >= stop_at):
            break
    return {
        "task": task,
        "delay": delay,
        "family": family,
        "loss": loss_on,
        "steps": step,
        "forget_bias": forget_bias,
        "chrono_max": chrono_max,
        "input_dropout": input_dropout,
        "tie_weights": tie_weights,
        "embedding_init": embedding_init,
        "lr": lr,
        "first_90": first_90,
        "first_95": first_95,
        "final": round(accuracy, 3),
        "chance": round(convention["chance"], 3),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["loss", "tasks"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--delays", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--families", nargs="+", default=["rnn", "lstm"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forget-bias", type=float, default=0.0, help="lstm: forget-gate bias at init")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument(
        "--chrono-max",
        type=int,
        default=0,
        help="lstm, gru: chrono initialisation up to this many steps (0 off)",
    )
    parser.add_argument(
        "--input-dropout", type=float, default=0.1, help="model.input_dropout (params.yaml's 0.1 by default)"
    )
    parser.add_argument("--untied", action="store_true", help="model.tie_weights false")
    parser.add_argument("--embedding-init", default="uniform", choices=["uniform", "normal"])
    parser.add_argument("--tasks", nargs="+", default=["copy", "adding"], help="tasks: copy adding")
    parser.add_argument(
        "--stop-at", type=float, default=0.0, help="stop a run at this recall (steps then = updates to solve)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "loss":
        grid = [
            ("copy", d, f, loss) for d in args.delays for f in args.families for loss in ("all", "recall")
        ]
    else:
        grid = [(t, d, f, "all") for t in args.tasks for d in args.delays for f in args.families]
    for task, delay, family, loss_on in grid:
        row = run(
            task,
            delay,
            family,
            loss_on,
            args.steps,
            args.seed,
            args.forget_bias,
            args.lr,
            args.chrono_max,
            args.stop_at,
            args.input_dropout,
            not args.untied,
            args.embedding_init,
        )
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
