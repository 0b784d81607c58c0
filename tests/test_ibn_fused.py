"""IBN's fused path (one statistics pass, one affine pass) against its children path, and when it is taken."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms import IBN

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


def children_path(ibn: IBN) -> IBN:
    """A copy that calls its children: a (no-op) forward pre-hook on the BN half turns the fused path off, as the
    measuring hook of AdaBN recalibration does."""
    ref = copy.deepcopy(ibn)
    ref.BN.register_forward_pre_hook(lambda module, args: None)
    return ref


def run(ibn: IBN, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().requires_grad_()
    y = ibn(x)
    grads = torch.autograd.grad(y, [x] + list(ibn.parameters()), grad)
    return y, grads


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('channels,ratio,momentum', [(16, 0.5, 0.1), (9, 0.25, None), (7, 0.75, 0.3)])
@pytest.mark.parametrize('mode', ['train', 'eval', 'norm_eval'])
def test_fused_and_children_paths_agree(dtype, channels, ratio, momentum, mode):
    torch.manual_seed(0)
    fused = IBN(channels, ratio=ratio, momentum=momentum).to(dtype)
    with torch.no_grad():
        for p in fused.parameters():
            p.uniform_(0.5, 1.5)
    ref = children_path(fused)
    for m in (fused, ref):
        m.train(mode != 'eval')
        if mode == 'norm_eval':
            m.BN.eval()
    for step in range(3):
        x = torch.randn(4, channels, 5, 6, dtype=dtype) * (step + 1) + step
        grad = torch.randn_like(x)
        assert fused.fused_path_applies(x) and not ref.fused_path_applies(x)
        (y, grads), (y_ref, grads_ref) = run(fused, x, grad), run(ref, x, grad)
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        for g, g_ref in zip(grads, grads_ref):
            torch.testing.assert_close(g, g_ref, **TOL[dtype])
    for key, value in ref.state_dict().items():  # running statistics and num_batches_tracked
        torch.testing.assert_close(fused.state_dict()[key], value, **TOL[dtype])
    assert fused.BN.num_batches_tracked.item() == (3 if mode == 'train' else 0)


@pytest.mark.parametrize('offset', [1e3, 0.0])
def test_ill_conditioned_statistics_are_exact(offset):
    """A large mean (one-pass variance would lose its digits) and a constant channel: the fused path recomputes the
    statistics in two passes and matches torch's IN / BN on float64."""
    torch.manual_seed(0)
    ibn = IBN(8)
    x = torch.randn(3, 8, 6, 6) + offset
    x[:, 1] = 7.0  # constant channel of the instance half
    x[:, 6] = -3.0  # and of the batch half
    expected = children_path(ibn).double()(x.double())
    assert ibn.fused_path_applies(x)
    y = ibn(x)
    torch.testing.assert_close(y.double(), expected, atol=2e-3 if offset else 2e-5, rtol=1e-4)
    torch.testing.assert_close(y[:, 1], ibn.IN.bias[1].expand(3, 6, 6).detach())  # (x - mean) = 0 exactly


def test_when_the_fused_path_applies():
    ibn = IBN(8)
    x = torch.randn(2, 8, 4, 4)
    assert ibn.fused_path_applies(x)
    assert not ibn.fused_path_applies(x.to(memory_format=torch.channels_last))
    assert not ibn.fused_path_applies(x.bfloat16())
    assert not ibn.fused_path_applies(torch.randn(2, 8, 1, 1))  # single position: IN outputs its bias
    assert not ibn.fused_path_applies(torch.randn(0, 8, 4, 4))
    assert not IBN(8).double().fused_path_applies(x)  # parameters of another dtype
    hooked = IBN(8)
    hooked.IN.register_forward_hook(lambda module, args, out: None)
    assert not hooked.fused_path_applies(x)
    sync = convert_sync_batchnorm(IBN(8))
    assert isinstance(sync.BN, nn.SyncBatchNorm) and not sync.fused_path_applies(x)
    reverted = revert_sync_batchnorm(sync)  # mmengine's _BatchNormXd: a subclass, children path
    assert type(reverted.BN) is not nn.BatchNorm2d and not reverted.fused_path_applies(x)
    no_affine = IBN(8, bn_cfg=dict(type='BN', affine=False))
    assert not no_affine.fused_path_applies(x)
    other_eps = IBN(8)
    other_eps.BN.eps = 1e-3
    assert not other_eps.fused_path_applies(x)


def test_reverted_sync_bn_children_path_matches_fused():
    torch.manual_seed(0)
    fused = IBN(8)
    reverted = revert_sync_batchnorm(convert_sync_batchnorm(copy.deepcopy(fused)))
    x, grad = torch.randn(3, 8, 5, 5), torch.randn(3, 8, 5, 5)
    (y, grads), (y_ref, grads_ref) = run(fused, x, grad), run(reverted, x, grad)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOL[torch.float32])


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # shape checks become trace constants (expected)
def test_tracing_uses_the_children():
    """ONNX export and ``torch.jit.trace`` see IN + BN nodes (no Python autograd Function)."""
    ibn = IBN(8).eval()
    x = torch.randn(2, 8, 4, 4)
    traced = torch.jit.trace(ibn, x)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert 'aten::instance_norm' in kinds and 'aten::batch_norm' in kinds and 'prim::PythonOp' not in kinds
    torch.testing.assert_close(traced(x), ibn(x))


def test_no_grad_and_frozen_parameters():
    torch.manual_seed(0)
    ibn = IBN(8)
    ref = children_path(ibn)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ibn(x), ref(x))
    for m in (ibn, ref):
        m.requires_grad_(False)
    x.requires_grad_()
    g, = torch.autograd.grad(ibn(x).square().sum(), x)
    g_ref, = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
