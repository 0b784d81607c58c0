"""RN (Reciprocal Normalization): numbers against a float64 reference written from METHODS.md,
gradients, gates, eval path, checkpoints, registry, toolchain survival and bad inputs."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope

import mmnorm  # noqa: F401
from mmnorm.models.norms import RN, domain_split
from mmnorm.models.norms.rn import GATE_NAMES, reciprocal_norm, rn_groups


# --------------------------------------------------------------------------------------------------
# Independent float64 reference: explicit per-super-channel loops, moments from the flattened
# samples.
def _moments(part):
    values = part.transpose(0, 1).reshape(part.shape[1], -1)  # C x (samples * spatial)
    mean = values.sum(1) / values.shape[1]
    var = ((values - mean[:, None])**2).sum(1) / (values.shape[1] - 1
                                                  )  # unbiased, as the official code
    return mean, var


def _borrow(own, other, groups):
    """own <- other: row k is a softmax over k' of -(mean_k(own) - mean_k'(other))^2 applied to
    other's rows."""
    c = own.numel()
    own_rows, other_rows = own.reshape(c // groups, groups), other.reshape(c // groups, groups)
    own_bar, other_bar = own_rows.mean(1), other_rows.mean(1)
    rows = []
    for k in range(c // groups):
        energy = -(own_bar[k] - other_bar)**2
        p = torch.exp(energy - energy.max())
        p = p / p.sum()
        rows.append((p[:, None] * other_rows).sum(0))
    return torch.stack(rows).reshape(c)


def reference_rn(x, num_source, weight, bias, gates, eps, groups):
    """Returns (y, [mean~_s, var~_s, mean~_t, var~_t]) in float64."""
    x = x.double()
    g_ms, g_vs, g_mt, g_vt = (g.double() for g in gates)
    mu_s, var_s = _moments(x[:num_source])
    mu_t, var_t = _moments(x[num_source:])
    mean_s = g_ms * mu_s + (1 - g_ms) * _borrow(mu_s, mu_t, groups)
    var_s2 = g_vs * var_s + (1 - g_vs) * _borrow(var_s, var_t, groups)
    mean_t = g_mt * mu_t + (1 - g_mt) * _borrow(mu_t, mu_s, groups)
    var_t2 = g_vt * var_t + (1 - g_vt) * _borrow(var_t, var_s, groups)
    shape = (1, -1) + (1, ) * (x.dim() - 2)

    def norm(part, mean, var):
        return weight.double().view(shape) * (part - mean.view(shape)) \
            / torch.sqrt(var.view(shape) + eps) \
            + bias.double().view(shape)

    y = torch.cat([norm(x[:num_source], mean_s, var_s2), norm(x[num_source:], mean_t, var_t2)])
    return y, [mean_s, var_s2, mean_t, var_t2]


def _random_rn(c, seed=0, **kwargs):
    torch.manual_seed(seed)
    rn = RN(c, **kwargs)
    with torch.no_grad():
        rn.weight.uniform_(0.5, 1.5)
        rn.bias.normal_()
        for name in GATE_NAMES:
            getattr(rn, name).uniform_(0.5, 1.0)
    return rn


def _domain_batch(n_s, n_t, c, hw, seed=1, dtype=torch.float32):
    """Source and target parts with different channel statistics, so the compensation matters."""
    g = torch.Generator().manual_seed(seed)
    shape = (c, ) + (1, ) * len(hw)
    xs = torch.randn(n_s, c, *hw, generator=g) * torch.rand(shape, generator=g).mul(2).add(0.5) \
        + torch.randn(shape, generator=g)
    xt = torch.randn(n_t, c, *hw, generator=g) * torch.rand(shape, generator=g).mul(3).add(0.2) \
        + torch.randn(shape, generator=g) * 2
    return torch.cat([xs, xt]).to(dtype)


@pytest.mark.parametrize(
    'c, hw, split, groups',
    [
        (64, (5, 6), (3, 2), 1),  # C < 512: G = 1
        (1024, (3, 4), (2, 3), 2),  # C = 1024: G = 2 super-channels of 2 channels
        (24, (), (4, 3), 1),  # 1-D input (N, C), as the classifier bottleneck
    ])
def test_forward_and_running_stats_match_reference(c, hw, split, groups):
    rn = _random_rn(c)
    assert rn.groups == groups
    x = _domain_batch(*split, c, hw)
    ref_running = [torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)] * 2
    rn.train()
    for step in range(2):
        batch = x if step == 0 else x.flip(0).roll(1, 0)
        with domain_split(rn, split):
            y = rn(batch)
        ref_y, stats = reference_rn(batch, split[0], rn.weight.detach(), rn.bias.detach(),
                                    [getattr(rn, n).detach() for n in GATE_NAMES], rn.eps, groups)
        torch.testing.assert_close(y.double(), ref_y, rtol=1e-4, atol=2e-4)
        ref_running = [0.9 * r + 0.1 * s for r, s in zip(ref_running, stats)]
    for name, ref in zip(
        ['running_mean_source', 'running_var_source', 'running_mean_target', 'running_var_target'],
            ref_running):
        torch.testing.assert_close(getattr(rn, name).double(), ref, rtol=1e-5, atol=1e-5, msg=name)
    assert int(rn.num_batches_tracked) == 2


def test_gradients_match_reference_c1024():
    """Gradients equal autograd through the reference (x, weight, bias, all four gates), G = 2."""
    rn = _random_rn(1024).double()
    x = _domain_batch(3, 2, 1024, (2, 3), dtype=torch.float64).requires_grad_()
    grad_out = torch.randn_like(x)
    with domain_split(rn, (3, 2)):
        (rn(x) * grad_out).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in (rn.weight, rn.bias)]
    gates = [getattr(rn, n).detach().clone().requires_grad_() for n in GATE_NAMES]
    y_ref, _ = reference_rn(x_ref, 3, params[0], params[1], gates, rn.eps, 2)
    (y_ref * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(rn.weight.grad, params[0].grad)
    torch.testing.assert_close(rn.bias.grad, params[1].grad)
    for name, ref in zip(GATE_NAMES, gates):
        torch.testing.assert_close(getattr(rn, name).grad, ref.grad, rtol=1e-7, atol=1e-9, msg=name)
        assert getattr(rn, name).grad.abs().sum() > 0, name  # gradients do reach every gate


@pytest.mark.parametrize('shape, num_source, groups', [((5, 4, 2, 3), 3, 2), ((6, 3), 2, 1),
                                                       ((4, 4, 3), 1, 4)])
def test_gradcheck(shape, num_source, groups):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    x[num_source:] = x[num_source:] * 2 + 1
    c = shape[1]
    inputs = (x.requires_grad_(), torch.rand(c, dtype=torch.float64).add(0.5).requires_grad_(),
              torch.randn(c, dtype=torch.float64).requires_grad_(),
              torch.rand(4, c, dtype=torch.float64).mul(0.5).add(0.5).requires_grad_())
    assert torch.autograd.gradcheck(
        lambda x, w, b, g: reciprocal_norm(x, num_source, w, b, g, 1e-5, groups)[0], inputs)


def test_gradcheck_through_module_eval():
    rn = _random_rn(4).double().eval()
    with torch.no_grad():
        rn.running_mean_target.normal_()
        rn.running_var_target.uniform_(0.5, 2)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rn, (x, ))


def test_gates_kept_in_range_after_optimizer_steps():
    rn = RN(6)
    x = _domain_batch(4, 4, 6, (3, 3))
    opt = torch.optim.SGD([getattr(rn, n) for n in GATE_NAMES], lr=50.0)
    for step in range(4):
        with domain_split(rn, (4, 4)):
            y = rn(x)
        for name in GATE_NAMES:  # the forward projected the gates before using them
            gate = getattr(rn, name)
            assert gate.min() >= 0.5 and gate.max() <= 1.0, (step, name, gate)
        if step > 0:  # and the output is the reference computed with the projected gates
            ref, _ = reference_rn(x, 4, rn.weight.detach(), rn.bias.detach(),
                                  [getattr(rn, n).detach() for n in GATE_NAMES], rn.eps, 1)
            torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
        opt.zero_grad()
        # Pushes the source-mean gates down and the target-variance gates up, far past the range.
        (y[:4] * torch.linspace(-1, 1, 6).view(1, 6, 1, 1)).pow(2).sum().backward()
        with torch.no_grad():
            rn.gate_var_target.grad.fill_(-1.0)
            rn.gate_mean_source.grad.fill_(1.0)
        opt.step()
        assert rn.gate_mean_source.min(
        ) < 0.5 and rn.gate_var_target.max() > 1.0  # the step left the range
    assert torch.equal(rn.gate_mean_source, torch.full(
        (6, ), 0.5)) is False  # last step moved it out again
    with domain_split(rn, (4, 4)):
        rn(x)
    assert torch.equal(rn.gate_mean_source, torch.full((6, ), 0.5))
    assert torch.equal(rn.gate_var_target, torch.ones(6))
    rn2 = RN(6, gate_range=(0.7, 0.9))
    with domain_split(rn2, (4, 4)):
        rn2(x)
    assert torch.equal(rn2.gate_var_source, torch.full((6, ), 0.9))


def test_eval_uses_target_running_stats_for_any_input():
    rn = _random_rn(8)
    with domain_split(rn, (3, 3)):
        for _ in range(3):
            rn(_domain_batch(3, 3, 8, (4, 4)))
    assert not torch.allclose(rn.running_mean_source, rn.running_mean_target)
    bn = nn.BatchNorm2d(8).eval()
    bn.load_state_dict(
        dict(
            weight=rn.weight,
            bias=rn.bias,
            running_mean=rn.running_mean_target,
            running_var=rn.running_var_target,
            num_batches_tracked=rn.num_batches_tracked))
    rn.eval()
    for n in (1, 5):  # no declared split needed, odd batches fine
        x = torch.randn(n, 8, 3, 3)
        torch.testing.assert_close(rn(x), bn(x))
    assert rn.recalibration_buffers()[0] is rn.running_mean_target
    assert rn.recalibration_buffers()[1] is rn.running_var_target
    with pytest.raises(
            ValueError, match=r'declared domain split \(2, 2\) .* sums to 4 but the batch holds 5'):
        with domain_split(rn, (2, 2)):
            rn(torch.randn(5, 8, 3, 3))


def test_plain_bn_checkpoint_loads():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(16)
    for _ in range(3):
        bn(torch.randn(4, 16, 5, 5) * 3 + 1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
    rn = RN(16)
    rn.load_state_dict(bn.state_dict(), strict=True)
    for domain in ('source', 'target'):
        assert torch.equal(getattr(rn, f'running_mean_{domain}'), bn.running_mean)
        assert torch.equal(getattr(rn, f'running_var_{domain}'), bn.running_var)
    assert torch.equal(rn.weight, bn.weight) and torch.equal(rn.bias, bn.bias)
    assert all(torch.equal(getattr(rn, n), torch.ones(16)) for n in GATE_NAMES)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(rn.eval()(x), bn.eval()(x))
    # RN's own state dict round-trips
    rn2 = RN(16)
    rn2.load_state_dict(rn.state_dict(), strict=True)
    assert all(
        torch.equal(a, b) for a, b in zip(rn.state_dict().values(),
                                          rn2.state_dict().values()))


def test_resnet_with_rn_loads_bn_resnet_weights():
    from mmseg.models.backbones import ResNetV1c
    bn_net = ResNetV1c(depth=18, init_cfg=None)
    rn_net = ResNetV1c(depth=18, norm_cfg=dict(type='RN'), init_cfg=None)
    assert isinstance(rn_net.layer1[0].bn1, RN)
    result = rn_net.load_state_dict(bn_net.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    bn_net.eval(), rn_net.eval()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(bn_net(x), rn_net(x)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_registry_round_trip(scope):
    with DefaultScope.overwrite_default_scope(scope):
        name, layer = build_norm_layer(
            dict(type='RN', momentum=0.2, gate_range=(0.6, 1.0)), 64, postfix=1)
    assert name == 'bn1' and isinstance(layer, RN)
    assert layer.momentum == 0.2 and layer.gate_range == (0.6, 1.0)
    assert 'gate_range=(0.6, 1.0)' in repr(layer) and 'G=1' in repr(layer)
    _, frozen = build_norm_layer(dict(type='RN', requires_grad=False), 8)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_survives_sync_bn_conversion():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), RN(8), nn.BatchNorm2d(8))
    model[1].running_mean_target.fill_(0.25)
    converted = convert_sync_batchnorm(model)
    assert isinstance(converted[1], RN) and isinstance(converted[2], nn.SyncBatchNorm)
    reverted = revert_sync_batchnorm(converted)
    assert type(reverted[1]) is RN and not isinstance(reverted[2], nn.SyncBatchNorm)
    assert torch.equal(reverted[1].running_mean_target, torch.full((8, ), 0.25))


def test_implicit_split_matches_declared_halves():
    x = _domain_batch(3, 3, 8, (4, 4))
    declared, implicit = _random_rn(8), _random_rn(8, implicit_split=True)
    with domain_split(declared, (3, 3)):
        y1 = declared(x)
    y2 = implicit(x)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(declared.running_var_target, implicit.running_var_target)


@pytest.mark.parametrize('split, domain', [((5, 0), 'source'), ((0, 5), 'target')])
def test_single_domain_batch_when_allowed(split, domain):
    """allow_single_domain: plain BN with that domain's batch stats (unbiased var), only its running
    stats move."""
    rn = _random_rn(8, allow_single_domain=True)
    x = torch.randn(5, 8, 4, 4) * 2 + 1
    with domain_split(rn, split):
        y = rn(x)
    mean, var = _moments(x.double())
    shape = (1, -1, 1, 1)
    ref = rn.weight.double().view(shape) * (x.double() - mean.view(shape)) \
        / torch.sqrt(var.view(shape) + rn.eps) \
        + rn.bias.double().view(shape)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    other = 'target' if domain == 'source' else 'source'
    torch.testing.assert_close(getattr(rn, f'running_mean_{domain}').double(), 0.1 * mean)
    torch.testing.assert_close(getattr(rn, f'running_var_{domain}').double(), 0.9 + 0.1 * var)
    assert torch.equal(getattr(rn, f'running_mean_{other}'), torch.zeros(8))


def test_autocast_bf16_statistics_in_fp32():
    torch.manual_seed(0)
    conv, rn = nn.Conv2d(3, 8, 3, padding=1), _random_rn(8)
    x = torch.randn(6, 3, 8, 8) * 40
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feat = conv(x)
        with domain_split(rn, (4, 2)):
            y = rn(feat)
    assert feat.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    ref, stats = reference_rn(feat, 4, rn.weight.detach(), rn.bias.detach(),
                              [getattr(rn, n).detach() for n in GATE_NAMES], rn.eps, 1)
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=5e-2)
    assert rn.running_var_target.dtype == torch.float32
    torch.testing.assert_close(
        rn.running_var_target.double(), 0.9 + 0.1 * stats[3], rtol=1e-5, atol=1e-4)
    rn.eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.isfinite(rn(conv(x)).float()).all()


def test_half_input_with_variance_beyond_fp16_range():
    """Variances ~1.6e5 (> fp16 max 65504) and their squared differences stay finite: stats are
    fp32."""
    rn = _random_rn(4)
    x = (_domain_batch(3, 3, 4, (4, 4)) * 400).half()
    with domain_split(rn, (3, 3)):
        y = rn(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    ref, stats = reference_rn(x, 3, rn.weight.detach(), rn.bias.detach(),
                              [getattr(rn, n).detach() for n in GATE_NAMES], rn.eps, 1)
    assert stats[1].max() > 65504
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(
        rn.running_var_source.double(), 0.9 + 0.1 * stats[1], rtol=1e-5, atol=1e-2)


def test_bad_inputs():
    rn = RN(8)
    x = torch.randn(6, 8, 2, 2)
    with pytest.raises(ValueError, match='without a declared \\[source \\| target\\] split'):
        rn(x)
    with pytest.raises(ValueError, match='odd number of samples: 5'):
        RN(8, implicit_split=True)(torch.randn(5, 8, 2, 2))
    with pytest.raises(
            ValueError, match=r'declared domain split \(4, 4\) .* batch holds 6 samples'):
        with domain_split(rn, (4, 4)):
            rn(x)
    with pytest.raises(
            ValueError, match=r'the target part of the batch is empty \(declared split \(6, 0\)\)'):
        with domain_split(rn, (6, 0)):
            rn(x)
    with pytest.raises(ValueError, match=r'the source part of the batch is empty'):
        with domain_split(rn, (0, 6)):
            rn(x)
    with pytest.raises(ValueError, match='C=1101 is not divisible by 2'):
        RN(1101)
    assert rn_groups(1100) == 2 and rn_groups(511) == 1 and rn_groups(1536) == 3
    with pytest.raises(
            ValueError,
            match=r'RN\(8\): the target part \(1 of split \(2, 1\)\) of input \(3, 8\) has one '
            'value per channel'):
        with domain_split(rn, (2, 1)):
            rn(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r'expects input \(N, 8, \*\), got shape \(6, 4, 2, 2\)'):
        rn(torch.randn(6, 4, 2, 2))
    with pytest.raises(ValueError, match='gate_range must be'):
        RN(8, gate_range=(0.5, 1.5))
    with pytest.raises(ValueError, match='momentum must be'):
        RN(8, momentum=2.0)
    with pytest.raises(ValueError, match='pair of non-negative ints'):
        with domain_split(rn, (3, -1)):
            pass
    assert rn.domain_split is None  # every failed block restored the declaration


@pytest.mark.parametrize('offset', [0.0, 1e3])
def test_float32_matches_float64(offset):
    """RN in float32 against RN in float64, also on a map with a large mean (where a one-pass
    variance would lose its digits): outputs, gradients and running statistics. (No constant
    channel: the variance-gate gradients of a zero-variance channel scale rounding by eps^-1.5 in
    any precision.)"""
    rn = _random_rn(5)
    ref = copy.deepcopy(rn).double()
    x = (_domain_batch(2, 2, 5, (6, 7)) + offset).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    with domain_split(rn, (2, 2)), domain_split(ref, (2, 2)):
        y, y_ref = rn(x), ref(x_ref)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x] + list(rn.parameters()), grad)
    want = torch.autograd.grad(y_ref, [x_ref] + list(ref.parameters()), grad.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=2e-4 if offset else 1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-2 if offset else 1e-4)
    for name in ('running_mean_target', 'running_var_target', 'running_var_source'):
        torch.testing.assert_close(
            getattr(rn, name).double(), getattr(ref, name), rtol=1e-4, atol=1e-4)


def test_single_domain_gradients_match_autograd_reference():
    """A pure one-domain batch is differentiable through its statistics: gradients equal autograd
    through the float64 formula (unbiased variance)."""
    rn = _random_rn(6, allow_single_domain=True).double()
    x = (torch.randn(4, 6, 3, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with domain_split(rn, (0, 4)):
        y = rn(x)
    mean, var = _moments(x_ref)
    shape = (1, -1, 1, 1)
    y_ref = rn.weight.view(shape) * (x_ref - mean.view(shape)) \
        / torch.sqrt(var.view(shape) + rn.eps) \
        + rn.bias.view(shape)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, rn.weight, rn.bias], grad)
    want = torch.autograd.grad(y_ref, [x_ref, rn.weight, rn.bias], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
