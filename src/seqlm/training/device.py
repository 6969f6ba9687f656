"""Which device trains, and in which precision (``train.precision: auto``)."""

from __future__ import annotations

from dataclasses import dataclass

from seqlm.core.errors import SeqlmError

# What `precision: auto` picks on a CPU with native bfloat16 (AVX512-BF16 or AMX). Set by measurement:
# bench/precision_parity.py compares bf16-mixed with 32-true at equal steps (docs/performance.md).
CPU_BF16_AUTO_PRECISION = "bf16-mixed"


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" | "cuda" | "mps"
    name: str = "cpu"
    # computes in bfloat16 natively: Ampere GPUs (capability ≥ 8.0) and newer, or AVX512-BF16/AMX CPUs
    bf16: bool = False


def detect_device(accelerator: str) -> DeviceInfo:
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(0)
        return DeviceInfo(
            "cuda", torch.cuda.get_device_name(0), bf16=major >= 8 and torch.cuda.is_bf16_supported()
        )
    if accelerator in ("gpu", "cuda"):
        raise SeqlmError(
            f"params.yaml: train.accelerator is {accelerator!r} but no CUDA GPU is visible; use auto or cpu"
        )
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return DeviceInfo("mps", "mps")
    return DeviceInfo("cpu", "cpu", bf16=_cpu_has_bf16())


def _cpu_has_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str, device: DeviceInfo) -> str:
    """Decision 5 in docs/architecture.md: bf16-mixed on GPUs that have it, 16-mixed with loss scaling on
    older ones, bf16-mixed on CPUs with native bf16, else 32-true."""
    if requested != "auto":
        return requested
    if device.kind == "cuda":
        return "bf16-mixed" if device.bf16 else "16-mixed"
    if device.kind == "mps":
        return "16-mixed"
    # Without native bf16 the CPU emulates it, slower than fp32.
    return CPU_BF16_AUTO_PRECISION if device.bf16 else "32-true"
