"""Feed-forward baselines that see only the last ``window`` tokens: the yardstick for how much the
recurrent models gain from context they carry further back.

- ``ffn_window``: the neural probabilistic language model of Bengio et al. (2003, JMLR 3:1137): the
  window's embeddings, concatenated in order, through one hidden layer.
- ``bow``: the same window as a bag of words: the sum of its embeddings (= counts @ embedding matrix),
  so order inside the window is thrown away.

Position t sees tokens t-window+1 .. t (its own input included). The carried state is the last
``window - 1`` input tokens, LongTensor [B, window-1], with ``vocab_size`` meaning "no token"; so windows
reach across chunk boundaries exactly as an RNN's state does, and ``reset_state`` wipes them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from seqlm.models.base import LanguageModel


class WindowLM(LanguageModel):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.window = config["window"]
        self.bag = config["family"] == "bow"
        self.pad_id = config["vocab_size"]
        in_features = config["embedding_size"] * (1 if self.bag else self.window)
        self.hidden = nn.Linear(in_features, config["hidden_size"])
        self.activation = nn.Tanh() if config["nonlinearity"] == "tanh" else nn.ReLU()

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.full((batch_size, self.window - 1), self.pad_id, dtype=torch.long, device=device)

    def reset_state(self, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return state.masked_fill(mask.view(-1, 1), self.pad_id)

    def encode(self, tokens: torch.Tensor, state: torch.Tensor | None = None):
        batch, steps = tokens.shape
        if state is None:
            state = self.init_state(batch, tokens.device)
        context = torch.cat([state, tokens], dim=1)  # [B, window-1+T]
        # "No token" embeds to zero. A mask rather than an extra embedding row keeps the embedding
        # [V, E], so the decoder can share it.
        present = (context != self.pad_id).unsqueeze(-1)
        emb = self.embed(context.clamp(max=self.pad_id - 1)) * present
        windows = emb.unfold(1, self.window, 1)  # [B, T, E, window], oldest token first
        if self.bag:
            features = windows.sum(-1)
        else:
            features = windows.transpose(2, 3).reshape(batch, steps, -1)
        hidden = self.activation(self.hidden(features))
        # clone: a view would keep (and checkpoint) the whole chunk alive.
        return hidden, context[:, steps:].clone()
