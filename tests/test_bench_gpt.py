"""bench/tiny_gpt.py, the transformer yardstick of bench/time_to_quality.py: shapes, causality, learning."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# loaded by path: bench/ holds tokenize.py, which must not shadow the standard library's on sys.path
_spec = importlib.util.spec_from_file_location(
    "tiny_gpt", Path(__file__).resolve().parents[1] / "bench" / "tiny_gpt.py"
)
tiny_gpt = sys.modules["tiny_gpt"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_gpt)

SMALL = {"vocab_size": 50, "context": 16, "n_layer": 2, "d_model": 32, "n_head": 4}


def test_logits_have_one_row_per_position_and_the_head_is_tied():
    torch.manual_seed(0)
    model = tiny_gpt.TinyGPT(tiny_gpt.GPTConfig(**SMALL))
    logits = model(torch.randint(0, 50, (3, 16)))
    assert logits.shape == (3, 16, 50)
    assert model.head.weight is model.tok.weight


def test_a_future_token_does_not_change_earlier_logits():
    torch.manual_seed(0)
    model = tiny_gpt.TinyGPT(tiny_gpt.GPTConfig(**SMALL)).eval()
    x = torch.randint(0, 50, (1, 16))
    changed = x.clone()
    changed[0, 10] = (x[0, 10] + 1) % 50
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])  # and it does change the position it sits at onwards


def test_a_few_steps_learn_a_repeated_text_and_valid_nats_count_every_token_but_the_first():
    text = np.tile(np.arange(12) * 3 % 50, 60)  # a 12-token phrase, repeated
    cfg = tiny_gpt.GPTConfig(**SMALL, batch_size=8, lr=3e-3, warmup_steps=5)
    untrained = tiny_gpt.TinyGPT(cfg)
    before, count = tiny_gpt.valid_nats(untrained, text[:101], bf16=False)
    model, stats = tiny_gpt.train_gpt(cfg, text, seconds=600, seed=0, bf16=False, max_steps=60)
    after, count_after = tiny_gpt.valid_nats(model, text[:101], bf16=False)
    assert count == count_after == 100  # 6 full windows of 16 and a short one of 4
    assert stats["steps"] == 60
    assert before / count > math.log(50) - 0.5  # near uniform at initialisation
    assert after / count < 0.5 * before / count


@pytest.mark.parametrize(
    "step,fraction,expected", [(0, 0.0, 0.1), (9, 0.0, 1.0), (10, 0.0, 1.0), (50, 1.0, 0.1)]
)
def test_the_learning_rate_warms_up_then_anneals_to_a_tenth(step, fraction, expected):
    cfg = tiny_gpt.GPTConfig(vocab_size=10, lr=1.0, warmup_steps=10)
    assert tiny_gpt.lr_at(cfg, step, fraction) == pytest.approx(expected)
