"""Time to quality: seqlm's train stage at its defaults against two yardsticks, for equal minutes.

    python bench/time_to_quality.py --minutes 5 [--corpus builtin:kjv] [--skip-reference] [--skip-transformer]

The first yardstick is pytorch/examples word_language_model as its README runs it, scaled to the size
the issue names: a word vocabulary (whitespace split, ``<eos>`` per line, built from all three splits as
its ``data.Corpus`` does, so it never meets an unknown word: that favours the reference), a 2×256
tied LSTM with dropout 0.2, plain SGD at lr 20 with gradient clipping 0.25, batch 32, bptt 35, the
hidden state carried across windows, fp32 and the default allocator. It trains in a plain PyTorch
loop until the minutes are spent, then is scored on the valid split (batch 10, as its script does).

The second is what a user would pick instead today: a small GPT-style transformer (bench/tiny_gpt.py,
nanoGPT's layout at 4 layers × 256 wide, 4 heads, context 128), trained on seqlm's own sentencepiece
token arrays (the same tokenizer, the same train and valid bytes) in bf16 where the CPU has it, then
scored on the valid split in consecutive windows of its context.

seqlm runs its real download, tokenize and train stages in a scratch project with the repository's
params.yaml, changing only ``data.source`` and ``train.max_minutes`` (the budget) — whatever else the
defaults say (steps, precision, regularisation) is what a user gets. Its number is the train stage's
``val_bits_per_byte``. All sides see the same corpus, the same valid text and the same byte count, so
bits per byte compares a word model with a subword model fairly: total bits over the valid split's
UTF-8 bytes. Tokenisation and the final scoring are outside the minutes on every side.

Last line:

    ref_valid_bpb=… gpt_valid_bpb=… seqlm_valid_bpb=… ratio_ref=… ratio_gpt=… minutes=… corpus=… machine=…

ratio_ref = seqlm ÷ word_language_model, ratio_gpt = seqlm ÷ transformer (lower is better for seqlm;
the issue's goals are ratio_ref ≤ 0.80 and ratio_gpt ≤ 1.0).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "bench"))  # after the standard library, for tiny_gpt

from tiny_gpt import GPTConfig, train_gpt, valid_nats  # noqa: E402

# pytorch/examples word_language_model, at the size
REF = {"emsize": 256, "nhid": 256, "nlayers": 2, "dropout": 0.2, "lr": 20.0, "clip": 0.25}
REF_BATCH, REF_EVAL_BATCH, REF_BPTT = 32, 10, 35


class RefModel(nn.Module):
    """word_language_model's RNNModel (LSTM, tied): encoder, dropout, LSTM, dropout, decoder."""

    def __init__(self, ntoken: int):
        super().__init__()
        self.drop = nn.Dropout(REF["dropout"])
        self.encoder = nn.Embedding(ntoken, REF["emsize"])
        self.rnn = nn.LSTM(REF["emsize"], REF["nhid"], REF["nlayers"], dropout=REF["dropout"])
        self.decoder = nn.Linear(REF["nhid"], ntoken)
        self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz: int):
        z = torch.zeros(REF["nlayers"], bsz, REF["nhid"])
        return (z, z.clone())


def word_ids(paths) -> tuple[dict[str, torch.Tensor], int]:
    """data.Corpus: one id per whitespace-separated word plus <eos> per line, vocabulary over all splits."""
    vocab: dict[str, int] = {}
    ids = {}
    for split in ("train", "valid", "test"):
        out = []
        with open(paths.raw_split(split), encoding="utf-8") as f:
            for line in f:
                for w in line.split() + ["<eos>"]:
                    out.append(vocab.setdefault(w, len(vocab)))
        ids[split] = torch.tensor(out, dtype=torch.long)
    return ids, len(vocab)


def batchify(data: torch.Tensor, bsz: int) -> torch.Tensor:
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def train_reference(ids: dict, ntoken: int, seconds: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = RefModel(ntoken)
    train = batchify(ids["train"], REF_BATCH)
    crit = nn.CrossEntropyLoss()
    lr, steps, tokens, epochs = REF["lr"], 0, 0, 0
    start = time.perf_counter()
    best = math.inf
    while time.perf_counter() - start < seconds:
        model.train()
        hidden = model.init_hidden(REF_BATCH)
        for i in range(0, train.size(0) - 1, REF_BPTT):
            if time.perf_counter() - start >= seconds:
                break
            n = min(REF_BPTT, len(train) - 1 - i)
            data, targets = train[i : i + n], train[i + 1 : i + 1 + n].reshape(-1)
            hidden = tuple(h.detach() for h in hidden)
            model.zero_grad()
            output, hidden = model(data, hidden)
            loss = crit(output.view(-1, ntoken), targets)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), REF["clip"])
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            steps += 1
            tokens += data.numel()
        else:
            epochs += 1
            # the script's rule at each epoch's end: keep the best, else lr /= 4
            val = evaluate_reference(model, ids["valid"], ntoken)
            if val < best:
                best = val
            else:
                lr /= 4.0
    train_seconds = time.perf_counter() - start
    return {
        "valid_nll_per_token": evaluate_reference(model, ids["valid"], ntoken),
        "steps": steps,
        "epochs": epochs,
        "tokens_per_s": tokens / train_seconds,
        "seconds": train_seconds,
    }


@torch.no_grad()
def evaluate_reference(model: RefModel, valid: torch.Tensor, ntoken: int) -> float:
    model.eval()
    data = batchify(valid, REF_EVAL_BATCH)
    hidden = model.init_hidden(REF_EVAL_BATCH)
    total, count = 0.0, 0
    for i in range(0, data.size(0) - 1, REF_BPTT):
        n = min(REF_BPTT, len(data) - 1 - i)
        output, hidden = model(data[i : i + n], hidden)
        targets = data[i + 1 : i + 1 + n].reshape(-1)
        total += nn.functional.cross_entropy(output.view(-1, ntoken), targets, reduction="sum").item()
        count += targets.numel()
    return total / count


def train_transformer(paths, meta: dict, seconds: float, seed: int) -> dict:
    """bench/tiny_gpt.py on seqlm's token arrays, in bf16 where seqlm's ``precision: auto`` would be."""
    from seqlm.data.tokens import open_tokens
    from seqlm.training.device import detect_device

    bf16 = detect_device("cpu").bf16
    cfg = GPTConfig(vocab_size=meta["vocab_size"])
    train = np.asarray(open_tokens(paths.tokens("train"), meta["dtype"]))
    model, stats = train_gpt(cfg, train, seconds, seed, bf16)
    nats, _ = valid_nats(model, open_tokens(paths.tokens("valid"), meta["dtype"]), bf16)
    config = f"layers={cfg.n_layer} d={cfg.d_model} heads={cfg.n_head} context={cfg.context}"
    config += f" batch={cfg.batch_size}"
    valid_bpb = nats / math.log(2) / meta["splits"]["valid"]["bytes"]
    return {**stats, "valid_bpb": valid_bpb, "bf16": bf16, "config": config}


def prepare(scratch: Path, corpus: str, minutes: float) -> None:
    from seqlm import config
    from seqlm.core.paths import Paths
    from seqlm.stages.download import run_download
    from seqlm.stages.tokenize import run_tokenize

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["source"] = corpus
    params["train"]["max_minutes"] = minutes
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))
    paths = Paths(scratch)
    cfg = config.load(paths.params)
    run_download(cfg, paths)
    run_tokenize(cfg, paths)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        extras = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags]
    except OSError:
        extras = []
    return f"{model} ({torch.get_num_threads()} threads; {','.join(extras) or 'no avx512'})".replace(" ", "_")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes for each side")
    parser.add_argument("--corpus", default="builtin:kjv", help="a data.source, e.g. files:/path/*.txt")
    parser.add_argument("--skip-reference", action="store_true", help="leave out word_language_model")
    parser.add_argument("--skip-transformer", action="store_true", help="leave out the small transformer")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project and print its path")
    args = parser.parse_args()

    from seqlm import config
    from seqlm.core.paths import Paths
    from seqlm.stages.train import run_train

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    scratch = Path(tempfile.mkdtemp(prefix="seqlm-ttq-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        prepare(scratch, args.corpus, args.minutes)
        paths = Paths(scratch)
        cfg = config.load(paths.params)
        meta = yaml.safe_load(paths.tokens_meta.read_text())
        valid_bytes = meta["splits"]["valid"]["bytes"]
        ref = None
        if not args.skip_reference:
            ids, ntoken = word_ids(paths)
            ref = train_reference(ids, ntoken, args.minutes * 60, cfg.base.seed)
            ref["valid_bpb"] = ref["valid_nll_per_token"] * len(ids["valid"]) / math.log(2) / valid_bytes
            print(
                f"reference: vocab={ntoken} steps={ref['steps']} epochs={ref['epochs']} "
                f"tokens_per_s={ref['tokens_per_s']:.0f} valid_bpb={ref['valid_bpb']:.4f}",
                flush=True,
            )
        gpt = None
        if not args.skip_transformer:
            gpt = train_transformer(paths, meta, args.minutes * 60, cfg.base.seed)
            print(
                f"transformer: {gpt['config']} steps={gpt['steps']} epochs={gpt['epochs']:.2f} "
                f"tokens_per_s={gpt['tokens_per_s']:.0f} bf16={gpt['bf16']} "
                f"train_loss={gpt['train_loss']:.3f} valid_bpb={gpt['valid_bpb']:.4f}",
                flush=True,
            )
        ours = run_train(cfg, paths, fresh=True)
        print(
            f"seqlm: steps={ours['steps']} tokens_per_s={ours['tokens_per_s']:.0f} "
            f"valid_bpb={ours['val_bits_per_byte']:.4f} stopped_by={ours['stopped_by']}",
            flush=True,
        )
    finally:
        if args.keep:
            print(f"scratch project: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    ref_bpb = ref["valid_bpb"] if ref else float("nan")
    gpt_bpb = gpt["valid_bpb"] if gpt else float("nan")
    seqlm_bpb = ours["val_bits_per_byte"]
    print(
        f"ref_valid_bpb={ref_bpb:.4f} gpt_valid_bpb={gpt_bpb:.4f} seqlm_valid_bpb={seqlm_bpb:.4f} "
        f"ratio_ref={seqlm_bpb / ref_bpb:.3f} ratio_gpt={seqlm_bpb / gpt_bpb:.3f} minutes={args.minutes:g} "
        f"corpus={args.corpus} machine={machine()}"
    )


if __name__ == "__main__":
    main()
