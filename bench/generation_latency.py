"""Generation latency: seconds to sample 100 tokens, the prompt run once and then one token per step.

    python -P bench/generation_latency.py [--model models/model] [--tokens 100] [--runs 3] [--threads 1]

Without ``--model``: the test suite's tiny LSTM (embedding and hidden 64, untrained: latency does not
depend on the weights) over a 100-piece tokenizer trained here on generated English-like lines. With
``--model``: an exported folder or a registry URI (``models:/seqlm@champion``), as `seqlm generate`
takes. One intra-op thread by default: on a shared CPU, OpenMP hand-offs make each one-token step
10-50× slower. The best of ``--runs`` seeded samples after one warm-up is kept. Goal on the tiny model:
under 0.5 s. Last line:

    generate_s=… ms_per_token=… tokens=… threads=…
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import io
import os
import random
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PROMPT = "the dog"


def tiny_generator():
    """The test suite's model size on a tokenizer of 100 pieces (no byte fallback), weights untrained."""
    import sentencepiece as spm

    from seqlm import config
    from seqlm.data.tokenizer import BOS_ID, EOS_ID, UNK_ID
    from seqlm.inference.generator import Generator
    from seqlm.models import build_model

    rng = random.Random(0)
    parts = (
        ["the dog", "a cat", "my sister", "the old man", "every child", "the king"],
        ["walks to", "looks at", "runs from", "sings about", "waits for", "speaks of"],
        ["the river", "a house", "the market", "the hills", "a small boat", "the garden"],
        ["in the morning.", "at night.", "with joy.", "again and again.", "before the rain."],
    )  # the test suite's grammar (tests/seqlm_testing.py)
    lines = [" ".join(rng.choice(words) for words in parts) for _ in range(3000)]
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model_file,
        model_type="bpe",  # as the tokenize stage trains it (tokenizer.type: bpe)
        vocab_size=100,
        byte_fallback=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model_file.getvalue())
    cfg = config.parse({"model": {"family": "lstm", "embedding_size": 64, "hidden_size": 64, "dropout": 0.0}})
    torch.manual_seed(0)
    return Generator(build_model(cfg.model, sp.GetPieceSize()), sp)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="an exported model folder or models:/ URI (default: the tiny LSTM)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per sample (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="timed samples, after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        from seqlm.inference.generator import Generator
        from seqlm.registry.resolve import resolve_model_dir

        generator = Generator.from_dir(resolve_model_dir(args.model))
    else:
        generator = tiny_generator()
    generator.generate(PROMPT, args.tokens, seed=0)  # warm-up
    seconds = []
    for seed in range(1, args.runs + 1):
        start = time.perf_counter()
        generator.generate(PROMPT, args.tokens, seed=seed)
        seconds.append(time.perf_counter() - start)
        print(f"run: seed={seed} generate_s={seconds[-1]:.4f}", flush=True)
    best = min(seconds)
    per_token = 1000 * best / args.tokens
    print(f"generate_s={best:.4f} ms_per_token={per_token:.2f} tokens={args.tokens} threads={args.threads}")


if __name__ == "__main__":
    main()
