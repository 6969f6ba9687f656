"""Model sizes for the study: parameter counts from a config (no training, no memory), the hidden size that
matches a reference family's count, and the check that a group's sizes are comparable."""

from __future__ import annotations

import math
from typing import Any

from seqlm.core.errors import SeqlmError

PARAM_TOLERANCE = 0.15
REFERENCE_FAMILY = "lstm"


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
        return build_model(cfg.model, vocab, cfg.train.objective).num_parameters()


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


def check_comparable(experiments) -> None:
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


def _group_key(e) -> str:
    return "text" if e.group == "text" else f"{e.group}{e.delay}"
