"""A small GPT-style decoder-only transformer: the yardstick a user would reach for instead of seqlm today.

Our own minimal implementation after nanoGPT (Radford et al. 2019's GPT-2 layout): token and learned
position embeddings, pre-LayerNorm blocks of causal self-attention (``scaled_dot_product_attention``)
and a 4× GELU MLP, a final LayerNorm and an output layer tied to the token embedding. AdamW (no decay
on biases, norms and embeddings) with linear warm-up and a cosine schedule that anneals over the time
budget, as seqlm's does over ``train.max_minutes``. Batches are random windows of the training tokens,
nanoGPT's ``get_batch``. bf16 autocast where the CPU computes bf16 natively, as seqlm's
``precision: auto`` does.

It reads the same sentencepiece token arrays as seqlm's train stage, so valid bits per byte compare.
``bench/time_to_quality.py`` trains it for the same minutes as seqlm. Run alone, it measures the train
step's tokens/s for the candidate sizes its default was chosen from (random tokens, vocabulary 2000):

    python bench/tiny_gpt.py [--seconds 12]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # bench/ holds tokenize.py, which must not shadow the standard library's tokenize

import argparse
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    # Sized for five minutes on two CPU cores: see docs/performance.md (time to quality) for the
    # tokens/s measurement behind it.
    vocab_size: int
    context: int = 128
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    dropout: float = 0.0  # nanoGPT's default for short runs: a few epochs do not overfit
    batch_size: int = 16  # a few hundred updates in five minutes: more of them beat bigger ones
    lr: float = 1e-3  # nanoGPT's shakespeare-char baseline for a model this size
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TinyGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied (Press & Wolf 2017), as GPT-2
        self.apply(self._init)
        # GPT-2: residual projections scaled by 1/sqrt(2 × layers) so the residual stream's variance
        # does not grow with depth
        for block in self.blocks:
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T), T ≤ context."""
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def optimizer(model: TinyGPT) -> torch.optim.AdamW:
    """AdamW with decay only on matrices (nanoGPT): not on biases, norms or the (tied) embeddings."""
    cfg = model.cfg
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok", "pos"))]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith(("tok", "pos"))]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(cfg: GPTConfig, step: int, fraction: float) -> float:
    """Linear warm-up over steps, then cosine to a tenth of the peak over the budget's elapsed fraction."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def train_gpt(
    cfg: GPTConfig, train: np.ndarray, seconds: float, seed: int, bf16: bool, max_steps: int = 0
) -> tuple[TinyGPT, dict]:
    """Train on random windows of ``train`` until ``seconds`` are spent (or ``max_steps``, if set)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyGPT(cfg)
    opt = optimizer(model)
    data = torch.from_numpy(np.asarray(train, dtype=np.int64))
    steps, start, loss = 0, time.perf_counter(), torch.tensor(math.nan)
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or (max_steps and steps >= max_steps):
            break
        starts = torch.from_numpy(rng.integers(0, len(data) - cfg.context - 1, cfg.batch_size))
        window = torch.stack([data[s : s + cfg.context + 1] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, steps, elapsed / seconds)
        model.train()
        with autocast(bf16):
            logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        steps += 1
    train_seconds = time.perf_counter() - start
    return model, {
        "steps": steps,
        "tokens_per_s": steps * cfg.batch_size * cfg.context / max(train_seconds, 1e-9),
        "epochs": steps * cfg.batch_size * cfg.context / len(data),
        "train_loss": loss.item(),
        "seconds": train_seconds,
    }


@torch.no_grad()
def valid_nats(model: TinyGPT, tokens: np.ndarray, bf16: bool, batch_size: int = 32) -> tuple[float, int]:
    """Total nats and count over every token but the first, in consecutive windows of the context.

    A window's first prediction sees one token, its last the whole context: the stream is cut, not
    slid, which costs the transformer a little against a recurrent model's carried state.
    """
    model.eval()
    t = model.cfg.context
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    starts = list(range(0, len(data) - 1, t))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        n = min(t, len(data) - 1 - chunk[-1])  # the last window may be short: score it on its own
        if n < t:
            chunk, rest = chunk[:-1], chunk[-1]
        else:
            rest = None
        for group, length in ((chunk, t), ([rest] if rest is not None else [], n)):
            if not group:
                continue
            x = torch.stack([data[s : s + length] for s in group])
            y = torch.stack([data[s + 1 : s + 1 + length] for s in group])
            with autocast(bf16):
                logits = model(x)
            total += F.cross_entropy(
                logits.float().reshape(-1, model.cfg.vocab_size), y.reshape(-1), reduction="sum"
            ).item()
            count += y.numel()
    return total, count


# the sizes the default was chosen from (docs/performance.md, time to quality)
CANDIDATES = [
    {"n_layer": 4, "d_model": 128, "n_head": 4, "batch_size": 32},
    {"n_layer": 4, "d_model": 192, "n_head": 3, "batch_size": 32},
    {"batch_size": 32},
    {},
    {"context": 256},
    {"n_layer": 6, "d_model": 384, "n_head": 6, "batch_size": 32},
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="timed training per size")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast even where the CPU has it")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from seqlm.training.device import detect_device

    bf16 = not args.fp32 and detect_device("cpu").bf16
    tokens = np.random.default_rng(0).integers(0, 2000, 200_000)
    for change in CANDIDATES:
        cfg = GPTConfig(vocab_size=2000, **change)
        train_gpt(cfg, tokens, seconds=1e9, seed=0, bf16=bf16, max_steps=2)  # warm-up: allocator, kernels
        _, stats = train_gpt(cfg, tokens, seconds=args.seconds, seed=0, bf16=bf16)
        print(
            f"layers={cfg.n_layer} d={cfg.d_model} heads={cfg.n_head} context={cfg.context} "
            f"batch={cfg.batch_size} bf16={bf16} steps={stats['steps']} "
            f"tokens_per_s={stats['tokens_per_s']:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
