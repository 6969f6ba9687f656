import math

import pytest

from seqlm.lm import lr_factor
from seqlm.training import CPU_AUTO_PRECISION, DeviceInfo, resolve_precision


@pytest.mark.parametrize(
    "device,expected",
    [
        (DeviceInfo("cuda", "NVIDIA H100", bf16=True), "bf16-mixed"),
        (DeviceInfo("cuda", "Tesla V100", bf16=False), "16-mixed"),
        (DeviceInfo("cpu"), CPU_AUTO_PRECISION),
    ],
)
def test_auto_precision_follows_the_device(device, expected):
    assert resolve_precision("auto", device) == expected


def test_named_precision_passes_through():
    assert resolve_precision("16-mixed", DeviceInfo("cpu")) == "16-mixed"
    assert resolve_precision("32-true", DeviceInfo("cuda", "H100", bf16=True)) == "32-true"


def test_detect_device_on_this_cpu_machine():
    import torch

    from seqlm.training import detect_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert detect_device("auto").kind in ("cpu", "mps")


def test_warmup_then_cosine_to_a_tenth():
    assert lr_factor("cosine", 0, 100, 0.0, 1.0) == pytest.approx(0.01)
    assert lr_factor("cosine", 99, 100, 0.0, 1.0) == pytest.approx(1.0)
    assert lr_factor("cosine", 500, 100, 0.5, 1.0) == pytest.approx(0.55)
    assert lr_factor("cosine", 1000, 100, 1.0, 1.0) == pytest.approx(0.1)
    assert lr_factor("constant", 1000, 100, 1.0, 1.0) == 1.0
    assert lr_factor("plateau", 1000, 0, 1.0, 0.25) == 0.25
    assert math.isclose(lr_factor("cosine", 10, 0, 2.0, 1.0), 0.1)  # progress past 1 is clamped
