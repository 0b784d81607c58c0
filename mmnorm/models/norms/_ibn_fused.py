"""IBN's fused path (private to :mod:`mmnorm.models.norms.ibn`).

IBN's output is one affine map per (sample, channel), ``y[n, c] = (x[n, c] - mean[n, c]) * invstd[n, c] * w[c] +
b[c]``: the instance channels with the sample's own statistics, the batch channels with the batch (train) or running
(eval) statistics. Instead of split -> InstanceNorm -> BatchNorm -> cat (two kernels per half and two copies), the
fused path makes one statistics pass (the instance half only, in eval) and ONE affine pass over the whole map; its
backward is one reduction pass and one elementwise pass (kernels: :mod:`mmnorm.models.norms.fused_kernels`).

The fused path needs a contiguous (N, C, H, W) float32/float64 map; :meth:`IBN.fused_path_applies` says when.
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .fused_kernels import merge_samples, row_affine_grad, row_sums, rowwise_batch_norm, sample_moments

__all__ = ['ibn_fused']


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """``nn.BatchNorm2d``'s train-mode update (momentum or cumulative average, unbiased variance)."""
    bn.num_batches_tracked.add_(1)
    factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.lerp_(mean, factor)
    bn.running_var.lerp_(var * (count / (count - 1)), factor)


def _affine(flat, n, in_weight, in_bias, bn_weight, bn_bias, mean, var, eps):
    """The affine pass over the ``(1, N*C, L)`` view; returns it and the per-(n, c) weight."""
    weight = torch.cat([in_weight, bn_weight] * n)  # (N*C,)
    bias = torch.cat([in_bias, bn_bias] * n)
    return rowwise_batch_norm(flat, mean.view(-1), var.view(-1), weight, bias, eps), weight


class _FusedIBN(torch.autograd.Function):
    """The affine pass with per-(n, c) statistics that are functions of ``x`` (instance channels always, batch
    channels in train mode); the backward adds their terms.

    Backward per (n, c), with ``p``, ``q`` the means of ``dy`` and ``dy * x_hat`` over what the statistics pooled
    (the sample's map for instance channels, the whole batch for batch channels in train, nothing in eval: 0):
    ``dx = w * invstd * (dy - p - x_hat * q)``.
    """

    @staticmethod
    def forward(ctx, flat, n, in_weight, in_bias, bn_weight, bn_bias, mean, var, batch_stats, eps):
        # flat: the (1, N*C, L) view of x; the caller views the output back (no view is created in here)
        y, weight = _affine(flat, n, in_weight, in_bias, bn_weight, bn_bias, mean, var, eps)
        ctx.save_for_backward(flat, weight, mean, var)
        ctx.n, ctx.num_in, ctx.batch_stats, ctx.eps = n, in_weight.numel(), batch_stats, eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        flat, weight, mean, var = ctx.saved_tensors
        n, h = ctx.n, ctx.num_in
        c, count = flat.shape[1] // n, flat.shape[2]
        grad_y = grad_y.contiguous()
        sum_gx, sum_g = row_sums(grad_y, flat, mean.view(-1), var.view(-1), ctx.eps)  # dy * x_hat, dy
        sum_gx, sum_g = sum_gx.view(n, c), sum_g.view(n, c)
        grad_weight, grad_bias = sum_gx.sum(0), sum_g.sum(0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            p, q = sum_g / count, sum_gx / count
            if ctx.batch_stats:
                p[:, h:] = grad_bias[h:] / (n * count)
                q[:, h:] = grad_weight[h:] / (n * count)
            else:
                p[:, h:] = 0
                q[:, h:] = 0
            invstd = torch.rsqrt(var + ctx.eps)
            a = weight.view(n, c) * invstd
            k1 = -a * invstd * q
            grad_x = row_affine_grad(grad_y, flat, a.view(-1), k1.view(-1), (-a * p - k1 * mean).view(-1))
        return grad_x, None, grad_weight[:h], grad_bias[:h], grad_weight[h:], grad_bias[h:], None, None, None, None


def ibn_fused(x: torch.Tensor, inorm: nn.InstanceNorm2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """IBN of ``x`` with the parameters and running statistics of its two children, without calling them.

    Gives what ``torch.cat([inorm(x[:, :h]), bn(x[:, h:])], 1)`` gives (outputs, gradients, the BN half's running
    statistics and ``num_batches_tracked``), ``h = inorm.num_features``.

    Args:
        x (Tensor): ``(N, C, H, W)`` contiguous, float32 or float64, ``N > 0``, ``H * W > 1``.
        inorm (nn.InstanceNorm2d): Affine, without running statistics.
        bn (nn.BatchNorm2d): Affine, with running statistics; batch statistics in train mode, running in eval.

    Returns:
        Tensor: ``(N, C, H, W)``.
    """
    n, c = x.shape[:2]
    h = inorm.num_features
    with torch.no_grad():
        if bn.training:
            mean, var = sample_moments(x)
            bn_mean, bn_var = merge_samples(mean[:, h:], var[:, h:])
            _update_running_stats(bn, bn_mean, bn_var, n * x[0, 0].numel())
            mean[:, h:], var[:, h:] = bn_mean, bn_var
        else:
            mean_in, var_in = sample_moments(x, h)
            mean = torch.cat([mean_in, bn.running_mean.expand(n, -1)], 1)
            var = torch.cat([var_in, bn.running_var.expand(n, -1)], 1)
    # float32/float64 in and out: nothing for autocast to change (batch_norm is not one of its lower-precision ops)
    params = (inorm.weight, inorm.bias, bn.weight, bn.bias)
    flat = x.view(1, n * c, -1)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        y = _FusedIBN.apply(flat, n, *params, mean, var, bn.training, bn.eps)
    else:
        y = _affine(flat, n, *params, mean, var, bn.eps)[0]
    return y.view_as(x)
