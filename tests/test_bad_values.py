"""Bad values (issue 23 item 4): every mmnorm BN-like layer against ``nn.BatchNorm2d`` on the same
training batch holding a NaN, an Inf, +-1e30 values or no sample at all, in float32, bf16 inputs and
CPU bf16 autocast.

Each case asserts: the layer raises nothing (BN raises nothing); the channels with a non-finite
output or running statistic are a subset of BN's (RN: none of its running statistics); the running
statistics of the channels without a bad value are finite and equal a float64 reference computed
from the data; an empty batch gives an empty output of BN's dtype and leaves the statistics alone.
"""
import contextlib

import pytest
import torch
import torch.nn as nn
from mmnorm_tools.pbn_loop import pbn_patch_loop

from mmnorm import domain_split
from mmnorm.models.norms import IBN, PBN, RN, AdaBN
from mmnorm.models.norms.pbn import sample_pbn_plan
from mmnorm.models.norms.rn import GATE_NAMES

C, SPLIT, HW = 8, (2, 2), (6, 6)
BAD_CHANNELS = {'nan': {2}, 'inf': {2}, 'big': {2, 5}, 'empty': set()}
LAYERS = ('IBN', 'RN', 'PBN', 'PBN-fixed', 'AdaBN', 'AdaBN-split')
SPLIT_LAYERS = ('RN', 'AdaBN-split')
PRECISIONS = ('float32', 'bf16', 'bf16-autocast')
TOL = dict(rtol=1e-4, atol=1e-5)  # float32 statistics of the (bf16 or float32) input values


def _layer(name):
    torch.manual_seed(0)
    layer = {
        'IBN': lambda: IBN(C),
        'RN': lambda: RN(C),
        'PBN': lambda: PBN(C),
        'PBN-fixed': lambda: PBN(C, mode='fixed'),
        'AdaBN': lambda: AdaBN(C),
        'AdaBN-split': lambda: AdaBN(C),
    }[name]()
    if name == 'RN':
        with torch.no_grad():  # gates below 1, so the compensation mixes channels
            for gate in GATE_NAMES:
                getattr(layer, gate).uniform_(0.5, 0.9)
    return layer.train()


def _batch(kind, precision):
    """(4, 8, 6, 6): sample 1 (source) channel 2 holds the bad value; 'big' also puts -1e30 in
    sample 2 (target) channel 5."""
    x = torch.randn(4, C, *HW, generator=torch.Generator().manual_seed(1))
    x = x * torch.linspace(0.5, 2, C).view(1, -1, 1, 1) + torch.arange(C).view(1, -1, 1, 1) / 4
    if kind == 'nan':
        x[1, 2, 3, 3] = float('nan')
    elif kind == 'inf':
        x[1, 2, 3, 3] = float('inf')
    elif kind == 'big':
        x[1, 2, 3, 3], x[2, 5, 0, 0] = 1e30, -1e30
    elif kind == 'empty':
        x = x[:0]
    return x.bfloat16() if precision == 'bf16' else x


def _run(layer, x, precision, split=None):
    autocast = torch.autocast('cpu', dtype=torch.bfloat16) if precision == 'bf16-autocast' \
        else contextlib.nullcontext()
    declared = domain_split(layer, split) if split is not None else contextlib.nullcontext()
    with autocast, declared:
        return layer(x)


def _running(name, layer):
    """Running statistics as ``{(domain, channel): (mean, var)}``; IBN: the BN half only."""
    if name == 'IBN':
        pairs = {'all': (layer.BN.running_mean, layer.BN.running_var)}
        offset = layer.num_in
    elif name == 'RN':
        pairs = {
            d: (getattr(layer, f'running_mean_{d}'), getattr(layer, f'running_var_{d}'))
            for d in ('source', 'target')
        }
        offset = 0
    elif name.startswith('AdaBN'):
        pairs = {
            d: (layer.domain_bn(d).running_mean, layer.domain_bn(d).running_var)
            for d in layer.domains
        }
        offset = 0
    else:
        pairs = {'all': (layer.running_mean, layer.running_var)}
        offset = 0
    return {
        (d, c + offset): (float(m[c]), float(v[c]))
        for d, (m, v) in pairs.items()
        for c in range(m.numel())
    }


def _nonfinite_channels(t):
    if t.numel() == 0:
        return set()
    per_channel = t.float().transpose(0, 1).reshape(t.shape[1], -1)
    return {c for c in range(t.shape[1]) if not bool(torch.isfinite(per_channel[c]).all())}


def _bn_update(x64):
    """BN's running statistics after one step from (0, 1): per channel, float64."""
    values = x64.transpose(0, 1).reshape(x64.shape[1], -1)
    return 0.1 * values.mean(1), 0.9 + 0.1 * values.var(1)


def _reference_running(name, layer, x, kind):
    """float64 running statistics of the channels without a bad value, ``{(domain, c): (m, v)}``."""
    x64 = x.double()
    if name in ('IBN', 'PBN-fixed', 'AdaBN'):
        mean, var = _bn_update(x64)
        domain = {'IBN': 'all', 'PBN-fixed': 'all', 'AdaBN': 'source'}[name]
        return {(domain, c): (float(mean[c]), float(var[c])) for c in range(C)}
    if name == 'AdaBN-split':
        out = {}
        for domain, part in zip(('source', 'target'), x64.split(list(SPLIT))):
            mean, var = _bn_update(part)
            out.update({(domain, c): (float(mean[c]), float(var[c])) for c in range(C)})
        return out
    if name == 'RN':
        _, stats = reference_rn(x, SPLIT[0], layer.gates.detach(), layer.groups)
        return {
            (domain, c): (0.1 * float(stats[d][0][c]), 0.9 + 0.1 * float(stats[d][1][c]))
            for d, domain in enumerate(('source', 'target'))
            for c in range(C)
        }
    # PBN random: the released patch loop in float64 with the plan the layer draws (same seed)
    torch.manual_seed(123)
    plan = sample_pbn_plan(C, *HW, 0.5)
    ref = PBN(C).double()
    pbn_patch_loop(x64, ref, plan)
    return {('all', c): (float(ref.running_mean[c]), float(ref.running_var[c])) for c in range(C)}


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('kind', ('nan', 'inf', 'big', 'empty'))
@pytest.mark.parametrize('name', LAYERS)
def test_bad_values_contained_like_batch_norm(name, kind, precision):
    x = _batch(kind, precision)
    bn = nn.BatchNorm2d(C).train()
    y_bn = _run(bn, x, precision)  # BN raises nothing on any of these inputs
    bn_bad_out = _nonfinite_channels(y_bn)
    bn_bad_stats = {
        c
        for c in range(C)
        if not (torch.isfinite(bn.running_mean[c]) and torch.isfinite(bn.running_var[c]))
    }
    layer = _layer(name)
    before = _running(name, layer)
    torch.manual_seed(123)  # PBN random: the plan of _reference_running
    y = _run(
        layer, x, precision, SPLIT if name in SPLIT_LAYERS and kind != 'empty' else
        ((0, 0) if name in SPLIT_LAYERS else None))
    assert y.shape == x.shape and y.dtype == y_bn.dtype
    bad = BAD_CHANNELS[kind]
    assert _nonfinite_channels(y) <= ((bn_bad_out & bad) if name == 'RN' else bn_bad_out)
    after = _running(name, layer)
    nonfinite = {
        c
        for (_, c), (m, v) in after.items() if not (abs(m) < float('inf') and abs(v) < float('inf'))
    }
    assert nonfinite <= (set() if name == 'RN' else bn_bad_stats), after
    if kind == 'empty':
        assert after == before
        return
    reference = _reference_running(name, layer, x, kind)
    for key, (mean, var) in after.items():
        if key[1] in bad or key not in reference:
            continue
        torch.testing.assert_close(
            torch.tensor([mean, var], dtype=torch.float64),
            torch.tensor(reference[key], dtype=torch.float64),
            **TOL,
            msg=lambda m, key=key: f'{name} {kind} {precision} running stats {key}: {m}')
    layer.eval()  # later eval outputs: finite outside BN's bad channels (RN: everywhere)
    bn.eval()
    clean = _batch('clean', 'float32')
    assert _nonfinite_channels(layer(clean)) <= (
        set() if name == 'RN' else _nonfinite_channels(bn(clean)))


# --------------------------------------------------------------------------------------------------
# RN: the bad channel is left out of the compensation, everything else as if it were absent.
def _moments(part):
    values = part.transpose(0, 1).reshape(part.shape[1], -1)
    return values.mean(1), values.var(1)  # unbiased, as RN


def _borrow(own, other, own_ok, other_ok, groups):
    """own <- other over the valid super-channels of ``other``; an invalid own super-channel (or no
    valid donor) keeps its own statistic."""
    own_rows, other_rows = own.reshape(-1, groups), other.reshape(-1, groups)
    rows = []
    for k in range(own_rows.shape[0]):
        if not own_ok[k] or not other_ok.any():
            rows.append(own_rows[k])
            continue
        energy = -(own_rows[k].mean() - other_rows[other_ok].mean(1))**2
        p = torch.softmax(energy, 0)
        rows.append((p[:, None] * other_rows[other_ok]).sum(0))
    return torch.stack(rows).reshape(-1)


def reference_rn(x, num_source, gates, groups, weight=None, bias=None, eps=1e-5):
    """float64 RN of ``x`` without its non-finite statistics: a channel whose float32 mean or
    variance in a domain is not finite marks its super-channel invalid there. Returns ``y`` and
    ``[(mean~, var~) source, (mean~, var~) target]``."""
    x = x.double()
    parts = (x[:num_source], x[num_source:])
    moments = [_moments(p) for p in parts]
    ok = [(torch.isfinite(m.float()) & torch.isfinite(v.float())).reshape(-1, groups).all(1)
          for m, v in moments]
    stats = []
    for d, (o, t) in enumerate(((0, 1), (1, 0))):
        g_mean, g_var = gates[2 * d].double(), gates[2 * d + 1].double()
        valid = ok[o].repeat_interleave(groups)
        comp_mean = _borrow(moments[o][0], moments[t][0], ok[o], ok[t], groups)
        comp_var = _borrow(moments[o][1], moments[t][1], ok[o], ok[t], groups)
        mean = torch.where(valid, g_mean * moments[o][0] + (1 - g_mean) * comp_mean, moments[o][0])
        var = torch.where(valid, g_var * moments[o][1] + (1 - g_var) * comp_var, moments[o][1])
        stats.append((mean, var))
    if weight is None:
        return None, stats
    shape = (1, -1, 1, 1)
    y = torch.cat([
        (p - m.view(shape)) / torch.sqrt(v.view(shape) + eps) * weight.double().view(shape) +
        bias.double().view(shape) for p, (m, v) in zip(parts, stats)
    ])
    return y, stats


@pytest.mark.parametrize('bad_value', [float('nan'), float('inf'), -float('inf')])
@pytest.mark.parametrize('group_channels', [512, 4])  # G = 1, G = 2 (super-channels of 2)
@pytest.mark.parametrize('domain', [0, 1])
def test_rn_excludes_bad_channel_from_compensation(bad_value, group_channels, domain):
    rn = RN(C, group_channels=group_channels).train()
    torch.manual_seed(0)
    with torch.no_grad():
        rn.weight.uniform_(0.5, 1.5)
        rn.bias.normal_()
        for gate in GATE_NAMES:
            getattr(rn, gate).uniform_(0.5, 0.9)
    x = _batch('clean', 'float32')
    x[domain * 2 + 1, 3, 2, 2] = bad_value
    x.requires_grad_()
    with domain_split(rn, SPLIT):
        y = rn(x)
    ref_y, ref_stats = reference_rn(x.detach(), SPLIT[0], rn.gates.detach(), rn.groups,
                                    rn.weight.detach(), rn.bias.detach())
    bad_part = slice(0, 2) if domain == 0 else slice(2, 4)
    good = torch.ones(4, C, 1, 1, dtype=torch.bool)
    good[bad_part, 3] = False
    assert _nonfinite_channels(y) <= {3}
    good_values = good.expand_as(y)
    torch.testing.assert_close(y[good_values].double(), ref_y[good_values], rtol=1e-4, atol=1e-4)
    for d, name in enumerate(('source', 'target')):
        mean = getattr(rn, f'running_mean_{name}').double()
        var = getattr(rn, f'running_var_{name}').double()
        keep = torch.ones(C, dtype=torch.bool)
        if d == domain:  # the bad channel's update is skipped
            keep[3] = False
            assert float(mean[3]) == 0.0 and float(var[3]) == 1.0
        torch.testing.assert_close(mean[keep], 0.1 * ref_stats[d][0][keep], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            var[keep], 0.9 + 0.1 * ref_stats[d][1][keep], rtol=1e-4, atol=1e-5)
    # gradients of a loss on the good values stay finite (no NaN through the masked softmax)
    (y * good_values).nan_to_num(0.0).sum().backward()
    grad = x.grad.transpose(0, 1).reshape(C, -1)
    assert bool(torch.isfinite(grad[[c for c in range(C) if c != 3]]).all())
    assert all(bool(torch.isfinite(getattr(rn, n).grad).all()) for n in GATE_NAMES)
    rn.eval()  # every later eval output finite (the issue: one NaN made all of them NaN)
    assert bool(torch.isfinite(rn(_batch('clean', 'float32'))).all())


def test_rn_finite_but_far_apart_means_do_not_turn_the_softmax_into_nan():
    """(m_s - m_t)^2 beyond float32 (a constant 1e20 channel): the float64 softmax keeps every
    compensated statistic finite."""
    rn = RN(C).train()
    with torch.no_grad():
        rn.gate_mean_source.fill_(0.5)
    x = _batch('clean', 'float32')
    x[:2, 1] = 1e20
    with domain_split(rn, SPLIT):
        y = rn(x)
    assert bool(torch.isfinite(y).all())
    assert bool(torch.isfinite(rn.running_mean_source).all())
