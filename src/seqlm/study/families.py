"""The study's families: the model (and train) keys that make each row, and which groups run which.

The order is the argument's order: fixed windows and a bag of words, the tanh RNN, the IRNN's 2 × 2, the
LSTM with its gate-bias ablations, the GRU. ``plan`` gives each its sizes and budgets.
"""

from __future__ import annotations

from typing import Any

# Display name -> the model (and train) keys that make the family. The order is the argument's order.
FAMILIES: dict[str, dict[str, Any]] = {
    "ffn_window": {
        "model.family": "ffn_window",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
    },
    # The big window: the same MLP reading WIDE_WINDOW tokens; its input layer grows with the window.
    "ffn_window-wide": {
        "model.family": "ffn_window",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
        "model.window": 32,
    },
    "bow": {"model.family": "bow", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    "rnn": {"model.family": "rnn", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
    # The IRNN's 2 × 2 on the probe: which of its two changes matters, the ReLU or the identity W_hh
    "rnn-identity": {"model.family": "rnn", "model.nonlinearity": "tanh", "model.recurrent_init": "identity"},
    "rnn-relu": {"model.family": "rnn", "model.nonlinearity": "relu", "model.recurrent_init": "default"},
    # IRNN: Le, Jaitly & Hinton (2015), arXiv:1504.00941
    "irnn": {"model.family": "rnn", "model.nonlinearity": "relu", "model.recurrent_init": "identity"},
    # Forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015: it closes the LSTM–GRU gap); PyTorch's 0
    # is kept as an ablation row on the probe
    "lstm": {
        "model.family": "lstm",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
        "model.forget_bias": 1.0,
    },
    "lstm-bias0": {
        "model.family": "lstm",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
        "model.forget_bias": 0.0,
    },
    # Chrono initialisation (Tallec & Ollivier 2018): gate biases spread the units' memories over 1 … T steps,
    # T the probe's episode length (set per delay by probe_cells); a forget bias of 1 remembers ~4 steps
    "lstm-chrono": {
        "model.family": "lstm",
        "model.nonlinearity": "tanh",
        "model.recurrent_init": "default",
        "model.forget_bias": 0.0,
    },
    "gru": {"model.family": "gru", "model.nonlinearity": "tanh", "model.recurrent_init": "default"},
}
CHRONO_FAMILIES = ("lstm-chrono",)  # probe only: their model.chrono_max is the episode's length
TEXT_FAMILIES = ("ffn_window", "ffn_window-wide", "bow", "rnn", "lstm", "gru")
UNMATCHED = {"ffn_window-wide": "ffn_window"}  # keeps that family's hidden size, not the parameter count
# The window models run the probe as negative controls: they must solve a delay inside their window and
# none past it.
PROBE_FAMILIES = (
    "rnn",
    "rnn-identity",
    "rnn-relu",
    "irnn",
    "lstm",
    "lstm-bias0",
    "lstm-chrono",
    "gru",
    "ffn_window",
    "bow",
)
WINDOW_FAMILIES = ("ffn_window", "ffn_window-wide", "bow")
