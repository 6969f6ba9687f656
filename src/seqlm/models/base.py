"""The interface every model family implements: embedding in, decoder out, an opaque carried state."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

State = torch.Tensor | tuple[torch.Tensor, ...]


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by every time step of ``x`` [B, T, D].

    Variational dropout (Gal & Ghahramani, 2016, arXiv:1512.05287) as AWD-LSTM uses it (Merity et al.,
    2017, arXiv:1708.02182): a unit dropped at one step is dropped at all of them, so the noise cannot
    average out over time. ``locked=False`` is ordinary dropout, a fresh mask per element.
    """

    def __init__(self, p: float, locked: bool = True):
        super().__init__()
        self.p, self.locked = p, locked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.locked or x.dim() != 3:
            return F.dropout(x, self.p, training=True)
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask


class LanguageModel(nn.Module):
    """Embedding in, decoder out; subclasses supply the context encoder between them.

    With ``tie_weights`` the decoder reuses the embedding matrix (Press & Wolf, 2017, arXiv:1608.05859;
    Inan et al., 2017, arXiv:1611.01462). When the encoder's width differs from the embedding's, a linear
    projection hidden -> embedding sits in front of the tied decoder so tying still applies.

    Regularisation, all off in eval mode: ``embedding_dropout`` drops whole rows of the embedding matrix
    (word types) per batch, ``input_dropout`` drops the embeddings entering the encoder, ``dropout`` the
    encoder's outputs before the decoder; with ``locked_dropout`` the last two keep one mask per sequence.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        vocab, emb, hidden = config["vocab_size"], config["embedding_size"], config["hidden_size"]
        if config.get("bidirectional"):
            hidden *= 2  # the decoder reads both directions' top states side by side
        self.embedding = nn.Embedding(vocab, emb)
        locked = config.get("locked_dropout", False)
        self.drop = LockedDropout(config["dropout"], locked)
        self.input_drop = LockedDropout(config.get("input_dropout", config["dropout"]), locked)
        tie = config["tie_weights"]
        self.projection = nn.Linear(hidden, emb, bias=False) if tie and hidden != emb else None
        self.decoder = nn.Linear(emb if tie else hidden, vocab)
        # word_language_model's init: small uniform embeddings keep the first logits near uniform. "normal"
        # keeps PyTorch's N(0, 1), inputs of the size of the one-hot vectors of the long-lag literature: at
        # ±0.1 a key enters the gates ~17× weaker, and an LSTM that learned the copy probe at delay 100 in
        # 2,200 updates from N(0, 1) stayed at chance through 3,000 (docs/performance.md).
        if config.get("embedding_init", "uniform") == "uniform":
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

    def encode(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``hidden`` [B, T, H], the top layer per step (before output dropout), and the new state."""
        raise NotImplementedError

    def forward_with_hidden(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Like ``forward``, plus ``hidden`` [B, T, H]: the top layer per step, before the decoder.

        ``torch.autograd.grad(loss_t, hidden)[:, t - k]`` is d loss_t / d h_{t-k}.
        """
        hidden, state = self.encode(tokens, state)
        return self.decode(hidden), state, hidden

    # -- shared
    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        hidden, state = self.encode(tokens, state)
        return self.decode(hidden), state

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings after embedding dropout (whole rows, one mask per batch) and input dropout."""
        weight = self.embedding.weight
        p = self.config.get("embedding_dropout", 0.0)
        if self.training and p > 0:
            keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p).div_(1 - p)
            weight = weight * keep
        return self.input_drop(F.embedding(tokens, weight))

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the decoder's matrix multiplies: output dropout, then the tying projection if any."""
        return self.project(self.drop(hidden))

    def project(self, dropped: torch.Tensor) -> torch.Tensor:
        return dropped if self.projection is None else self.projection(dropped)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(hidden))

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
