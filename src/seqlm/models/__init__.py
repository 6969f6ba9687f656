"""The model zoo: plain ``nn.Module`` language models (no Lightning here; that lives in ``lm.py``).

Every model maps a chunk of tokens and a carried state to next-token logits and the new state::

    model = build_model(cfg.model, vocab_size)
    state = model.init_state(batch_size, device)
    for chunk in stream:                      # consecutive bptt windows of B parallel streams
        logits, state = model(chunk, state)   # [B, T] -> [B, T, V]
        state = model.detach_state(state)     # truncated BPTT: context crosses windows, gradients do not

Callers treat ``state`` as opaque (a tensor or a tuple of tensors, so it fits in a checkpoint) and touch
it only through ``init_state``, ``detach_state`` and ``reset_state``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

import torch
from torch import nn

from seqlm.config import ModelConfig
from seqlm.errors import SeqlmError

State = torch.Tensor | tuple[torch.Tensor, ...]


class LanguageModel(nn.Module):
    """Embedding in, decoder out; subclasses supply the context encoder between them.

    With ``tie_weights`` the decoder reuses the embedding matrix (Press & Wolf, 2017, arXiv:1608.05859;
    Inan et al., 2017, arXiv:1611.01462). When the encoder's width differs from the embedding's, a linear
    projection hidden -> embedding sits in front of the tied decoder so tying still applies.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        vocab, emb, hidden = config["vocab_size"], config["embedding_size"], config["hidden_size"]
        self.embedding = nn.Embedding(vocab, emb)
        self.drop = nn.Dropout(config["dropout"])
        tie = config["tie_weights"]
        self.projection = nn.Linear(hidden, emb, bias=False) if tie and hidden != emb else None
        self.decoder = nn.Linear(emb if tie else hidden, vocab)
        # word_language_model's init: small uniform embeddings keep the first logits near uniform.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    # -- to be supplied by each family
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        raise NotImplementedError

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        """Rows where ``mask`` [B] is True go back to ``init_state`` (no context); the rest are kept."""
        raise NotImplementedError

    def forward_with_hidden(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Like ``forward``, plus ``hidden`` [B, T, H]: the top layer per step, before the decoder.

        ``torch.autograd.grad(loss_t, hidden)[:, t - k]`` is d loss_t / d h_{t-k}.
        """
        raise NotImplementedError

    # -- shared
    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        logits, state, _ = self.forward_with_hidden(tokens, state)
        return logits, state

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.drop(hidden)
        if self.projection is not None:
            out = self.projection(out)
        return self.decoder(out)

    def detach_state(self, state: State) -> State:
        if isinstance(state, tuple):
            return tuple(s.detach() for s in state)
        return state.detach()

    def recurrent_weights(self) -> list[torch.Tensor]:
        """Hidden-to-hidden matrices, one per layer (empty for feed-forward models)."""
        return []

    def num_parameters(self) -> int:
        # parameters() yields a shared (tied) tensor once.
        return sum(p.numel() for p in self.parameters())


# Imported here, below LanguageModel, because both modules subclass it.
from seqlm.models.feedforward import WindowLM  # noqa: E402
from seqlm.models.recurrent import RecurrentLM  # noqa: E402

FAMILIES: dict[str, type[LanguageModel]] = {
    "lstm": RecurrentLM,
    "gru": RecurrentLM,
    "rnn": RecurrentLM,
    "ffn_window": WindowLM,
    "bow": WindowLM,
}


def build_model(cfg_model: ModelConfig, vocab_size: int) -> LanguageModel:
    if cfg_model.family not in FAMILIES:
        raise SeqlmError(f"model.family must be one of {' | '.join(FAMILIES)}, got {cfg_model.family!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise SeqlmError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    config = {k: v for k, v in asdict(cfg_model).items() if k != "bidirectional"}
    config["vocab_size"] = vocab_size
    return FAMILIES[cfg_model.family](config)


def build_model_from_config(config: dict[str, Any]) -> LanguageModel:
    """Rebuild from ``model.config`` (e.g. an exported ``config.json``); load the weights separately."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(config) - known - {"vocab_size"})
    if unknown or "vocab_size" not in config:
        problem = f"unknown keys {', '.join(unknown)}" if unknown else "no vocab_size"
        raise SeqlmError(f"model config has {problem}; was it written by a different seqlm version?")
    cfg = ModelConfig(**{k: v for k, v in config.items() if k in known})
    return build_model(cfg, config["vocab_size"])


__all__ = [
    "FAMILIES",
    "LanguageModel",
    "RecurrentLM",
    "State",
    "WindowLM",
    "build_model",
    "build_model_from_config",
]
