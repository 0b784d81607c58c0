"""The whole-map kernels of the fused IBN / RN / PBN paths against float64 formulas, on both sides of their
one-pass / two-pass switch (ill-conditioned maps: a large mean, constant rows)."""
import copy

import pytest
import torch
from references import pbn_patch_loop  # the per-patch Python loop (released structure)

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms import PBN, RN, domain_split
from mmnorm.models.norms._pbn_cells import band_dot, band_sum, band_sum_of_squares
from mmnorm.models.norms.fused_kernels import (merge_samples, row_affine_grad, row_sums, rowwise_batch_norm,
                                               sample_moments)
from mmnorm.models.norms.pbn import pbn_train, sample_pbn_plan


def _map(offset=0.0, dtype=torch.float32, shape=(3, 5, 6, 7), constant=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * torch.rand(shape[1], 1, 1, generator=g).add(0.5) + offset
    if constant:
        x[:, 1] = 2.5  # a constant channel
    return x.to(dtype)


@pytest.mark.parametrize('offset', [0.0, 3.0, 1e4])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sample_moments_match_float64_two_pass(offset, dtype):
    x = _map(offset, dtype)
    scale = max(offset, 1.0)
    eps = 1e-6 if dtype == torch.float32 else 1e-14  # relative rounding of the sums
    mean, var = sample_moments(x)
    ref_var, ref_mean = torch.var_mean(x.double().flatten(2), dim=2, correction=0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=0, atol=eps * scale)
    torch.testing.assert_close(var.double(), ref_var, rtol=100 * eps, atol=eps * scale**2)
    assert var[:, 1].abs().max() <= eps * scale**2  # constant rows: (close to) exactly 0
    mean_k, var_k = sample_moments(x, 2)
    assert torch.equal(mean_k, mean[:, :2]) and mean_k.shape == (3, 2)
    batch_mean, batch_var = merge_samples(mean.double(), var.double())
    ref_var, ref_mean = torch.var_mean(x.double().transpose(0, 1).flatten(1), dim=1, correction=0)
    torch.testing.assert_close(batch_mean, ref_mean)
    torch.testing.assert_close(batch_var, ref_var, rtol=100 * eps, atol=eps * scale**2)


def test_row_kernels_match_their_formulas():
    torch.manual_seed(0)
    flat, grad = torch.randn(1, 6, 20, dtype=torch.float64), torch.randn(1, 6, 20, dtype=torch.float64)
    mean, var, w, b = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5, \
        torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    col = lambda v: v.view(1, -1, 1)  # noqa: E731
    x_hat = (flat - col(mean)) / torch.sqrt(col(var) + 1e-5)
    torch.testing.assert_close(rowwise_batch_norm(flat, mean, var, w, b, 1e-5), x_hat * col(w) + col(b))
    sum_gx, sum_g = row_sums(grad, flat, mean, var, 1e-5)
    torch.testing.assert_close(sum_gx, (grad * x_hat).sum((0, 2)))
    torch.testing.assert_close(sum_g, grad.sum((0, 2)))
    torch.testing.assert_close(row_affine_grad(grad, flat, w, b, mean), col(w) * grad + col(b) * flat + col(mean))


def test_pbn_band_reductions():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 7, 9), torch.randn(2, 3, 7, 9)
    edges = ((0, 3, 7), (0, 2, 5, 9))
    # float32 row partial sums, float64 accumulation
    torch.testing.assert_close(band_dot(a, b, *edges), band_sum((a.double() * b), *edges), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        band_sum_of_squares(a, *edges), band_sum(a.double().square(), *edges), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('offset', [0.0, 1e3])
def test_pbn_float32_matches_the_float64_loop(offset):
    """PBN's fused cells (one-pass moments, or two passes for the offset map) against the released per-patch loop
    in float64: outputs, gradients and running statistics."""
    torch.manual_seed(0)
    layer = PBN(5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_mean.fill_(offset)
    ref = copy.deepcopy(layer).double()
    x = _map(offset).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    plan = sample_pbn_plan(5, 6, 7)
    y = pbn_train(x, layer.weight, layer.bias, layer.running_mean, layer.running_var, plan, 0.1, layer.eps)
    y_ref = pbn_patch_loop(x_ref, ref, plan)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad)
    want = torch.autograd.grad(y_ref, (x_ref, ref.weight, ref.bias), grad.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=2e-4 if offset else 1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-3 if offset else 1e-4)
    torch.testing.assert_close(layer.running_mean.double(), ref.running_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(layer.running_var.double(), ref.running_var, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('offset', [0.0, 1e3])
def test_rn_float32_matches_float64(offset):
    """RN in float32 (one-pass moments, or two passes for the offset map) against RN in float64. (No constant
    channel: the variance-gate gradients of a zero-variance channel scale rounding by eps^-1.5 in any precision.)"""
    torch.manual_seed(0)
    rn = RN(5)
    ref = copy.deepcopy(rn).double()
    x = _map(offset, shape=(4, 5, 6, 7), constant=False).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    with domain_split(rn, (2, 2)), domain_split(ref, (2, 2)):
        y, y_ref = rn(x), ref(x_ref)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x] + list(rn.parameters()), grad)
    want = torch.autograd.grad(y_ref, [x_ref] + list(ref.parameters()), grad.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=2e-4 if offset else 1e-5)
    for g, w in zip(got, want):  # the backward's raw sums sum(dy * x) lose ~3 digits to a 1e3 offset in float32
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-2 if offset else 1e-4)
    torch.testing.assert_close(rn.running_var_target.double(), ref.running_var_target, rtol=1e-4, atol=1e-4)
