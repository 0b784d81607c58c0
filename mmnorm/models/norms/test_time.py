"""Normalisation with test-time statistics: the test batch's own, or their blend with a source
prior.

The one implementation behind :class:`~mmnorm.models.norms.AdaBN`'s test modes ``'batch'`` /
``'blend'`` and test-time adaptation's ``'bn'`` / ``'prior'`` (:mod:`mmnorm.tta`). With
``mu_b, var_b`` the per-channel mean and biased variance of the batch over ``N x *`` (N samples),
``mu_s, var_s`` the source statistics and ``N_0`` the prior strength in samples:

* ``N_0 = 0`` (tent's "BN adapt"): ``y = w (x - mu_b) / sqrt(var_b + eps) + b``;
* ``N_0 > 0``: Schneider et al., "Improving robustness against common corruptions by covariate shift
  adaptation" (arXiv 2006.16971): ``mu = a mu_s + (1 - a) mu_b``, ``var = a var_s + (1 - a) var_b``,
  ``a = N_0 / (N_0 + N)``.

The moments come from :mod:`mmnorm.stats`.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ...stats import batch_moments, channel_moments

__all__ = ['normalize_with_test_statistics']


def normalize_with_test_statistics(x: torch.Tensor,
                                   weight: Optional[torch.Tensor],
                                   bias: Optional[torch.Tensor],
                                   eps: float,
                                   source_mean: Optional[torch.Tensor],
                                   source_var: Optional[torch.Tensor],
                                   prior: float = 0.0) -> torch.Tensor:
    """Normalises ``x`` with its batch statistics, blended with the source statistics when
    ``prior > 0``.

    Differentiable in ``x``, ``weight`` and ``bias``. Three computations, one result:

    * with gradient and ``prior = 0``: torch's train-mode ``F.batch_norm`` (autograd through the
      batch statistics, as torch BN in training);
    * with gradient and ``prior > 0``: :func:`~mmnorm.stats.channel_moments`, blended, then the
      normalisation written out (``F.batch_norm`` does not differentiate through given statistics);
    * without gradient: :func:`~mmnorm.stats.batch_moments`, blended, then eval-mode
      ``F.batch_norm``.

    An input with one value per channel (e.g. a 1x1 image-pool branch on one image) has no batch
    statistics: it is normalised with the source statistics, as in eval. fp16 / bf16 inputs are
    reduced in fp32 and the result is cast back.

    Args:
        x (Tensor): The layer input.
        weight (Tensor, optional): γ (C,); None: no scale.
        bias (Tensor, optional): β (C,); None: no shift.
        eps (float): Added to the variance.
        source_mean (Tensor, optional): Source mean (C,), read, never written. Needed when
            ``prior > 0`` or when ``x`` has one value per channel.
        source_var (Tensor, optional): Source variance (C,), as ``source_mean``.
        prior (float): ``N_0``, in samples, >= 0. Defaults to 0 (batch statistics only).

    Shape:
        - Input: (N, C, *)
        - Output: (N, C, *) (same shape and dtype as the input)
    """
    if x.numel() <= x.shape[1]:  # one value per channel: no batch statistics
        return F.batch_norm(x, source_mean, source_var, weight, bias, False, 0.0, eps)
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    if differentiable and prior == 0:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    if differentiable:
        mean, var = channel_moments(x)
    else:
        _, mean, var = batch_moments(x)
    if prior > 0:
        a = float(prior) / (float(prior) + x.shape[0])
        mean = a * source_mean.to(mean.dtype) + (1 - a) * mean
        var = a * source_var.to(var.dtype) + (1 - a) * var
    xf = x.to(mean.dtype)
    w = None if weight is None else weight.to(mean.dtype)
    b = None if bias is None else bias.to(mean.dtype)
    if not differentiable:  # one fused normalisation pass
        return F.batch_norm(xf, mean, var, w, b, False, 0.0, eps).to(x.dtype)
    shape = (1, -1) + (1, ) * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if w is not None:
        y = y * w.view(shape)
    if b is not None:
        y = y + b.view(shape)
    return y.to(x.dtype)
