"""The study's plan: which experiments it runs, with which params, and at which sizes.

The source material argues, in order: fixed-window feed-forward models cannot hold long history;
bag-of-words loses order; RNNs share parameters across time but their gradients vanish or explode;
clipping tames explosion; ReLU with identity initialisation (IRNN) and gated cells (LSTM, GRU) keep
long-term dependencies. The study puts each step to the test as DVC experiments on the same data, each
with the same wall-clock budget (``train.max_minutes``, no step limit) and, within PARAM_TOLERANCE, the
same number of parameters:

- text (the default corpus): ffn_window, bow, rnn (tanh), rnn (tanh) without clipping, IRNN, lstm, gru;
- probe (``synthetic:copy``): PROBE_FAMILIES × delays, to find where each family stops remembering.

Owns FAMILIES, the probe's settings, ``Options`` and ``Experiment``, ``plan`` and the parameter
matching that keeps a group's sizes comparable (``matched_hidden_size``, ``check_comparable``). To
extend the study, add a family to FAMILIES or an option to ``seqlm study``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from seqlm.core.errors import SeqlmError

# Display name -> the model (and train) keys that make the family. The order is the argument's order.
FAMILIES: dict[str, dict[str, Any]] = {
    "ffn_window": {
        "model.family": "ffn_window",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
    },
    "bow": {"model.family": "bow", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "rnn": {"model.family": "rnn", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "rnn-noclip": {
        "model.family": "rnn",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
        "train.grad_clip": 0.0,
    },
    # IRNN: Le, Jaitly & Hinton (2015), arXiv:1504.00941
    "irnn": {"model.family": "rnn", "model.nonlinearity": "relu", "model.recurrent_init": "identity"},
    "lstm": {"model.family": "lstm", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "gru": {"model.family": "gru", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
}
TEXT_FAMILIES = tuple(FAMILIES)
PROBE_FAMILIES = ("rnn", "irnn", "lstm", "gru")
REFERENCE_FAMILY = "lstm"  # the others get the hidden size that gives them about its parameter count
PARAM_TOLERANCE = 0.15

# The probe's model and batching. Small, because the probe's vocabulary is 14 pieces; many small
# batches, because learning to bridge a long gap takes many updates more than many tokens per update.
PROBE_TASK = "copy"
PROBE_MODEL = {
    "model.embedding_size": 32,
    "model.hidden_size": 64,
    "model.dropout": 0.0,
    "model.num_layers": 1,
}
PROBE_TOKENIZER = {"tokenizer.type": "char", "tokenizer.byte_fallback": False, "tokenizer.vocab_size": 32}
PROBE_BATCH_SIZE = 8
# fp32, not the CPU's bf16-mixed: at the probe's sizes bf16 autocast slows the GRU and RNN by ~1.6× (their
# CPU kernels step through time; measured 1 thread, batch 8 × 128: GRU 53k tokens/s fp32 vs 35k bf16,
# RNN 98k vs 61k, LSTM 238k vs 300k), and equal minutes should buy as similar a number of updates as they can.
PROBE_PRECISION = "32-true"
PROBE_SYMBOLS = 1_000_000
# Samples and next-word tables need prompts the probe's alphabet can spell.
PROBE_EVALUATE = {
    "evaluate.prompts": ["C"],
    "evaluate.cloze_prompts": ["C....?"],
    "evaluate.gradient_flow_steps": 256,
}
# The minutes are the budget: no step limit, no early stopping, and an epoch limit no run reaches (the
# probe corpora are small, so the default of 20 epochs stopped the fast LSTM at delay 200 after about one of
# its 3 minutes in an earlier study).
BUDGET = {"train.max_steps": 0, "train.early_stopping_patience": 0, "train.max_epochs": 100_000}


@dataclass(frozen=True)
class Options:
    name: str = "seqlm-study"  # MLflow experiment and the seqlm.study tag
    text_minutes: float = 4.0
    probe_minutes: float = 3.0
    delays: tuple[int, ...] = (10, 50, 200)
    text_families: tuple[str, ...] = TEXT_FAMILIES
    probe_families: tuple[str, ...] = PROBE_FAMILIES
    jobs: int = 2  # experiments at a time, one thread each
    stamp: str = ""  # suffix that keeps DVC experiment names unique across runs of the study


@dataclass(frozen=True)
class Experiment:
    name: str  # the DVC experiment name
    group: str  # "text" | "probe"
    family: str  # a key of FAMILIES
    overrides: dict[str, Any] = field(default_factory=dict)  # params.yaml keys, set with -S
    parameters: int = 0  # model parameters, computed from the config before training

    @property
    def delay(self) -> int | None:
        return self.overrides.get("data.delay") if self.group == "probe" else None


def plan(options: Options, params: dict) -> list[Experiment]:
    """The study's experiments, with hidden sizes that match the reference family's parameter count.

    ``params`` is the parsed params.yaml every experiment starts from.
    """
    from seqlm import config

    for family in (*options.text_families, *options.probe_families):
        if family not in FAMILIES:
            raise SeqlmError(f"seqlm study: no family {family!r}; families: {', '.join(FAMILIES)}")
    base = config.parse(params)
    common = {"base.experiment": options.name, **BUDGET}
    text_vocab = base.tokenizer.vocab_size  # bpe and unigram vocabularies have exactly this size
    text = {**common, "train.max_minutes": options.text_minutes}
    experiments = _matched(params, "text", options.text_families, text, text_vocab, options.stamp)
    for delay in options.delays:
        probe = _probe_overrides(common, delay, options.probe_minutes)
        vocab = probe_vocab_size(PROBE_TASK)
        label = f"{PROBE_TASK}{delay}"
        experiments += _matched(params, label, options.probe_families, probe, vocab, options.stamp)
    return experiments


def _probe_overrides(common: dict[str, Any], delay: int, minutes: float) -> dict[str, Any]:
    return {
        **common,
        "data.source": f"synthetic:{PROBE_TASK}",
        "data.delay": delay,
        "data.synthetic_symbols": PROBE_SYMBOLS,
        **PROBE_TOKENIZER,
        **PROBE_MODEL,
        "train.batch_size": PROBE_BATCH_SIZE,
        "train.precision": PROBE_PRECISION,
        "train.bptt": probe_bptt(PROBE_TASK, delay),
        "train.max_minutes": minutes,
        **PROBE_EVALUATE,
    }


def probe_bptt(task: str, delay: int) -> int:
    """A power of two at least twice the recall span: most episodes then lie inside one truncated-BPTT
    window, so the gradient from the recall position can reach the symbol it must recall."""
    from seqlm.data import synthetic

    span = synthetic.recall_convention(task, delay)["span"]
    return max(64, 1 << math.ceil(math.log2(2 * span)))


def probe_vocab_size(task: str) -> int:
    """<unk> <s> </s>, sentencepiece's word-start piece ▁ and one piece per symbol of the probe."""
    from seqlm.data import synthetic

    return 4 + len(synthetic.alphabet(task))


def _matched(params: dict, label: str, families, overrides: dict, vocab: int, stamp: str) -> list[Experiment]:
    reference = {**overrides, **FAMILIES[REFERENCE_FAMILY]}
    reference.setdefault("model.hidden_size", config_value(params, "model.hidden_size"))
    target = count_parameters(params, reference, vocab)
    out = []
    for family in families:
        keys = {**overrides, **FAMILIES[family]}
        if family == REFERENCE_FAMILY:
            keys["model.hidden_size"] = reference["model.hidden_size"]
        else:
            keys["model.hidden_size"] = matched_hidden_size(params, keys, vocab, target)
        name = f"{label}-{family}" + (f"-{stamp}" if stamp else "")
        group = "text" if label == "text" else "probe"
        out.append(Experiment(name, group, family, keys, count_parameters(params, keys, vocab)))
    return out


def config_value(params: dict, dotted: str) -> Any:
    """A key's value in ``params``, or its code default (they are equal for the shipped params.yaml)."""
    from seqlm import config

    return config.parse(params).flat()[dotted]


def apply(params: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``params`` with dotted keys set, as ``dvc exp run -S`` would."""
    out = {section: dict(values or {}) for section, values in params.items()}
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return out


def count_parameters(params: dict, overrides: dict[str, Any], vocab: int) -> int:
    import torch

    from seqlm import config
    from seqlm.models import build_model

    cfg = config.parse(apply(params, overrides), where="seqlm study")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_model(cfg.model, vocab).num_parameters()


def matched_hidden_size(params: dict, overrides: dict[str, Any], vocab: int, target: int) -> int:
    """The hidden size (a multiple of 8) whose parameter count is closest to ``target``.

    A scan, not a bisection: counts are not monotonic in the hidden size, because a tied decoder needs
    a projection whenever the hidden size differs from the embedding size.
    """
    best, best_gap, h = 8, math.inf, 8
    while True:
        count = count_parameters(params, {**overrides, "model.hidden_size": h}, vocab)
        if abs(count - target) < best_gap:
            best, best_gap = h, abs(count - target)
        if count > 2 * target or h >= 1 << 16:
            return best
        h += 8


def check_comparable(experiments: list[Experiment]) -> None:
    """Every group's parameter counts lie within PARAM_TOLERANCE of its reference family's."""
    for group in {_group_key(e) for e in experiments}:
        members = [e for e in experiments if _group_key(e) == group]
        reference = next((e.parameters for e in members if e.family == REFERENCE_FAMILY), None)
        reference = reference or max(e.parameters for e in members)
        for e in members:
            if abs(e.parameters - reference) > PARAM_TOLERANCE * reference:
                raise SeqlmError(
                    f"seqlm study: {e.name} has {e.parameters:,} parameters, more than {PARAM_TOLERANCE:.0%} "
                    f"away from {REFERENCE_FAMILY}'s {reference:,}; adjust its hidden size"
                )


def _group_key(e: Experiment) -> str:
    return "text" if e.group == "text" else f"probe{e.delay}"
