"""The model zoo: plain ``nn.Module`` language models (no trainer, no tracking).

Every model maps a chunk of tokens and a carried state to next-token logits and the new state::

    model = build_model(cfg.model, vocab_size)
    state = model.init_state(batch_size, device)
    for chunk in stream:                      # consecutive bptt windows of B parallel streams
        logits, state = model(chunk, state)   # [B, T] -> [B, T, V]
        state = model.detach_state(state)     # truncated BPTT: context crosses windows, gradients do not

Callers treat ``state`` as opaque (a tensor or a tuple of tensors, so it fits in a checkpoint) and touch
it only through ``init_state``, ``detach_state`` and ``reset_state``.

Owns ``base`` (the interface), ``recurrent`` (rnn/lstm/gru), ``feedforward`` (fixed-window and
bag-of-words baselines), ``build`` (family → class) and ``export`` (the exported model folder). May
import ``seqlm.core`` and ``seqlm.config`` only; this module re-exports the names callers build with.
"""

from seqlm.models.base import LanguageModel, State
from seqlm.models.build import FAMILIES, build_model, build_model_from_config
from seqlm.models.feedforward import WindowLM
from seqlm.models.recurrent import RecurrentLM

__all__ = [
    "FAMILIES",
    "LanguageModel",
    "RecurrentLM",
    "State",
    "WindowLM",
    "build_model",
    "build_model_from_config",
]
