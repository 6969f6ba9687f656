"""Which precision evaluation computes in (``evaluate.precision``, decision 5 in docs/architecture.md).

``auto`` scores in the model's training precision (its autocast: bf16 for ``bf16-*``, fp16 for ``16-*``
on a GPU) when a check measures it equal to fp32: the first ``CHECK_WINDOWS`` windows of the valid split
are scored both ways, and a difference above ``TOLERANCE_BITS_PER_BYTE`` keeps fp32. ``32-true`` always
scores in fp32. The choice, the check's two numbers and the reason go into metrics.json and the run.
"""

from __future__ import annotations

import contextlib

import numpy as np

from seqlm.evaluation.metrics import bits_per_byte

FP32 = "32-true"
CHECK_WINDOWS = 8  # windows of evaluate.bptt per stream: ~8k tokens at the defaults, well under a second
# 0.001 bits/byte is a tenth of the registry's smallest promotion step at ~1 bit/byte
# (registry.min_improvement 0.01, relative) and under the run-to-run noise of training itself; measured
# difference of bf16 on AVX512-BF16: docs/performance.md, Evaluation.
TOLERANCE_BITS_PER_BYTE = 0.001


def autocast_dtype(training_precision: str, device_type: str, native_bf16: bool):
    """(the autocast dtype evaluation would use, or None; why not, if None)."""
    import torch

    if training_precision.startswith("bf16"):
        if not native_bf16:
            return None, f"this {device_type} has no native bf16 (emulated bf16 is slower than fp32)"
        return torch.bfloat16, ""
    if training_precision.startswith("16"):
        if device_type != "cuda":
            return None, f"fp16 autocast is for GPUs; this is a {device_type}"
        return torch.float16, ""
    return None, f"trained in {training_precision}"


def autocast(dtype, device_type: str):
    """The context evaluation scores under: the training precision's autocast, or nothing for fp32."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def choose(
    requested: str,
    training_precision: str,
    protocol,
    model,
    valid: np.ndarray,
    valid_split: dict,
    eos_id: int,
    batch_size: int,
    bptt: int,
    device,
    native_bf16: bool,
    tolerance: float = TOLERANCE_BITS_PER_BYTE,
) -> tuple[object, dict]:
    """(autocast dtype or None, the record): ``requested`` is ``evaluate.precision``, ``valid_split`` the
    valid split's meta.json entry; the check scores under ``protocol`` (``evaluation.protocol``). The
    record is metrics.json's ``eval_precision`` and ``eval_precision_check``."""
    device_type = torch_device_type(device)
    check = {"training_precision": training_precision, "tolerance_bits_per_byte": tolerance}
    if requested == FP32:
        return None, _record(FP32, check | {"reason": "evaluate.precision is 32-true"})
    dtype, why_not = autocast_dtype(training_precision, device_type, native_bf16)
    if dtype is None:
        return None, _record(FP32, check | {"reason": why_not})
    sample = valid[: batch_size * (CHECK_WINDOWS * bptt + 1)]
    score = (protocol, model, sample, valid_split, eos_id, batch_size, bptt, device)
    fp32, low = sample_bits_per_byte(*score, None), sample_bits_per_byte(*score, dtype)
    difference = abs(low - fp32)
    check |= {
        "tokens": len(sample),
        "fp32_bits_per_byte": fp32,
        "training_precision_bits_per_byte": low,
        "difference_bits_per_byte": difference,
    }
    if difference > tolerance:
        reason = f"{training_precision} differs from fp32 by {difference:.2g} bits/byte > {tolerance:g}"
        return None, _record(FP32, check | {"reason": reason})
    reason = f"{training_precision} within {tolerance:g} bits/byte of fp32 ({difference:.2g})"
    return dtype, _record(training_precision, check | {"reason": reason})


def sample_bits_per_byte(
    protocol, model, tokens, split: dict, eos_id, batch_size, bptt, device, dtype
) -> float:
    """Bits per byte of ``tokens`` (a piece of the split ``split`` describes, at its tokens per byte)
    under ``protocol``; for a cloze model, its mean loss per blank at the split's tokens per byte."""
    with autocast(dtype, torch_device_type(device)):
        totals = protocol.totals(model, tokens, eos_id, batch_size, bptt, device, "valid")
    return bits_per_byte(totals.loss, split["tokens"], split["bytes"])


def torch_device_type(device) -> str:
    import torch

    return torch.device(device).type


def _record(used: str, check: dict) -> dict:
    return {"eval_precision": used, "eval_precision_check": check}
