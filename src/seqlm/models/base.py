"""The interface every model family implements: embedding in, decoder out, an opaque carried state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

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
        if config.get("bidirectional"):
            hidden *= 2  # the decoder reads both directions' top states side by side
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
