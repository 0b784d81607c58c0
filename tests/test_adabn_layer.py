"""AdaBN layer: BN equivalence, per-domain statistics, test-time modes, checkpoints, toolchain
survival."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope

from mmnorm import domain_split, recalibrate_bn
from mmnorm.models.norms import AdaBN, set_adabn_domain

torch.set_num_threads(1)


def bn_pair(c=6, **kwargs):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(c, momentum=0.2)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    ada = AdaBN(c, momentum=0.2, **kwargs)
    ada.load_state_dict(bn.state_dict())
    return bn, ada


@pytest.mark.parametrize('shape', [(5, 6, 4, 3), (7, 6), (3, 6, 2, 2, 2)])
def test_train_and_eval_equal_batchnorm(shape):
    bn, ada = bn_pair()
    x = torch.randn(*shape) * 2 + 1
    x_bn, x_ada = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_bn = F.batch_norm(x_bn, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, 0.2,
                        bn.eps)
    y_ada = ada(x_ada)
    torch.testing.assert_close(y_ada, y_bn)
    grad = torch.randn_like(y_bn)
    y_bn.backward(grad)
    y_ada.backward(grad)
    torch.testing.assert_close(x_ada.grad, x_bn.grad)
    torch.testing.assert_close(ada.weight.grad, bn.weight.grad)
    torch.testing.assert_close(ada.bias.grad, bn.bias.grad)
    src, tgt = ada.domain_bn('source'), ada.domain_bn('target')
    torch.testing.assert_close(src.running_mean,
                               bn.running_mean)  # the undeclared batch trains the source stats
    torch.testing.assert_close(src.running_var, bn.running_var)
    assert not torch.equal(tgt.running_mean,
                           bn.running_mean)  # target stats untouched (still the loaded ones)
    ada.eval()
    bn.eval()
    torch.testing.assert_close(
        ada(x), F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))


def test_declared_split_uses_and_updates_each_domain():
    _, ada = bn_pair()
    ref_s, ref_t = nn.BatchNorm2d(6, momentum=0.2), nn.BatchNorm2d(6, momentum=0.2)
    for ref in (ref_s, ref_t):
        ref.load_state_dict({
            k.split('.', 1)[1]: v
            for k, v in ada.state_dict().items() if k.startswith('source.')
        })
    x = torch.randn(7, 6, 3, 3) * 3
    x[3:] += 4  # target part shifted
    with domain_split(ada, (3, 4)) as told:
        y = ada(x)
    assert told == 1 and ada.domain_split is None
    torch.testing.assert_close(y, torch.cat([ref_s(x[:3]), ref_t(x[3:])]))
    for domain, ref in (('source', ref_s), ('target', ref_t)):
        torch.testing.assert_close(ada.domain_bn(domain).running_mean, ref.running_mean)
        torch.testing.assert_close(ada.domain_bn(domain).running_var, ref.running_var)
    with domain_split(ada, (0, 7)):  # an empty part is skipped
        torch.testing.assert_close(
            ada(x), F.batch_norm(x, None, None, ada.weight, ada.bias, True, 0.0, ada.eps))
    with domain_split(ada, (3, 3)), pytest.raises(
            ValueError, match=r'declared domain split \(3, 3\).*7 samples'):
        ada(x)
    ada.eval()
    with domain_split(ada, (3, 4)):  # eval ignores the split: one domain for the whole batch
        torch.testing.assert_close(
            ada(x),
            F.batch_norm(x,
                         ada.domain_bn('source').running_mean,
                         ada.domain_bn('source').running_var, ada.weight, ada.bias))


def test_gradcheck_float64_split_and_eval():
    ada = AdaBN(3, domains=('a', 'b', 'c'), split_domains=('c', 'a')).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(inp, weight, bias):
        return torch.func.functional_call(ada, {'a.weight': weight, 'a.bias': bias}, (inp, ))

    with domain_split(ada,
                      (2, 3)):  # part 'c' (no affine of its own) uses the shared one held by 'a'
        assert torch.autograd.gradcheck(fn, (x, w, b))
    ada.eval()
    assert torch.autograd.gradcheck(fn, (x, w, b))
    ada.set_test_mode('blend', prior=4)
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_domain_selection_from_config_code_and_helper():
    _, ada = bn_pair(domains=('gta', 'synthia', 'city'), eval_domain='city')
    with torch.no_grad():
        ada.domain_bn('city').running_mean.add_(3.0)
    x = torch.randn(4, 6, 3, 3)
    ada.eval()
    expect = {
        d:
        F.batch_norm(x,
                     ada.domain_bn(d).running_mean,
                     ada.domain_bn(d).running_var, ada.weight, ada.bias)
        for d in ada.domains
    }
    torch.testing.assert_close(ada(x), expect['city'])
    ada.set_eval_domain('gta')
    torch.testing.assert_close(ada(x), expect['gta'])
    model = nn.Sequential(ada, nn.Conv2d(6, 6, 1), AdaBN(6, domains=('gta', 'city')))
    assert set_adabn_domain(model, 'city') == 2
    assert model[0].eval_domain == 'city' and model[2].eval_domain == 'city'
    assert model[0].recalibration_buffers()[0] is ada.domain_bn('city').running_mean
    with pytest.raises(
            ValueError,
            match=r"unknown domain 'synthia'; this AdaBN layer has domains \('gta', 'city'\)"):
        set_adabn_domain(model, 'synthia')
    assert model[0].eval_domain == 'city'  # nothing changed by the failed call
    with pytest.raises(ValueError, match=r"eval_domain: unknown domain 'cityscapes'"):
        AdaBN(6, domains=('gta', 'city'), eval_domain='cityscapes')
    with pytest.raises(ValueError, match=r"unknown domain 'tgt'"):
        ada.set_eval_domain('tgt')


def test_test_modes_against_hand_computed_reference():
    _, ada = bn_pair()
    ada.set_eval_domain('target')
    ada.eval()
    x = torch.randn(5, 6, 4, 4, dtype=torch.float64) * 2 + 3
    ada.double()
    mu_b, var_b = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    mu_d, var_d = ada.domain_bn('target').running_mean, ada.domain_bn('target').running_var
    w, b = ada.weight.view(1, -1, 1, 1), ada.bias.view(1, -1, 1, 1)

    def normalise(mu, var):
        return (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) * w + b

    torch.testing.assert_close(ada(x), normalise(mu_d, var_d))
    ada.set_test_mode('batch')
    torch.testing.assert_close(ada(x), normalise(mu_b, var_b))
    ada.set_test_mode('blend', prior=15)  # N = 15, n = 5: weights 3/4 and 1/4
    torch.testing.assert_close(
        ada(x), normalise(0.75 * mu_d + 0.25 * mu_b, 0.75 * var_d + 0.25 * var_b))
    ada.train()  # training ignores the test mode
    torch.testing.assert_close(ada(x), normalise(mu_b, var_b))
    with pytest.raises(ValueError, match=r"test_mode must be one of .*got 'tent'"):
        ada.set_test_mode('tent')
    with pytest.raises(ValueError, match='prior must be a number >= 0 .*got -1'):
        AdaBN(4, test_mode='blend', prior=-1)


def test_checkpoints_plain_bn_and_round_trip():
    bn, ada = bn_pair()
    for domain in ada.domains:  # the plain BN statistics went to every domain, the affine once
        torch.testing.assert_close(ada.domain_bn(domain).running_var, bn.running_var)
    assert set(ada.state_dict()) == {
        'source.weight', 'source.bias', 'source.running_mean', 'source.running_var',
        'source.num_batches_tracked', 'target.running_mean', 'target.running_var',
        'target.num_batches_tracked'
    }
    torch.testing.assert_close(ada.weight, bn.weight)
    with torch.no_grad():
        ada.domain_bn('target').running_mean.fill_(7.0)
    again = AdaBN(6)
    result = again.load_state_dict(ada.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(again.domain_bn('target').running_mean, torch.full((6, ), 7.0))


def test_resnet_built_with_adabn_loads_plain_resnet_checkpoint_in_both_scopes():
    from mmdet.models.backbones import ResNet as DetResNet
    from mmseg.models.backbones import ResNetV1c
    for scope, build in (('mmseg', lambda cfg: ResNetV1c(depth=18, norm_cfg=cfg, init_cfg=None)),
                         ('mmdet', lambda cfg: DetResNet(depth=18, norm_cfg=cfg, init_cfg=None))):
        with DefaultScope.overwrite_default_scope(scope):
            name, layer = build_norm_layer(dict(type='AdaBN', requires_grad=True), 8)
            assert name == 'bn' and isinstance(layer, AdaBN)
            plain = build(dict(type='BN'))
            with torch.no_grad():
                for m in plain.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean.uniform_(-1, 1)
                        m.running_var.uniform_(0.5, 2)
            ada = build(dict(type='AdaBN'))
            ada.load_state_dict(plain.state_dict(), strict=True)
            plain.eval()
            ada.eval()
            x = torch.randn(1, 3, 32, 32)
            for a, b in zip(plain(x), ada(x)):
                torch.testing.assert_close(a, b)
            set_adabn_domain(ada, 'target')  # target started from the plain statistics
            for a, b in zip(plain(x), ada(x)):
                torch.testing.assert_close(a, b)


def test_norm_eval_frozen_stages_and_norm_decay_mult():
    from mmdet.models.backbones import ResNet
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = ResNet(
        depth=18, norm_cfg=dict(type='AdaBN'), norm_eval=True, frozen_stages=1, init_cfg=None)
    model.train()
    assert all(not bn.training for m in model.modules() if isinstance(m, AdaBN)
               for bn in m.children())
    before = model.layer3[0].bn1.domain_bn('source').running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer3[0].bn1.domain_bn('source').running_mean,
                       before)  # norm_eval holds
    assert not any(p.requires_grad for p in model.layer1.parameters())
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
        dict(norm_decay_mult=0.0))
    wrapper = constructor(model)
    shared = model.layer3[0].bn1.weight
    group = next(g for g in wrapper.optimizer.param_groups if any(p is shared for p in g['params']))
    assert group['weight_decay'] == 0.0
    # recalibration overrides the norm_eval lock and writes into the selected domain only
    set_adabn_domain(model, 'target')
    src = model.layer3[0].bn1.domain_bn('source').running_mean.clone()
    result = recalibrate_bn(model, [torch.randn(2, 3, 32, 32) + 1], progress=False)
    assert len(result.layers) == 20 and all('.source' not in n and '.target' not in n
                                            for n in result.layers)
    assert torch.equal(model.layer3[0].bn1.domain_bn('source').running_mean, src)
    assert not torch.equal(model.layer3[0].bn1.domain_bn('target').running_mean, src)


def test_survives_sync_bn_conversion_and_revert():
    _, ada = bn_pair(domains=('source', 'target'), eval_domain='target')
    with torch.no_grad():
        ada.domain_bn('target').running_var.mul_(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), ada).eval()
    x = torch.randn(2, 3, 4, 4)
    expect = model(x)
    synced = convert_sync_batchnorm(
        copy.deepcopy(model)).eval()  # the converter builds children in train mode
    layer = synced[1]
    assert isinstance(
        layer, AdaBN) and layer.domains == ('source', 'target') and layer.eval_domain == 'target'
    assert all(isinstance(child, nn.SyncBatchNorm) for child in layer.children())
    torch.testing.assert_close(synced(x), expect)  # eval on CPU works with SyncBN children
    reverted = revert_sync_batchnorm(synced)
    assert all(type(c).__name__ == '_BatchNormXd' for c in reverted[1].children())
    torch.testing.assert_close(reverted(x), expect)
    reverted.train()
    with domain_split(reverted, (1, 1)):
        reverted(x)  # the per-domain training path after the revert
    assert isinstance(reverted[1].weight,
                      nn.Parameter) and reverted[1].weight is reverted[1].source.weight


def test_bad_constructor_arguments_name_the_value():
    with pytest.raises(
            ValueError, match=r"domains must be a non-empty list of names, got 'target'"):
        AdaBN(4, domains='target')
    with pytest.raises(ValueError, match=r"domains must be unique, got \('a', 'a'\)"):
        AdaBN(4, domains=('a', 'a'))
    with pytest.raises(ValueError, match=r"got 'weight'"):
        AdaBN(4, domains=('weight', 'target'))
    with pytest.raises(ValueError, match=r"got 'my-domain'"):
        AdaBN(4, domains=('my-domain', ))
    with pytest.raises(ValueError, match=r"split_domains: unknown domain 'val'"):
        AdaBN(4, split_domains=('source', 'val'))
    with pytest.raises(
            ValueError, match=r'expects an input of shape \(N, 4, \*\), got \(2, 5, 3\)'):
        AdaBN(4)(torch.randn(2, 5, 3))
    assert 'eval_domain=' in repr(AdaBN(4)) and 'prior=16.0' in repr(AdaBN(4))
