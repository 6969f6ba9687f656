"""AWD-LSTM's regularisers and the chunked decoder loss: each does what it says, and only in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqlm import config
from seqlm.config import ModelConfig
from seqlm.core.errors import SeqlmError
from seqlm.models import build_model
from seqlm.models.base import LockedDropout
from seqlm.training.lightning_module import LitLanguageModel
from seqlm.training.loss import decoder_cross_entropy

VOCAB = 29


def make(family="lstm", **overrides):
    kwargs = dict(
        family=family, embedding_size=12, hidden_size=12, num_layers=1, dropout=0.0, input_dropout=0.0
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**kwargs), VOCAB)


def tokens(batch=4, steps=9, seed=1):
    return torch.randint(0, VOCAB, (batch, steps), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ chunked loss


def _grads(loss_fn, *tensors):
    loss = loss_fn()
    return loss.detach(), torch.autograd.grad(loss * 2.5, tensors)  # a non-unit upstream gradient


@pytest.mark.parametrize("chunk", [1, 7, 64, 299, 300, 1000])
def test_chunked_cross_entropy_equals_the_full_logits_in_value_and_gradients(chunk):
    torch.manual_seed(0)
    features = torch.randn(300, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    bias = torch.randn(VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (300,))
    full, full_grads = _grads(
        lambda: F.cross_entropy(features @ weight.T + bias, targets), features, weight, bias
    )
    chunked, chunked_grads = _grads(
        lambda: decoder_cross_entropy(features, weight, bias, targets, chunk), features, weight, bias
    )
    torch.testing.assert_close(chunked, full)
    for got, want in zip(chunked_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_cross_entropy_follows_bf16_autocast_and_returns_fp32_gradients():
    torch.manual_seed(0)
    features = torch.randn(64, 16, requires_grad=True)
    weight = torch.randn(VOCAB, 16, requires_grad=True)
    bias = torch.zeros(VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = decoder_cross_entropy(features, weight, bias, targets, 10)
    grads = torch.autograd.grad(loss, (features, weight, bias))
    want = F.cross_entropy(features @ weight.T + bias, targets)
    assert loss.dtype == torch.float32 and abs(loss.item() - want.item()) < 0.05  # bf16 matmuls
    assert [g.dtype for g in grads] == [torch.float32] * 3


def test_the_training_step_takes_tied_gradients_through_the_chunked_loss():
    """The tied matrix gets both the decoder's and the embedding's gradients, chunked or not."""
    cfg_full = config.TrainConfig(loss_chunk_mb=0)
    cfg_chunked = config.TrainConfig(loss_chunk_mb=VOCAB * 4 * 5 / 2**20)  # 5 rows per chunk
    x, y = tokens(), tokens(seed=2)
    grads = []
    for cfg in (cfg_full, cfg_chunked):
        model = make().train()
        lm = LitLanguageModel(model, cfg, {"tokens": 1, "bytes": 1}, total_steps=1)
        hidden, _ = model.encode(x, None)
        ce, loss = lm._loss(hidden, y)
        loss.backward()
        grads.append(model.embedding.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ dropouts


def test_locked_dropout_keeps_one_mask_for_all_steps_and_is_off_in_eval():
    drop = LockedDropout(0.5, locked=True).train()
    torch.manual_seed(0)
    out = drop(torch.ones(3, 20, 8))
    zero = out == 0
    assert zero.any() and (~zero).any()
    assert (zero == zero[:, :1]).all()  # the same units at every step
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(3, 20, 8)), torch.ones(3, 20, 8))
    unlocked = LockedDropout(0.5, locked=False).train()(torch.ones(3, 20, 8)) == 0
    assert not (unlocked == unlocked[:, :1]).all()


def test_embedding_dropout_drops_whole_word_types():
    model = make(embedding_dropout=0.5).train()
    torch.manual_seed(3)
    x = torch.arange(VOCAB).repeat(2, 1)  # every type, twice
    emb = model.embed(x)
    dropped = (emb == 0).all(-1)
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped[0], dropped[1])  # a type is dropped everywhere it occurs in the batch
    assert torch.equal(model.eval().embed(x), model.embedding(x))


def test_weight_drop_masks_the_recurrent_weights_in_training_only():
    model = make(weight_drop=0.5)
    x = tokens()
    model.train()
    torch.manual_seed(0)
    hidden, _ = model.encode(x)
    hidden.sum().backward()
    grad = model.rnn.weight_hh_l0.grad
    # DropConnect: the dropped entries of W_hh get no gradient this step, the others do
    assert 0.3 < (grad == 0).float().mean() < 0.7
    assert (model.rnn.weight_ih_l0.grad != 0).float().mean() > 0.9
    model.eval()
    with torch.no_grad():
        plain, _ = model.rnn(model.embedding(x))
        torch.testing.assert_close(model.encode(x)[0], plain)
    # the parameters are untouched by the masking
    assert isinstance(model.rnn.weight_hh_l0, torch.nn.Parameter)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
@pytest.mark.slow
def test_every_regulariser_at_once_still_learns(family):
    model = make(
        family, weight_drop=0.3, embedding_dropout=0.1, input_dropout=0.2, dropout=0.2, locked_dropout=True
    )
    cfg = config.TrainConfig(activation_reg=2.0, temporal_activation_reg=1.0)
    lm = LitLanguageModel(model, cfg, {"tokens": 1, "bytes": 1}, total_steps=1)
    seq = torch.arange(10).repeat(4).unsqueeze(0).repeat(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    first = last = None
    for _ in range(80):
        model.train()
        ce, loss = lm._loss(model.encode(seq[:, :-1])[0], seq[:, 1:])
        assert loss >= ce  # AR and TAR only add
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else ce.item()
        last = ce.item()
    assert last < 0.5 * first


def test_activation_regularisers_add_to_the_loss_but_not_to_the_reported_cross_entropy():
    model = make(dropout=0.0).train()
    x, y = tokens(), tokens(seed=2)
    plain = LitLanguageModel(model, config.TrainConfig(), {"tokens": 1, "bytes": 1}, 1)
    reg = LitLanguageModel(
        model,
        config.TrainConfig(activation_reg=2.0, temporal_activation_reg=1.0),
        {"tokens": 1, "bytes": 1},
        1,
    )
    hidden, _ = model.encode(x)
    ce0, loss0 = plain._loss(hidden, y)
    ce1, loss1 = reg._loss(hidden, y)
    torch.testing.assert_close(ce0, ce1)
    assert loss0 == ce0 and loss1 > ce1


@pytest.mark.parametrize(
    "key,value",
    [("weight_drop", 1.0), ("embedding_dropout", -0.1), ("input_dropout", 1), ("locked_dropout", "yes")],
)
def test_regularisation_keys_are_validated(key, value):
    with pytest.raises(SeqlmError, match=f"model.{key} must be"):
        config.parse({"model": {key: value}})
    with pytest.raises(SeqlmError, match="train.loss_chunk_mb must be"):
        config.parse({"train": {"loss_chunk_mb": -1}})
