"""The decoder and the cross-entropy in one, computed in chunks so the full logits tensor never exists.

``decoder_cross_entropy(features, weight, bias, targets, chunk)`` equals
``F.cross_entropy(features @ weight.T + bias, targets)`` (the mean over rows) and its gradients, but it
walks the rows ``chunk`` at a time: each chunk's logits are made, turned into the loss and into the
gradients of the features, the weight and the bias (softmax minus one-hot, the closed form), and freed.
Backward then only scales those gradients by the incoming one.

Why (docs/architecture.md, decision 21): with a large vocabulary the [B·T, V] logits of one step are
hundreds of MB. glibc serves such blocks with fresh mmaps and faults their pages in on every step (measured:
78 s of system time against 162 s of user time in a 25.7k-word bench), and on a GPU they dominate memory.
Chunks of a few MB stay in the allocator's heap and in cache. The matrix work is the same three products
as autograd's (logits, d features, d weight), so nothing is recomputed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, targets, chunk):
        dtype = _compute_dtype(features)
        n = features.shape[0]
        with torch.autocast(features.device.type, enabled=False):
            w = weight.to(dtype)
            f_all = features.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=features.device)
            grad_features = torch.empty_like(features)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
            grad_bias = torch.zeros_like(bias, dtype=torch.float32)
            for start in range(0, n, chunk):
                f = f_all[start : start + chunk]
                t = targets[start : start + chunk]
                logits = torch.addmm(bias.to(dtype), f, w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t.unsqueeze(1)).squeeze(1)).sum()
                # d (sum of the chunk's losses) / d logits = softmax - one_hot(target)
                grad = logits.sub_(lse.unsqueeze(1)).exp_()
                grad[torch.arange(len(t), device=t.device), t] -= 1.0
                grad_bias += grad.sum(0)
                grad = grad.to(dtype)
                if dtype == grad_features.dtype:
                    torch.mm(grad, w, out=grad_features[start : start + chunk])
                else:
                    grad_features[start : start + chunk] = grad @ w
                if dtype == torch.float32:
                    grad_weight.addmm_(grad.t(), f)  # in place: no [V, E] temporary per chunk
                else:
                    grad_weight += (grad.t() @ f).float()
        scale = 1.0 / n
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        ctx.scale = scale
        ctx.dtypes = (weight.dtype, bias.dtype)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        g = grad_output * ctx.scale
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            grad_features * g.to(grad_features.dtype),
            (grad_weight * g).to(weight_dtype),
            (grad_bias * g).to(bias_dtype),
            None,
            None,
        )


def decoder_cross_entropy(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Mean cross-entropy of ``features`` [N, E] decoded by ``weight`` [V, E] + ``bias`` [V] against
    ``targets`` [N]; ``chunk`` rows at a time, or through the full logits when ``chunk`` is 0 or ≥ N."""
    if chunk <= 0 or chunk >= features.shape[0]:
        logits = F.linear(features, weight, bias)
        return F.cross_entropy(logits.float(), targets)
    return _ChunkedCrossEntropy.apply(features, weight, bias, targets, chunk)
