"""IBN layer: equivalence with torch IN/BN halves, gradcheck, registry, state dicts, SyncBN round
trip, errors."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms import IBN

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


def randomize(ibn: IBN) -> None:
    """Non-trivial affine parameters so a swapped slice would show."""
    with torch.no_grad():
        for p in ibn.parameters():
            p.uniform_(0.5, 1.5)


def reference(ibn: IBN, dtype) -> tuple:
    """Independent torch modules holding copies of ibn's parameters and buffers."""
    h, c = ibn.num_in, ibn.num_features
    inorm = nn.InstanceNorm2d(h, eps=ibn.eps, affine=True).to(dtype)
    bnorm = nn.BatchNorm2d(c - h, eps=ibn.eps, momentum=ibn.momentum).to(dtype)
    inorm.load_state_dict({
        k[3:]: v.clone()
        for k, v in ibn.state_dict().items() if k.startswith('IN.')
    })
    bnorm.load_state_dict({
        k[3:]: v.clone()
        for k, v in ibn.state_dict().items() if k.startswith('BN.')
    })
    return inorm, bnorm


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('channels,ratio', [(16, 0.25), (16, 0.5), (16, 0.75), (7, 0.5), (9, 0.25)])
def test_matches_instance_and_batch_norm_halves(channels, ratio, dtype):
    torch.manual_seed(0)
    ibn = IBN(channels, ratio=ratio).to(dtype)
    randomize(ibn)
    h = int(channels * ratio)
    assert (ibn.num_in, ibn.IN.num_features, ibn.BN.num_features) == (h, h, channels - h)
    inorm, bnorm = reference(ibn, dtype)
    for step in range(3):  # train: batch statistics, running stats of the BN half move
        x = torch.randn(4, channels, 5, 6, dtype=dtype) * (step + 1) + step
        expected = torch.cat([inorm(x[:, :h]), bnorm(x[:, h:])], dim=1)
        torch.testing.assert_close(ibn(x), expected, **TOL[dtype])
    torch.testing.assert_close(ibn.BN.running_mean, bnorm.running_mean, **TOL[dtype])
    torch.testing.assert_close(ibn.BN.running_var, bnorm.running_var, **TOL[dtype])
    assert ibn.BN.num_batches_tracked.item() == 3
    ibn.eval(), inorm.eval(), bnorm.eval()
    x = torch.randn(2, channels, 4, 3, dtype=dtype) + 2
    expected = torch.cat([inorm(x[:, :h]), bnorm(x[:, h:])], dim=1)
    torch.testing.assert_close(ibn(x), expected, **TOL[dtype])
    # In eval the BN half uses the running stats, the IN half still the per-instance stats.
    by_running = (x[:, h:] - ibn.BN.running_mean[:, None, None]
                  ) / torch.sqrt(ibn.BN.running_var[:, None, None] + ibn.eps)
    torch.testing.assert_close(
        ibn(x)[:, h:], by_running * ibn.BN.weight[:, None, None] + ibn.BN.bias[:, None, None],
        **TOL[dtype])


def test_official_split_bug_is_not_reproduced():
    """ratio 0.25 on C=16: 4 IN channels (the official torch.split(x, 4) would produce 4 chunks)."""
    ibn = IBN(16, ratio=0.25).eval()
    x = torch.randn(2, 16, 4, 4) * 3 + 1
    y = ibn(x)
    # IN channels are standardised per sample; BN channels (fresh running stats 0/1) are left as is.
    torch.testing.assert_close(y[:, :4].mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 4:], x[:, 4:] / (1 + 1e-5)**0.5)


@pytest.mark.parametrize('train', [True, False])
def test_gradcheck_float64(train):
    torch.manual_seed(0)
    ibn = IBN(5, ratio=0.4).double()
    randomize(ibn)
    ibn.train(train)
    x = torch.randn(3, 5, 3, 2, dtype=torch.float64, requires_grad=True)
    params = (ibn.IN.weight, ibn.IN.bias, ibn.BN.weight, ibn.BN.bias)

    def fn(inp, *_):
        ibn.BN.num_batches_tracked.zero_()
        return ibn(inp)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_registry_round_trip(scope):
    with DefaultScope.overwrite_default_scope(scope):
        name, layer = build_norm_layer(
            dict(type='IBN', ratio=0.25, momentum=0.05, requires_grad=False), 12, postfix=2)
    assert name == 'bn2' and isinstance(layer, IBN)
    assert (layer.num_in, layer.eps, layer.momentum, layer.BN.momentum) == (3, 1e-5, 0.05, 0.05)
    assert not any(p.requires_grad for p in layer.parameters())
    assert set(layer.state_dict()) == {
        'IN.weight', 'IN.bias', 'BN.weight', 'BN.bias', 'BN.running_mean', 'BN.running_var',
        'BN.num_batches_tracked'
    }
    assert 'ratio=0.25' in repr(layer) and "bn_cfg={'type': 'BN'}" in repr(layer)


def test_momentum_none_and_eps_reach_both_halves():
    ibn = IBN(6, eps=1e-3, momentum=None)
    assert ibn.IN.eps == ibn.BN.eps == 1e-3 and ibn.BN.momentum is None
    _, bnorm = reference(ibn, torch.float32)
    bnorm.momentum = None
    for _ in range(3):
        x = torch.randn(4, 6, 3, 3) + 1
        ibn(x), bnorm(x[:, 3:])
    torch.testing.assert_close(ibn.BN.running_mean, bnorm.running_mean)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    src = IBN(10, ratio=0.3)
    randomize(src)
    src(torch.randn(3, 10, 4, 4))
    dst = IBN(10, ratio=0.3)
    dst.load_state_dict(src.state_dict(), strict=True)
    for key, value in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[key], value, rtol=0, atol=0)


def test_loads_plain_bn_state_dict():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(10)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(torch.rand(10) + 0.5)
    bn.num_batches_tracked.fill_(7)
    wrapper = nn.Sequential()
    wrapper.add_module('bn1', IBN(10, ratio=0.3))  # h = 3
    result = wrapper.load_state_dict({
        f'bn1.{k}': v
        for k, v in bn.state_dict().items()
    },
                                     strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ibn = wrapper.bn1
    torch.testing.assert_close(ibn.IN.weight, bn.weight[:3], rtol=0, atol=0)
    torch.testing.assert_close(ibn.IN.bias, bn.bias[:3], rtol=0, atol=0)
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        torch.testing.assert_close(getattr(ibn.BN, name), getattr(bn, name)[3:], rtol=0, atol=0)
    assert ibn.BN.num_batches_tracked.item() == 7
    # mmengine's loader (used by init_cfg=Pretrained / load_from) takes the same path.
    from mmengine.runner.checkpoint import load_state_dict
    other = nn.Sequential()
    other.add_module('bn1', IBN(10, ratio=0.3))
    load_state_dict(other, {f'bn1.{k}': v for k, v in bn.state_dict().items()}, strict=True)
    torch.testing.assert_close(other.bn1.BN.running_var, bn.running_var[3:], rtol=0, atol=0)


def test_plain_bn_of_wrong_size_is_an_error():
    with pytest.raises(
            RuntimeError, match=r'size mismatch for weight: a plain BN entry of shape \(8,\)'):
        IBN(10).load_state_dict(nn.BatchNorm2d(8).state_dict())


def test_sync_bn_conversion_keeps_ibn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), IBN(8, ratio=0.25))
    randomize(model[1])
    x = torch.randn(2, 3, 7, 7)
    model.eval()
    expected = model(x)
    synced = convert_sync_batchnorm(model)
    assert isinstance(synced[1], IBN)
    assert type(synced[1].BN) is nn.SyncBatchNorm and type(synced[1].IN) is nn.InstanceNorm2d
    assert synced[1].BN.num_features == 6
    reverted = revert_sync_batchnorm(synced)  # what every non-distributed Runner does
    assert isinstance(reverted[1], IBN)
    assert isinstance(reverted[1].BN, nn.modules.batchnorm._BatchNorm)
    assert not isinstance(reverted[1].BN, nn.SyncBatchNorm)
    torch.testing.assert_close(reverted.eval()(x), expected)


def test_sync_bn_half_from_bn_cfg():
    ibn = IBN(8, bn_cfg=dict(type='SyncBN'))
    assert isinstance(ibn.BN, nn.SyncBatchNorm)  # mmcv's 'SyncBN' (a torch SyncBatchNorm subclass)
    reverted = revert_sync_batchnorm(ibn)
    assert isinstance(reverted, IBN) and not isinstance(reverted.BN, nn.SyncBatchNorm)
    y = reverted(torch.randn(2, 8, 3, 3))  # CPU forward works after the revert
    assert y.shape == (2, 8, 3, 3)


@pytest.mark.parametrize('ratio', [0, 1, 1.5, -0.25, 'half', True, None])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(
            ValueError, match=rf'ratio must be a number in \(0, 1\), got ratio={ratio!r} \(C=16\)'):
        IBN(16, ratio=ratio)


def test_ratio_that_leaves_a_half_empty():
    with pytest.raises(
            ValueError,
            match=r'ratio=0.25 leaves the instance-norm half with 0 .* of C=3 channels'):
        IBN(3, ratio=0.25)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match=r"bn_cfg must not set \['momentum'\]"):
        IBN(8, bn_cfg=dict(type='BN', momentum=0.3))
    with pytest.raises(TypeError, match='bn_cfg must be a dict with a "type"'):
        IBN(8, bn_cfg='BN')
    with pytest.raises(ValueError, match='num_features must be an int >= 2, got 1'):
        IBN(1)
    with pytest.raises(ValueError, match=r'expects \(N, 8, H, W\) input, got shape \(2, 6, 3, 3\)'):
        IBN(8)(torch.randn(2, 6, 3, 3))


@pytest.mark.parametrize('mode', ['one_pass', 'layerwise'])
def test_adabn_recalibration_touches_only_the_bn_half(mode):
    from mmnorm.recalibration import recalibrate_bn
    torch.manual_seed(0)
    model = nn.Sequential(IBN(8, ratio=0.5))
    randomize(model[0])
    in_before = {k: v.clone() for k, v in model[0].IN.state_dict().items()}
    batches = [torch.randn(n, 8, 4, 4) * 2 + 3 for n in (3, 5)]
    result = recalibrate_bn(model, batches, mode=mode, progress=False, logger=None)
    assert result.layers == ['0.BN'] and '0.IN' in result.left_alone
    data = torch.cat(batches)[:, 4:].double()  # the BN half's channels over all batches
    torch.testing.assert_close(
        model[0].BN.running_mean.double(), data.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        model[0].BN.running_var.double(),
        data.transpose(0, 1).flatten(1).var(dim=1, unbiased=True),
        atol=1e-4,
        rtol=1e-5)
    for key, value in model[0].IN.state_dict().items():
        torch.testing.assert_close(value, in_before[key], rtol=0, atol=0)


def _modes(ibn: nn.Module, mode: str) -> None:
    ibn.train(mode != 'eval')
    if mode == 'norm_eval':  # what a toolbox backbone does: eval() on every _BatchNorm
        ibn.BN.eval()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('channels,ratio,momentum', [(16, 0.5, 0.1), (9, 0.25, None),
                                                     (7, 0.75, 0.3)])
@pytest.mark.parametrize('mode', ['train', 'eval', 'norm_eval'])
def test_gradients_and_buffers_match_independent_halves(dtype, channels, ratio, momentum, mode):
    """Outputs, gradients (input, both affines) and the BN half's buffers equal split -> torch
    InstanceNorm2d / BatchNorm2d -> cat computed with separate modules."""
    torch.manual_seed(0)
    ibn = IBN(channels, ratio=ratio, momentum=momentum).to(dtype)
    randomize(ibn)
    inorm, bnorm = reference(ibn, dtype)
    bnorm.momentum = momentum
    h = ibn.num_in
    _modes(ibn, mode)
    inorm.train(mode != 'eval')
    bnorm.train(mode == 'train')
    for step in range(3):
        x = torch.randn(4, channels, 5, 6, dtype=dtype) * (step + 1) + step
        grad = torch.randn_like(x)
        x_ibn, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = ibn(x_ibn)
        y_ref = torch.cat([inorm(x_ref[:, :h]), bnorm(x_ref[:, h:])], dim=1)
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        got = torch.autograd.grad(y,
                                  [x_ibn, ibn.IN.weight, ibn.IN.bias, ibn.BN.weight, ibn.BN.bias],
                                  grad)
        want = torch.autograd.grad(y_ref,
                                   [x_ref, inorm.weight, inorm.bias, bnorm.weight, bnorm.bias],
                                   grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL[dtype])
    for name, value in bnorm.state_dict().items():
        torch.testing.assert_close(ibn.BN.state_dict()[name], value, **TOL[dtype])
    assert ibn.BN.num_batches_tracked.item() == (3 if mode == 'train' else 0)


@pytest.mark.parametrize('train', [True, False])
def test_empty_batch_like_batch_norm(train):
    """N == 0: an empty output of the input's shape, as nn.BatchNorm2d gives (torch's IN refuses
    it)."""
    ibn, bn = IBN(8).train(train), nn.BatchNorm2d(8).train(train)
    for shape in [(0, 8, 5, 6), (0, 8, 1, 1)]:
        x, x_bn = torch.randn(*shape, requires_grad=True), torch.randn(*shape, requires_grad=True)
        y, y_bn = ibn(x), bn(x_bn)
        assert y.shape == y_bn.shape == shape and y.dtype == y_bn.dtype
        assert y.requires_grad == y_bn.requires_grad
        y.sum().backward()
        assert x.grad.shape == shape
    assert ibn.BN.num_batches_tracked.item() == bn.num_batches_tracked.item()
    torch.testing.assert_close(ibn.BN.running_mean, bn.running_mean[4:])
    y = IBN(8)(torch.randn(0, 8, 4, 4).to(memory_format=torch.channels_last))
    assert y.shape == (0, 8, 4, 4)


def test_forward_calls_the_children():
    """Forward hooks on the children fire (profilers, AdaBN's measuring hook see real modules)."""
    ibn = IBN(8, ratio=0.25)
    seen = []
    for name in ('IN', 'BN'):
        getattr(ibn, name).register_forward_hook(lambda module, args, out, name=name: seen.append(
            (name, tuple(args[0].shape))))
    ibn(torch.randn(2, 8, 4, 4))
    assert seen == [('IN', (2, 2, 4, 4)), ('BN', (2, 6, 4, 4))]


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')  # shape checks become constants
def test_tracing_sees_instance_and_batch_norm():
    """``torch.jit.trace`` / ONNX export see IN + BN nodes (no Python autograd Function)."""
    ibn = IBN(8).eval()
    x = torch.randn(2, 8, 4, 4)
    traced = torch.jit.trace(ibn, x)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert 'aten::instance_norm' in kinds and 'aten::batch_norm' in kinds
    assert 'prim::PythonOp' not in kinds
    torch.testing.assert_close(traced(x), ibn(x))
