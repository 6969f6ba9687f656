"""RNN (tanh / ReLU), LSTM and GRU language models on one code path, like pytorch/examples
word_language_model: the fused ``nn.RNN / nn.LSTM / nn.GRU`` runs the whole chunk in one call (cuDNN on
GPU), so there is no Python loop over time steps in training.

State: ``h`` [num_layers, B, H] for rnn and gru, ``(h, c)`` for lstm, in PyTorch's own layout (not batch
first) and in the parameters' dtype; [2·num_layers, B, H] when bidirectional.

A cloze model (``objective: cloze``) reads one input id more than it predicts: ``vocab_size`` is the
blank, embedded by a learned vector of its own (``blank``), so the embedding stays [V, E] and the tied
decoder never offers the blank as an answer. Only a cloze model may be bidirectional (decision 20 in
docs/architecture.md): it predicts a blanked token, which neither direction reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from seqlm.models.base import LanguageModel, State

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _cpu_bf16_lstm_unsupported(x: torch.Tensor) -> bool:
    """Under CPU bf16 autocast, nn.LSTM goes to oneDNN, whose bf16 LSTM needs AVX-512: on an AVX2-only CPU
    it fails with "could not create a primitive descriptor". GRU and RNN have CPU kernels of their own."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not torch.cpu._is_avx512_supported()
    )


class RecurrentLM(LanguageModel):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        family, init = config["family"], config["recurrent_init"]
        if init == "identity" and family != "rnn":
            raise ValueError(f"recurrent_init identity applies to family rnn, got {family!r}")
        extra = {"nonlinearity": config["nonlinearity"]} if family == "rnn" else {}
        self.bidirectional = bool(config.get("bidirectional", False))
        if self.bidirectional:
            extra["bidirectional"] = True
        self.blank_id = config["vocab_size"]
        self.blank = None
        if config.get("objective") == "cloze":
            self.blank = nn.Parameter(torch.empty(config["embedding_size"]).uniform_(-0.1, 0.1))
        self.rnn = CELLS[family](
            config["embedding_size"],
            config["hidden_size"],
            num_layers=config["num_layers"],
            # nn.RNN's dropout acts between layers only; with one layer it would just warn.
            dropout=config["dropout"] if config["num_layers"] > 1 else 0.0,
            batch_first=True,
            **extra,
        )
        self.is_lstm = family == "lstm"
        if init == "orthogonal":
            self._init_orthogonal()
        elif init == "identity":
            self._init_identity()
        if self.is_lstm and config.get("forget_bias", 0.0):
            self._init_forget_bias(config["forget_bias"])
        if config.get("chrono_max", 0):
            self._init_chrono(config["chrono_max"])
        if config.get("recurrent_gain", 1.0) != 1.0:
            self._scale_recurrent(config["recurrent_gain"])

    def _init_orthogonal(self) -> None:
        # Orthogonal W_hh keeps every singular value at 1, so the linear part of backprop through time
        # neither explodes nor vanishes (Saxe et al., 2014, arXiv:1312.6120). weight_hh stacks one
        # [H, H] block per gate (4 for LSTM, 3 for GRU); each block is made orthogonal on its own.
        hidden = self.config["hidden_size"]
        with torch.no_grad():
            for w in self.recurrent_weights():
                for block in w.split(hidden, dim=0):
                    nn.init.orthogonal_(block)

    def _init_identity(self) -> None:
        # IRNN (Le, Jaitly & Hinton, 2015, arXiv:1504.00941): with ReLU, identity W_hh and zero biases,
        # h_t = relu(h_{t-1} + W_ih x_t): the state persists and gradients pass back undamped at the start.
        with torch.no_grad():
            for layer in self._layer_names():
                getattr(self.rnn, f"weight_hh_{layer}").copy_(torch.eye(self.config["hidden_size"]))
                getattr(self.rnn, f"bias_hh_{layer}").zero_()
                getattr(self.rnn, f"bias_ih_{layer}").zero_()

    def _init_forget_bias(self, value: float) -> None:
        # A forget gate that starts near sigmoid(0) = 0.5 halves the cell every step, so at first the
        # LSTM forgets as fast as a plain RNN; a bias of 1 starts it near 0.73 and the cell's memory
        # lasts (Gers, Schmidhuber & Cummins, 2000; Jozefowicz, Zaremba & Sutskever, 2015). PyTorch's
        # gate order is input, forget, cell, output; the two biases add, so one carries the value.
        hidden = self.config["hidden_size"]
        with torch.no_grad():
            for layer in self._layer_names():
                getattr(self.rnn, f"bias_ih_{layer}")[hidden : 2 * hidden].fill_(value)
                getattr(self.rnn, f"bias_hh_{layer}")[hidden : 2 * hidden].zero_()

    def _init_chrono(self, longest: int) -> None:
        # Chrono initialisation (Tallec & Ollivier, 2018, arXiv:1804.11188): a gate that keeps a fraction f
        # of the state each step remembers for about 1 / (1 − f) steps, so biases log(u), u ~ U[1, T − 1],
        # start the units' memories spread over 1 … T steps. A forget bias of 1 (f ≈ 0.73) remembers for
        # about 4 steps, and 0.73^100 ≈ 2e-14 leaves the first gradients nothing to learn a delay of 100 from.
        # LSTM: forget bias log(u), input bias −log(u). GRU (PyTorch's h' = (1 − z) n + z h, gates r, z, n):
        # the update gate z plays the forget gate, bias log(u). The two biases add, so one carries the value.
        hidden = self.config["hidden_size"]
        keep = slice(hidden, 2 * hidden)  # the forget gate (LSTM: i, f, g, o) or update gate (GRU: r, z, n)
        with torch.no_grad():
            for layer in self._layer_names():
                bias = torch.log(torch.empty(hidden).uniform_(1.0, float(longest - 1)))
                ih, hh = getattr(self.rnn, f"bias_ih_{layer}"), getattr(self.rnn, f"bias_hh_{layer}")
                ih[keep] = bias
                hh[keep] = 0.0
                if self.is_lstm:
                    ih[:hidden] = -bias
                    hh[:hidden] = 0.0

    def _scale_recurrent(self, gain: float) -> None:
        # W_hh times a gain after its initialisation; with the orthogonal init every singular value, and
        # so the spectral radius, is the gain. Above 1 a tanh RNN's backward pass can grow exponentially
        # (Pascanu, Mikolov & Bengio, 2013, arXiv:1211.5063): the study provokes the explosion with it.
        with torch.no_grad():
            for w in self.recurrent_weights():
                w.mul_(gain)

    def _layer_names(self) -> list[str]:
        """PyTorch's parameter suffixes: l0, l1, … and, when bidirectional, l0_reverse, … too."""
        directions = ("", "_reverse") if self.bidirectional else ("",)
        return [f"l{layer}{d}" for layer in range(self.config["num_layers"]) for d in directions]

    def recurrent_weights(self) -> list[torch.Tensor]:
        return [getattr(self.rnn, f"weight_hh_{layer}") for layer in self._layer_names()]

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        layers = self.config["num_layers"] * (2 if self.bidirectional else 1)
        shape = (layers, batch_size, self.config["hidden_size"])
        dtype = self.embedding.weight.dtype
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros_like(h)) if self.is_lstm else h

    def reset_state(self, state: State, mask: torch.Tensor) -> State:
        keep_out = mask.view(1, -1, 1)  # the initial state is all zeros
        if isinstance(state, tuple):
            return tuple(s.masked_fill(keep_out, 0.0) for s in state)
        return state.masked_fill(keep_out, 0.0)

    def _as_param_dtype(self, state: State) -> State:
        # Under autocast the RNN hands back a bf16/fp16 state; carried into an fp32 forward (evaluation,
        # generation) it would fail, so the state always leaves in the parameters' dtype.
        dtype = self.embedding.weight.dtype
        if isinstance(state, tuple):
            return tuple(s.to(dtype) for s in state)
        return state.to(dtype)

    def forward_with_hidden(self, tokens: torch.Tensor, state: State | None = None):
        if torch.is_grad_enabled():
            return self._stepwise(tokens, state)
        # Without autograd only the values matter, and the fused call's outputs are those values.
        return super().forward_with_hidden(tokens, state)

    def encode(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(tokens.size(0), tokens.device)
        output, state = self._cell(self.embed(tokens), state)
        return output, self._as_param_dtype(state)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.blank is None:
            return super().embed(tokens)
        # The blank's own vector, never dropped: it is the one input that says where to predict.
        blank = (tokens == self.blank_id).unsqueeze(-1)
        emb = super().embed(tokens.masked_fill(blank.squeeze(-1), 0))
        return torch.where(blank, self.blank.to(emb.dtype), emb)

    def _cell(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        if self.is_lstm and _cpu_bf16_lstm_unsupported(x):
            # That CPU has no native bf16 either (precision auto picks 32-true there), so the LSTM loses
            # nothing by computing in fp32; the rest of the model stays under the requested autocast.
            with torch.autocast("cpu", enabled=False):
                return self._run(x.float(), tuple(s.float() for s in state))
        return self._run(x, state)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        p = self.config.get("weight_drop", 0.0)
        if not (self.training and p > 0):
            return self.rnn(x, state)
        # DropConnect on the hidden-to-hidden matrices (Wan et al., 2013; AWD-LSTM's weight drop): one
        # mask per batch, the same at every time step, so the fused kernel still runs the whole window.
        dropped = {
            f"weight_hh_{layer}": F.dropout(getattr(self.rnn, f"weight_hh_{layer}"), p)
            for layer in self._layer_names()
        }
        return functional_call(self.rnn, dropped, (x, state))

    def _stepwise(self, tokens: torch.Tensor, state: State | None):
        """One fused call per step, for the gradient-flow diagnostic (slow; never used in training).

        The fused call's per-step outputs are results of one autograd node, not inputs to later steps,
        so d loss_t / d output_{t-k} would read zero for every k > 0.
        Instead a zero ``probe`` is added to each step's top-layer state before it feeds both the
        decoder and the next step; the gradient reaching ``probe[:, t]`` is then exactly d loss / d h_t.
        The probe, a leaf, is returned holding the values of h (filled in afterwards, outside autograd).
        """
        if self.bidirectional:
            raise ValueError("the step-by-step pass (gradient flow) reads left to right; not bidirectional")
        batch, steps = tokens.shape
        if state is None:
            state = self.init_state(batch, tokens.device)
        emb = self.embed(tokens)
        probe = emb.new_zeros(batch, steps, self.config["hidden_size"], requires_grad=True)
        outputs = []
        for t in range(steps):
            _, state = self._cell(emb[:, t : t + 1], state)
            h = state[0] if self.is_lstm else state
            top = h[-1] + probe[:, t]
            h = torch.cat([h[:-1], top.unsqueeze(0)])
            state = (h, state[1]) if self.is_lstm else h
            outputs.append(top)
        output = torch.stack(outputs, dim=1)
        with torch.no_grad():
            probe.copy_(output)
        return self.decode(output), self._as_param_dtype(state), probe
