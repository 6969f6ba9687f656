"""The budget planner (``train.plan: auto``): the expected epochs decide the regularisation.

Expected epochs = tokens/s × budget seconds ÷ train tokens. A model that sees its corpus a few times is
not overfitting and dropout only slows it; one that sees it fifteen times overfits early (the train/valid
gap of issue 23), so it gets AWD-LSTM's regularisers (Merity et al., 2017). tokens/s is measured on this
machine by a short warm-up of the configured model, or given as ``train.plan_tokens_per_s`` to reproduce
an earlier run's plan. Decision 21 in docs/architecture.md; the regimes in docs/regularisation.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

# Below LIGHT_BELOW expected epochs nothing overfits, at MODERATE_BELOW and above the corpus is seen often
# enough for the full AWD-LSTM set. The measured overfitting was at ~15 epochs, the tuned defaults at ~3.
LIGHT_BELOW = 3.0
MODERATE_BELOW = 10.0

# The model.* keys the plan owns; every other key stays as params.yaml says.
REGIMES: dict[str, dict[str, float | bool]] = {
    "light": {
        "dropout": 0.0,
        "input_dropout": 0.0,
        "embedding_dropout": 0.0,
        "weight_drop": 0.0,
        "locked_dropout": False,
    },
    "moderate": {
        "dropout": 0.2,
        "input_dropout": 0.1,
        "embedding_dropout": 0.0,
        "weight_drop": 0.1,
        "locked_dropout": True,
    },
    # AWD-LSTM's kinds of dropout at roughly half its word-level rates: a 256-wide model has less to spare
    "awd": {
        "dropout": 0.3,
        "input_dropout": 0.2,
        "embedding_dropout": 0.05,
        "weight_drop": 0.3,
        "locked_dropout": True,
    },
}


@dataclass(frozen=True)
class Plan:
    tokens_per_s: float
    tokens_per_s_source: str  # "measured" | "given"
    budget_tokens: float  # tokens the budget will train on (capped at max_epochs passes)
    train_tokens: int
    expected_epochs: float
    regime: str  # a key of REGIMES
    settings: dict  # model.* key → value, from REGIMES[regime]
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def choose(
    tokens_per_s: float,
    train_tokens: int,
    tokens_per_step: int,
    max_minutes: float,
    max_steps: int,
    max_epochs: int,
    source: str = "measured",
) -> Plan:
    """The plan for a budget of ``max_minutes`` and/or ``max_steps`` (0: no limit), whichever ends first."""
    limits = []
    if max_minutes > 0:
        limits.append(
            (tokens_per_s * max_minutes * 60, f"{tokens_per_s:,.0f} tokens/s × {max_minutes:g} min")
        )
    if max_steps > 0:
        limits.append((max_steps * tokens_per_step, f"{max_steps} steps × {tokens_per_step} tokens"))
    limits.append((max_epochs * train_tokens, f"train.max_epochs {max_epochs}"))
    budget_tokens, what = min(limits, key=lambda limit: limit[0])
    epochs = budget_tokens / max(train_tokens, 1)
    if epochs < LIGHT_BELOW:
        regime, why = "light", f"under {LIGHT_BELOW:g}: the model cannot overfit, dropout would only slow it"
    elif epochs < MODERATE_BELOW:
        regime, why = "moderate", f"{LIGHT_BELOW:g}–{MODERATE_BELOW:g}: some overfitting to hold back"
    else:
        regime, why = "awd", f"{MODERATE_BELOW:g} or more: overfits early without AWD-LSTM's regularisers"
    reason = f"{what} ÷ {train_tokens:,} train tokens = {epochs:.1f} expected epochs, {why}"
    return Plan(tokens_per_s, source, budget_tokens, train_tokens, epochs, regime, REGIMES[regime], reason)


def apply(cfg, plan: Plan):
    """``cfg`` with the plan's model.* settings in place of params.yaml's."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=plan.settings)})


def describe(plan: Plan) -> str:
    """The one stdout line."""
    settings = ", ".join(f"model.{k} {json.dumps(v)}" for k, v in plan.settings.items())  # YAML spelling
    return f"train: plan {plan.regime} ({plan.tokens_per_s_source}): {plan.reason}; {settings}"


def measure_tokens_per_s(
    model,
    batch_size: int,
    bptt: int,
    vocab_size: int,
    precision: str,
    device_kind: str,
    loss_chunk_mb: float,
    seconds: float = 2.0,
) -> float:
    """Tokens/s of full training steps (forward, chunked loss, backward, AdamW) of ``model`` on random
    tokens in the run's precision: at least ``seconds`` and 5 steps after 2 untimed ones (allocation,
    kernel selection). Validation and checkpoints are not counted, so the budget's epochs are a ceiling."""
    import contextlib

    import torch

    from seqlm.training.loss import decoder_cross_entropy

    device = torch.device("cuda" if device_kind == "cuda" else device_kind)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (batch_size, bptt + 1), generator=generator).to(device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    # the training step's chunks of fp32 logits (LitLanguageModel._loss)
    chunk = max(1, int(loss_chunk_mb * 2**20 / (4 * vocab_size))) if loss_chunk_mb > 0 else 0

    def step() -> None:
        with autocast():
            hidden, _ = model.encode(tokens[:, :-1])
            features = model.features(hidden).reshape(-1, model.decoder.weight.shape[1])
            loss = decoder_cross_entropy(
                features, model.decoder.weight, model.decoder.bias, tokens[:, 1:].reshape(-1), chunk
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    steps, start = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch_size * bptt / (time.perf_counter() - start)
