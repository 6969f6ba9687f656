"""The protocol object (decision 23): chosen once, recorded as before, one scoring loop shared by validation
and evaluation, and no mode branches left in the stages or the LightningModule."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from seqlm import config
from seqlm.evaluation.cloze import Cloze
from seqlm.evaluation.episodic import Episodic
from seqlm.evaluation.protocols import for_model, for_record, for_training, protocol_for
from seqlm.evaluation.streamed import Streamed
from seqlm.models import build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "seqlm"
V, EOS = 24, 2


def test_the_protocol_is_chosen_from_objective_and_episodic():
    assert isinstance(protocol_for(), Streamed)
    assert isinstance(protocol_for("next", episodic=True), Episodic)
    cloze = protocol_for("cloze", cloze_rate=0.2, seed=7)
    assert isinstance(cloze, Cloze) and (cloze.rate, cloze.seed) == (0.2, 7)
    train = config.TrainConfig(episodic=True)
    assert isinstance(for_training(train, 0), Episodic)
    exported = {"model": {"objective": "cloze"}, "cloze_rate": 0.3}
    assert isinstance(for_model(exported, episodic=False, seed=1), Cloze)
    assert for_model(exported).not_registrable and for_model({"model": {}}).not_registrable is None


def test_the_protocol_records_are_the_ones_scores_were_always_logged_under():
    # The champion gate compares scores only under equal records (decision 8): a changed record would make
    # every earlier version look incomparable and force a re-score.
    assert Streamed().tags(8, 128) == {"batch_size": 8, "bptt": 128, "carry_state": True}
    assert Episodic().tags(8, 64) == {"batch_size": 8, "bptt": 64, "carry_state": False, "episodic": True}
    assert Cloze(0.15, 1337).tags(16, 64) == {
        "objective": "cloze",
        "batch_size": 16,
        "bptt": 64,
        "carry_state": False,
        "cloze_rate": 0.15,
        "seed": 1337,
    }
    assert isinstance(for_record(Episodic().tags(8, 64)), Episodic)
    assert isinstance(for_record(Streamed().tags(8, 64)), Streamed)


def test_score_names_follow_the_objective():
    assert Streamed().score_name == Episodic().score_name == "bits_per_byte"
    assert Cloze(0.15, 0).score_name == "bits_per_blank"
    split = {"tokens": 100, "bytes": 400}
    assert set(Streamed().val_metrics(1.0, split, None)) == {"val_loss", "val_bits_per_byte"}
    recall = {"accuracy": 0.5, "bits": 1.0}
    assert Episodic().val_metrics(1.0, split, recall)["val_recall_accuracy"] == 0.5
    assert set(Cloze(0.15, 0).val_metrics(1.0, split, None)) == {"val_loss", "val_bits_per_blank"}


def _lines(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out += [*rng.integers(3, V, size=int(rng.integers(2, 9))), EOS]
    return np.array(out, dtype=np.uint16)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [Streamed(), Episodic(), Cloze(0.25, 3)], ids=lambda p: p.name)
def test_validation_adds_up_what_evaluation_adds_up(protocol):
    """The LightningModule's validation (Lightning's loop over the protocol's batches) and the evaluate
    stage's pass (``protocol.totals``) give the same loss: one definition of the score."""
    import lightning.pytorch as pl

    from seqlm.training.lightning_module import LitLanguageModel

    torch.manual_seed(0)
    cfg = config.ModelConfig(family="lstm", embedding_size=16, hidden_size=16, dropout=0.0, input_dropout=0.0)
    model = build_model(cfg, V, protocol.objective)
    tokens = _lines(120, seed=1)
    batches = protocol.batches(tokens, EOS, 4, 16, ("valid", "train.bptt"))
    lm = LitLanguageModel(
        model, config.TrainConfig(), {"tokens": len(tokens), "bytes": 2 * len(tokens)}, 1, 0, protocol
    )
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.validate(lm, dataloaders=loader, verbose=False)
    val_loss = lm.val_history[-1][1]
    totals = protocol.totals(model, tokens, EOS, 4, 16, "cpu", "valid")
    if isinstance(protocol, Cloze):
        # validation keys blanks by (seed, split, rank, batch), evaluation by (seed, split, window): other
        # blanks, the same kind of number
        assert val_loss == pytest.approx(totals.loss, rel=0.1)
    else:
        assert val_loss == pytest.approx(totals.loss, rel=1e-9)
    assert (lm.val_recall is not None) == isinstance(protocol, Episodic)


MODE_WORDS = {"episodic", "objective", "cloze", "bidirectional"}


@pytest.mark.parametrize(
    "module",
    [
        "stages/train.py",
        "stages/evaluate.py",
        "stages/register.py",
        "training/lightning_module.py",
        "training/datamodule.py",
        "training/callbacks.py",
        "registry/rescoring.py",
    ],
)
def test_no_mode_branches_outside_the_protocols(module):
    """An `if` (or conditional expression) that tests the mode belongs in a protocol, not here."""
    tree = ast.parse((SRC / module).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            names = {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
            names |= {
                n.value
                for n in ast.walk(node.test)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
            names |= {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            if names & MODE_WORDS:
                found.append(f"{module}:{node.lineno}")
    assert not found, f"mode branches: {found}"
