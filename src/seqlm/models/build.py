"""Building a model: ``model.family`` → its class, from params or from an exported ``config.json``."""

from __future__ import annotations

from typing import Any

from seqlm.config import ModelConfig
from seqlm.core.errors import SeqlmError
from seqlm.models.base import LanguageModel
from seqlm.models.feedforward import WindowLM
from seqlm.models.recurrent import RecurrentLM

FAMILIES: dict[str, type[LanguageModel]] = {
    "lstm": RecurrentLM,
    "gru": RecurrentLM,
    "rnn": RecurrentLM,
    "ffn_window": WindowLM,
    "bow": WindowLM,
}


OBJECTIVES = ("next", "cloze")  # train.objective; a cloze model embeds one more input: the blank


def build_model(cfg_model: ModelConfig, vocab_size: int, objective: str = "next") -> LanguageModel:
    if cfg_model.family not in FAMILIES:
        raise SeqlmError(f"model.family must be one of {' | '.join(FAMILIES)}, got {cfg_model.family!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise SeqlmError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if objective not in OBJECTIVES:
        raise SeqlmError(f"objective must be one of {' | '.join(OBJECTIVES)}, got {objective!r}")
    if cfg_model.bidirectional and objective != "cloze":
        raise SeqlmError(
            "model.bidirectional needs objective cloze: a bidirectional RNN reads what it predicts"
        )
    config = cfg_model.model_dump()
    config["vocab_size"] = vocab_size
    config["objective"] = objective
    return FAMILIES[cfg_model.family](config)


def build_model_from_config(config: dict[str, Any]) -> LanguageModel:
    """Rebuild from ``model.config`` (e.g. an exported ``config.json``); load the weights separately."""
    known = set(ModelConfig.model_fields)
    unknown = sorted(set(config) - known - {"vocab_size", "objective"})
    if unknown or "vocab_size" not in config:
        problem = f"unknown keys {', '.join(unknown)}" if unknown else "no vocab_size"
        raise SeqlmError(f"model config has {problem}; was it written by a different seqlm version?")
    cfg = ModelConfig(**{k: v for k, v in config.items() if k in known})
    # exports from before the cloze objective have no "objective": they are next-token models
    return build_model(cfg, config["vocab_size"], config.get("objective", "next"))
