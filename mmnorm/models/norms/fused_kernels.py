"""Whole-map kernels shared by the fused paths of IBN and RN (plain functions on ``(N, C, L)`` maps).

Both layers normalise every (sample, channel) row of the map with its own affine coefficients: IBN's instance
channels per sample, RN's per domain part. On the ``(1, N*C, L)`` view of a contiguous map such a row is a channel,
so torch's batch-norm kernels do the big passes at BN's own speed:

* :func:`sample_moments`: per-(n, c) mean and biased variance (one pass: sum and sum of squares, checked);
* :func:`rowwise_batch_norm`: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with per-(n, c) vectors, the
  eval batch-norm kernel (one read, one write);
* :func:`row_sums`: per-(n, c) ``sum(dy * (x - mean) * invstd)`` and ``sum(dy)``, the eval batch-norm backward's
  weight / bias gradients (one fused read of both maps, no ``dy * x`` temporary);
* :func:`row_affine_grad`: ``dx = a * dy + k1 * x + k0`` with per-(n, c) coefficients.

Measured against the alternatives by ``tools/benchmark_rn_kernels.py`` (docs/benchmarks.md).
"""
from typing import Tuple

import torch

__all__ = ['sample_moments', 'merge_samples', 'rowwise_batch_norm', 'row_sums', 'row_affine_grad']

# The one-pass variance ``E[x^2] - mean^2`` loses about log10(E[x^2] / var) digits; above this ratio the statistics
# are recomputed in two passes (float32 keeps ~5 digits at the limit).
ONE_PASS_MAX_RATIO = 100.0


def sample_moments(x: torch.Tensor, num_channels: int = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over the positions of each (sample, channel) among the first ``num_channels``.

    On CPU one pass (sum and sum of squares; BN's Welford-style statistics kernels are several times slower on these
    rows), recomputed in two passes where the one-pass variance would lose digits (large mean, constant rows); on
    other devices and under ``torch.compile`` (no data-dependent branch in the graph; inductor fuses the passes)
    two passes.

    Args:
        x (Tensor): ``(N, C, *)``.
        num_channels (int, optional): Leading channels to reduce. Defaults to None (all).

    Returns:
        tuple[Tensor, Tensor]: ``mean``, ``var``, each ``(N, num_channels)`` of ``x.dtype``.
    """
    flat = x.reshape(x.shape[0], x.shape[1], -1)[:, :num_channels]  # (N, k, L), a view of a contiguous map
    count = flat.shape[2]
    mean = flat.sum(2).div_(count)
    if x.device.type == 'cpu' and not torch.compiler.is_compiling():
        mean_sq = torch.linalg.vector_norm(flat, dim=2).square_().div_(count)
        var = torch.addcmul(mean_sq, mean, mean, value=-1)
        # E[x^2] / var bounds the digits lost; a negative var (rounding of a constant row) fails it too
        if bool((var * ONE_PASS_MAX_RATIO >= mean_sq).all()):
            return mean, var
    var = torch.linalg.vector_norm(flat - mean[..., None], dim=2).square_().div_(count)
    return mean, var


def merge_samples(mean: torch.Tensor, var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of equal-sized per-sample moments ``(n, k)`` (Chan merge): ``(k,)``."""
    batch_mean = mean.mean(0)
    return batch_mean, var.mean(0) + (mean - batch_mean).square().mean(0)


def rowwise_batch_norm(flat: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``(flat - mean) / sqrt(var + eps) * weight + bias`` per row of the ``(1, R, L)`` view; vectors ``(R,)``."""
    return torch.batch_norm(flat, weight, bias, mean, var, False, 0.0, eps, False)


def row_sums(grad: torch.Tensor, flat: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
             eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``(1, R, L)`` views: ``sum(grad * (flat - mean) / sqrt(var + eps))`` and ``sum(grad)``, ``(R,)``.

    With ``mean = 0``, ``var = 1``, ``eps = 0`` the first is the raw ``sum(grad * flat)``.
    """
    ones = torch.ones_like(mean)
    _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(grad, flat, ones, mean, var, None, None, False, eps,
                                                                 [False, True, True])
    return sum_gx, sum_g


def row_affine_grad(grad: torch.Tensor, flat: torch.Tensor, a: torch.Tensor, k1: torch.Tensor,
                    k0: torch.Tensor) -> torch.Tensor:
    """``a * grad + k1 * flat + k0`` per row of ``(1, R, L)`` views with ``(R,)`` coefficients.

    In-place accumulation into one new map (an out-of-place ``addcmul`` with two broadcast operands is ~4x slower).
    """
    shape = (1, -1, 1)
    return (grad * a.view(shape)).addcmul_(flat, k1.view(shape)).add_(k0.view(shape))
