"""Mixed precision on a real GPU. Run on a lent device: `python -m pytest -m gpu tests/test_gpu.py`."""

import math

import pytest
import torch
from seqlm_testing import TINY_TRAIN, make_tokens

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def tiny(project):
    make_tokens(project)
    project.set(**TINY_TRAIN | {"train.accelerator": "gpu", "train.devices": 1})
    return project


@pytest.mark.parametrize("precision", ["auto", "bf16-mixed", "16-mixed", "32-true"])
def test_mixed_precision_trains_on_the_gpu(tiny, precision):
    from seqlm.stages.train import run_train

    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    tiny.set(**{"train.precision": precision})
    metrics = run_train(tiny.config(), tiny.paths())
    assert math.isfinite(metrics["val_loss"])
    expected = (
        ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if precision == "auto" else precision
    )
    assert metrics["precision"] == expected
    curve = metrics["train_loss"]
    assert curve < 5.0  # the tiny grammar corpus starts near ln(320) ≈ 5.8


def test_exported_gpu_model_loads_on_the_cpu(tiny):
    from seqlm.models import export
    from seqlm.stages.train import run_train

    run_train(tiny.config(), tiny.paths())
    model, _ = export.load(tiny.paths().model_dir, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
