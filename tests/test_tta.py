"""TestTimeAdapter on small conv nets with every norm layer kind, against float64
re-implementations of the formulas ('bn': batch statistics, 'prior': Schneider blend, 'tent':
entropy gradient step), bit-identity of every other parameter and buffer, exact reset, safeguards
and bad input."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

import mmnorm  # noqa: F401  (registers the norm layers)
from mmnorm import tta
from mmnorm.tta import CollapseMonitor, entropy_terms, valid_pixel_mask

K = 5
KINDS = ['BN', 'SyncBN', 'AdaBN', 'IBN', 'PBN', 'RN']


def norm_cfg(kind):
    if kind == 'AdaBN':
        return dict(type='AdaBN', eval_domain='target')
    return dict(type=kind)


def make_net(kind, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        build_norm_layer(norm_cfg(kind), 8)[1], nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        build_norm_layer(norm_cfg(kind), 8)[1], nn.ReLU(), nn.Conv2d(8, K, 1))
    with torch.no_grad(
    ):  # source statistics and affine far from the identity / from the test batches
        for name, buf in net.named_buffers():
            if 'running_mean' in name:
                buf.copy_(torch.randn_like(buf) * 0.5)
            elif 'running_var' in name:
                buf.copy_(torch.rand_like(buf) + 0.5)
        for name, p in net.named_parameters():
            if name.endswith('weight') and p.dim() == 1:
                p.copy_(torch.rand_like(p) + 0.5)
            elif name.endswith('bias') and p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


def batches(n=3, size=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 6, 7, generator=g) * 2 + 1 for _ in range(n)]


def _affine_and_source(layer):
    """(weight, bias, source mean, source var, eps) of a BN-like layer from its public
    attributes."""
    name = type(layer).__name__
    if name == 'AdaBN':
        bn = layer.domain_bn(layer.eval_domain)
        return layer.weight, layer.bias, bn.running_mean, bn.running_var, layer.eps
    if name == 'RN':
        return layer.weight, layer.bias, layer.running_mean_target, layer.running_var_target, layer.eps
    return layer.weight, layer.bias, layer.running_mean, layer.running_var, layer.eps


def ref_norm(x, weight, bias, mean_s, var_s, eps, mode, prior):
    """float64 test-batch (or blended) normalisation, written out."""
    var_b, mean_b = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    if mode == 'prior':
        a = prior / (prior + x.shape[0])
        mean_b = a * mean_s.double() + (1 - a) * mean_b
        var_b = a * var_s.double() + (1 - a) * var_b
    shape = (1, -1, 1, 1)
    return (x - mean_b.view(shape)) / torch.sqrt(var_b.view(shape) +
                                                 eps) * weight.view(shape) + bias.view(shape)


def ref_forward(net, x, mode='bn', prior=16.0, params=None):
    """float64 forward of ``net`` with every norm in ``mode``; ``params``: {id(param): float64
    replacement}."""
    p = (lambda t: params.get(id(t), t.double())) if params else (lambda t: t.double())
    x = x.double()
    for m in net:
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(x, p(m.weight), p(m.bias), padding=m.padding)
        elif isinstance(m, nn.ReLU):
            x = x.relu()
        elif type(m).__name__ == 'IBN':
            h = m.num_in
            y_in = F.instance_norm(x[:, :h], weight=p(m.IN.weight), bias=p(m.IN.bias), eps=m.IN.eps)
            bn = m.BN
            y_bn = ref_norm(x[:, h:], p(bn.weight), p(bn.bias), bn.running_mean, bn.running_var,
                            bn.eps, mode, prior)
            x = torch.cat([y_in, y_bn], 1)
        else:
            w, b, mean_s, var_s, eps = _affine_and_source(m)
            x = ref_norm(x, p(w), p(b), mean_s, var_s, eps, mode, prior)
    return x


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()}


def assert_identical(before, net, allowed=()):
    after = net.state_dict(keep_vars=True)
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key in allowed:
            continue
        assert torch.equal(value, after[key].detach()), f'{key} changed'


def tuned_keys(adapter, net):
    ids = {id(p) for p in adapter.params}
    return {k for k, v in net.state_dict(keep_vars=True).items() if id(v) in ids}


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('method', ['bn', 'prior'])
def test_statistics_methods_match_formula_and_touch_nothing(kind, method):
    net = make_net(kind)
    before = snapshot(net)
    modes = [m.training for m in net.modules()]
    adapter = tta.TestTimeAdapter(net, method, prior=6.0)
    for x in batches():
        out = adapter.adapt(x)
        expected = ref_forward(net, x, method, 6.0)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert_identical(before, net)
    assert [m.training for m in net.modules()] == modes
    assert not any(m._forward_hooks for m in net.modules())  # the statistics hooks are gone
    eval_out = net(batches()[0])  # and the model is the source model again
    torch.testing.assert_close(eval_out, make_net(kind)(batches()[0]))


def test_statistics_differ_from_source_eval():
    net, x = make_net('BN'), batches()[0]
    bn_out = tta.TestTimeAdapter(net, 'bn').adapt(x)
    assert not torch.allclose(bn_out, net(x), atol=1e-3)
    # prior N -> infinity is the source model, N = 0 is 'bn'
    torch.testing.assert_close(
        tta.TestTimeAdapter(net, 'prior', prior=1e9).adapt(x), net(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        tta.TestTimeAdapter(net, 'prior', prior=0).adapt(x), bn_out, atol=1e-5, rtol=1e-5)


def test_one_value_per_channel_uses_source_statistics():
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_()
    x = torch.randn(1, 4, 1, 1)
    torch.testing.assert_close(tta.TestTimeAdapter(bn, 'bn').adapt(x), bn(x))


def entropy_mean(logits):
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()


@pytest.mark.parametrize('kind', KINDS)
def test_tent_sgd_step_matches_reference_and_only_affine_moves(kind):
    net = make_net(kind)
    before = snapshot(net)
    lr = 0.5
    adapter = tta.TestTimeAdapter(net, 'tent', optimizer=dict(type='SGD', lr=lr), logger=None)
    tuned = tuned_keys(adapter, net)
    norm_names = {'weight', 'bias'}
    assert tuned and all(
        k.rsplit('.', 1)[-1] in norm_names and not k.startswith(('0.', '3.', '6.')) for k in tuned)
    if kind == 'IBN':
        assert {'1.IN.weight', '1.BN.weight'} <= tuned
    params = {}
    for x in batches(2):
        leaves = {id(p): p.detach().double().clone().requires_grad_() for p in adapter.params}
        params = leaves
        expected_logits = ref_forward(net, x, 'bn', params=leaves)
        loss = entropy_mean(expected_logits)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        out = adapter.adapt(x)
        torch.testing.assert_close(out.double(), expected_logits.detach(), rtol=1e-5, atol=1e-5)
        for p, g in zip(adapter.params, grads):
            expected = params[id(p)].detach() - lr * g
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)
    assert_identical(before, net, allowed=tuned)
    assert any(not torch.equal(before[k], net.state_dict()[k]) for k in tuned)
    assert all(p.requires_grad for p in net.parameters())  # flags restored
    adapter.reset()
    assert_identical(before, net)


def test_tent_adam_reset_restores_optimizer_state_exactly():
    net = make_net('BN')
    adapter = tta.TestTimeAdapter(net, 'tent', logger=None)  # Adam, lr 1e-3 (TENT default)
    xs = batches(3)
    first = [adapter.adapt(x) for x in xs]
    state_after = [p.detach().clone() for p in adapter.params]
    adapter.reset()
    assert not adapter.optimizer.state
    second = [adapter.adapt(x)
              for x in xs]  # a fresh run from the source repeats the first bit for bit
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    for a, p in zip(state_after, adapter.params):
        assert torch.equal(a, p.detach())


def test_episodic_resets_after_every_batch_and_steps():
    net = make_net('BN')
    before = snapshot(net)
    x = batches(1)[0]
    one = tta.TestTimeAdapter(net, 'tent', steps=1, episodic=True, logger=None)
    torch.testing.assert_close(one.adapt(x),
                               tta.TestTimeAdapter(net,
                                                   'bn').adapt(x))  # predicted before the update
    assert_identical(before, net)
    three = tta.TestTimeAdapter(
        net,
        'tent',
        steps=3,
        episodic=True,
        predict_after_update=True,
        optimizer=dict(type='SGD', lr=1.0),
        logger=None)
    out = three.adapt(x)
    assert three.num_steps == 3
    assert_identical(before, net)  # episodic: source state again
    source_out = tta.TestTimeAdapter(net, 'bn').adapt(x)
    assert entropy_mean(out) < entropy_mean(source_out)
    cont = tta.TestTimeAdapter(
        net,
        'tent',
        steps=3,
        predict_after_update=True,
        optimizer=dict(type='SGD', lr=1.0),
        logger=None)
    torch.testing.assert_close(cont.adapt(x), out)  # the same three steps, kept in continual mode
    assert not torch.allclose(tta.TestTimeAdapter(net, 'bn').adapt(x), source_out)
    cont.reset()


def test_frozen_and_norm_eval_layers_take_part():
    from mmseg.models.backbones import ResNetV1c
    torch.manual_seed(0)
    backbone = ResNetV1c(
        depth=18,
        base_channels=8,
        stem_channels=8,
        frozen_stages=1,
        norm_eval=True,
        out_indices=(3, ))
    backbone.train(
    )  # applies the locks: frozen stem + layer1 (eval, requires_grad False), all BN eval
    head = nn.Conv2d(64, K, 1)
    net = nn.Sequential(backbone, _First(), head).train()
    frozen = [p for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen
    before = snapshot(net)
    flags = [p.requires_grad for p in net.parameters()]
    modes = [m.training for m in net.modules()]
    adapter = tta.TestTimeAdapter(net, 'tent', optimizer=dict(type='SGD', lr=0.1), logger=None)
    adapter.adapt(torch.randn(2, 3, 32, 32))
    # every BN affine moved, frozen stage included (locks bypassed as in recalibrate_bn); no buffer
    # moved
    changed = {k for k in before if not torch.equal(before[k], net.state_dict()[k])}
    bn_affine = {
        f'{name}.{attr}'
        for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)
        for attr in ('weight', 'bias')
    }
    assert changed == tuned_keys(adapter, net) == bn_affine
    assert any(k.startswith('0.stem') for k in changed)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [m.training for m in net.modules()] == modes


class _First(nn.Module):

    def forward(self, x):
        return x[0]


def test_entropy_terms_selection_against_direct_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5) * 3
    valid = torch.ones(2, 3, 5, dtype=torch.bool)
    valid[1, :, 3:] = False
    margin = 0.4 * math.log(4)
    terms = entropy_terms(logits, valid, margin)
    p = torch.softmax(logits.double(), 1)
    ent = -(p * p.log()).sum(1)
    keep = valid & (ent < margin)
    assert 0 < keep.sum() < valid.sum()
    torch.testing.assert_close(terms.loss_sum.double(), ent[keep].sum(), rtol=1e-5, atol=1e-6)
    assert terms.selected == keep.sum() and terms.valid == valid.sum()
    torch.testing.assert_close(terms.prob_sum, p.movedim(1, -1)[valid].sum(0), rtol=1e-5, atol=1e-6)


def test_valid_pixel_mask_crops_padding():
    mask = valid_pixel_mask((2, 6, 8), [dict(padding_size=[1, 2, 0, 3]), dict()])
    assert mask[1].all()
    assert mask[0].sum() == (6 - 3) * (8 - 1 - 2) and mask[0, :3, 1:6].all()
    assert mask[0].sum() == valid_pixel_mask((1, 6, 8), [dict(img_padding_size=[1, 2, 0, 3])]).sum()


def test_collapse_monitor_fires_on_marginal_drop_and_periodically():
    mon = CollapseMonitor(threshold=0.5, momentum=0.5)
    assert mon.update(2.0) is None and mon.update(1.6) is None
    assert mon.update(0.1) is not None  # 1.8 -> 0.95 < 1.0
    mon.restart()
    assert mon.update(0.5) is None  # a new reference after a restart
    periodic = CollapseMonitor(every=3)
    assert [periodic.update(1.0) is not None for _ in range(3)] == [False, False, True]


def test_reset_rule_returns_to_source_when_collapsing():
    net = make_net('BN')
    before = snapshot(net)
    xs = batches(6)
    # a huge learning rate collapses the predictions onto few classes within a few steps
    wild = tta.TestTimeAdapter(net, 'tent', optimizer=dict(type='SGD', lr=50.0), logger=None)
    for x in xs:
        wild.adapt(x)
    marginals = [r['marginal'] for r in wild.history]
    assert marginals[-1] < 0.5 * marginals[0]
    wild.reset()
    guarded = tta.TestTimeAdapter(
        net,
        'tent',
        optimizer=dict(type='SGD', lr=50.0),
        reset_threshold=0.8,
        reset_momentum=1.0,
        logger=None)
    for x in xs:
        guarded.adapt(x)
    assert guarded.num_resets >= 1
    fired = [r['step'] for r in guarded.history if r['reset']]
    if fired[-1] == len(xs):  # reset on the last step: the model is the source model
        assert_identical(before, net)
    guarded.reset()
    assert_identical(before, net)


def test_entropy_reset_signal_fires_on_over_confidence():
    net = make_net('BN')
    before = snapshot(net)
    adapter = tta.TestTimeAdapter(
        net,
        'tent',
        optimizer=dict(type='SGD', lr=20.0),
        reset_signal='entropy',
        reset_threshold=0.9,
        reset_momentum=1.0,
        logger=None)
    for x in batches(4):
        adapter.adapt(x)
    entropies = [r['entropy'] for r in adapter.history]
    first = next(i for i, r in enumerate(adapter.history) if r['reset'])
    assert entropies[first] < 0.9 * entropies[0] and all(e >= 0.9 * entropies[0]
                                                         for e in entropies[1:first])
    adapter.reset()
    assert_identical(before, net)


def test_reliable_selection_limits_the_loss():
    net = make_net('BN')
    strict = tta.TestTimeAdapter(
        net, 'tent', reliable=0.05, optimizer=dict(type='SGD', lr=1.0), logger=None)
    strict.adapt(batches(1)[0])
    assert strict.history[0]['selected'] < 1.0
    loose = tta.TestTimeAdapter(
        net, 'tent', reliable=1.0, optimizer=dict(type='SGD', lr=1.0), logger=None)
    loose.adapt(batches(1)[0])
    assert loose.history[0]['selected'] == 1.0
    strict.reset()
    loose.reset()


@pytest.mark.parametrize('kwargs, match', [
    (dict(method='adabn'),
     "method must be one of \\('bn', 'prior', 'tent', 'sar', 'eata', 'cotta'\\), got 'adabn'"),
    (dict(optimizer=dict(type='SGD', lr=0)), 'optimizer lr must be a number > 0, got lr=0'),
    (dict(optimizer=dict(type='Adam', lr=-1e-3)), 'lr=-0.001'),
    (dict(optimizer=dict(type='Adagrad2', lr=1e-3)),
     "optimizer type must name a torch.optim optimizer.*'Adagrad2'"),
    (dict(steps=0), 'steps must be a positive int, got 0'),
    (dict(prior=-1), 'prior must be a number >= 0.*got -1'),
    (dict(reset_threshold=1.5), r'reset_threshold must be a number in \(0, 1\) or None, got 1.5'),
    (dict(reset_threshold=0), 'reset_threshold .* got 0'),
    (dict(reset_momentum=0), r'reset_momentum must be a number in \(0, 1\], got 0'),
    (dict(reliable=2), r'reliable must be a number in \(0, 1\] or None, got 2'),
    (dict(reset_every=0), 'reset_every must be a positive int or None, got 0'),
    (dict(reset_signal='loss'),
     "reset_signal must be one of \\('marginal', 'entropy'\\), got 'loss'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tta.TestTimeAdapter(make_net('BN'), **kwargs)


def test_model_without_norm_layer_is_refused():
    with pytest.raises(
            ValueError, match='Sequential has no BN-like norm layer to adapt.*GroupNorm'):
        tta.TestTimeAdapter(nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4)), 'bn')


def test_tent_needs_a_class_dimension():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(0))
    adapter = tta.TestTimeAdapter(net, 'tent', logger=None)
    with pytest.raises(
            ValueError,
            match=r"class dimension .*Sequential.forward gave \(96,\).*'bn' or 'prior'"):
        adapter.adapt(torch.randn(2, 3, 3, 4))
    assert all(p.requires_grad for p in net.parameters())


def test_no_affine_is_refused_for_tent():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False))
    with pytest.raises(ValueError, match='no affine parameters to tune'):
        tta.TestTimeAdapter(net, 'tent')


def test_statistics_leaves_of_composites_do_not_double_count():
    net = make_net('AdaBN')
    adapter = tta.TestTimeAdapter(net, 'bn')
    assert list(adapter.layers) == ['1', '4']
    assert adapter.leaves['1'] is net[1].domain_bn('target')
    assert copy.deepcopy(adapter.history) == []


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group (mmcv's MMSyncBN needs one to be built)."""
    import torch.distributed as dist
    dist.init_process_group(
        'gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_mmcv_sync_bn(process_group):
    net = make_net('MMSyncBN')
    assert type(net[1]).__name__ == 'SyncBatchNorm' and type(net[1]).__module__.startswith('mmcv')
    before = snapshot(net)
    x = batches(1)[0]
    for method in ('bn', 'prior'):
        out = tta.TestTimeAdapter(net, method, prior=3.0).adapt(x)
        torch.testing.assert_close(
            out.double(), ref_forward(net, x, method, 3.0), rtol=1e-5, atol=1e-5)
    adapter = tta.TestTimeAdapter(net, 'tent', optimizer=dict(type='SGD', lr=0.5), logger=None)
    adapter.adapt(x)
    assert_identical(before, net, allowed=tuned_keys(adapter, net))
    assert tuned_keys(adapter, net) == {'1.weight', '1.bias', '4.weight', '4.bias'}
    adapter.reset()
    assert_identical(before, net)
