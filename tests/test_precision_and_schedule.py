import math

import pytest

from seqlm.training.device import CPU_BF16_AUTO_PRECISION, DeviceInfo, detect_device, resolve_precision
from seqlm.training.lightning_module import lr_factor


@pytest.mark.parametrize(
    "device,expected",
    [
        (DeviceInfo("cuda", "NVIDIA H100", bf16=True), "bf16-mixed"),
        (DeviceInfo("cuda", "Tesla V100", bf16=False), "16-mixed"),
        (DeviceInfo("cpu", bf16=True), CPU_BF16_AUTO_PRECISION),
        (DeviceInfo("cpu", bf16=False), "32-true"),
    ],
)
def test_auto_precision_follows_the_device(device, expected):
    assert resolve_precision("auto", device) == expected


def test_named_precision_passes_through():
    assert resolve_precision("16-mixed", DeviceInfo("cpu")) == "16-mixed"
    assert resolve_precision("32-true", DeviceInfo("cuda", "H100", bf16=True)) == "32-true"


@pytest.mark.parametrize(
    "capability,bf16_supported,expected", [((9, 0), True, "bf16-mixed"), ((7, 0), False, "16-mixed")]
)
def test_auto_precision_from_a_faked_gpu(monkeypatch, capability, bf16_supported, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Faked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    device = detect_device("auto")
    assert (device.kind, device.name) == ("cuda", "Faked GPU")
    assert resolve_precision("auto", device) == expected


def test_detect_device_on_a_cpu_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert detect_device("cpu") == DeviceInfo("cpu", "cpu", bf16=False)
    assert resolve_precision("auto", detect_device("auto")) == "32-true"


def test_asking_for_a_gpu_without_one_is_a_clear_error(monkeypatch):
    import torch

    from seqlm.core.errors import SeqlmError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SeqlmError, match="no CUDA GPU is visible"):
        detect_device("gpu")


def test_warmup_then_cosine_to_a_tenth():
    assert lr_factor("cosine", 0, 100, 0.0, 1.0) == pytest.approx(0.01)
    assert lr_factor("cosine", 99, 100, 0.0, 1.0) == pytest.approx(1.0)
    assert lr_factor("cosine", 500, 100, 0.5, 1.0) == pytest.approx(0.55)
    assert lr_factor("cosine", 1000, 100, 1.0, 1.0) == pytest.approx(0.1)
    assert lr_factor("constant", 1000, 100, 1.0, 1.0) == 1.0
    assert lr_factor("plateau", 1000, 0, 1.0, 0.25) == 0.25
    assert math.isclose(lr_factor("cosine", 10, 0, 2.0, 1.0), 0.1)  # progress past 1 is clamped
