"""Choosing the protocol (``evaluation.protocol``): once, from the config or from what a model records.

The set is closed and listed here: ``Streamed``, ``Episodic`` (``train.episodic``) and ``Cloze``
(``train.objective: cloze``); the config refuses episodic and cloze together.
"""

from __future__ import annotations

from seqlm.evaluation.cloze import Cloze
from seqlm.evaluation.episodic import Episodic
from seqlm.evaluation.protocol import Protocol
from seqlm.evaluation.streamed import Streamed


def protocol_for(objective: str = "next", episodic: bool = False, cloze_rate: float = 0.15, seed: int = 0):
    """The protocol of a model trained with ``train.objective`` and ``train.episodic`` (the config refuses
    both at once); ``cloze_rate`` and ``seed`` key a cloze model's blanks."""
    if objective == "cloze":
        return Cloze(cloze_rate, seed)
    return Episodic() if episodic else Streamed()


def for_training(train, seed: int) -> Protocol:
    """The protocol ``train`` (a ``TrainConfig``) trains under."""
    return protocol_for(train.objective, train.episodic, train.cloze_rate, seed)


def for_model(model_config: dict, episodic: bool = False, seed: int = 0) -> Protocol:
    """The protocol an exported model (its config.json) is scored under: as trained (decisions 20, 22)."""
    objective = model_config["model"].get("objective", "next")
    return protocol_for(objective, episodic, model_config.get("cloze_rate", 0.15), seed)


def for_record(tags: dict) -> Protocol:
    """The protocol a recorded score was measured under (its ``tags``), for re-scoring a champion."""
    return protocol_for(
        tags.get("objective", "next"),
        bool(tags.get("episodic")),
        tags.get("cloze_rate", 0.15),
        tags.get("seed", 0),
    )
