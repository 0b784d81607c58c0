"""The toolboxes' norm conventions on every mmnorm layer: ``norm_decay_mult``
(NormAwareOptimWrapperConstructor), ``norm_eval`` and ``frozen_stages`` of mmseg / mmdet ResNets,
``init_weights`` (constant init, zero_init_residual) and ``is_norm``."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from test_uda import det_data  # noqa: F401  (a pytest fixture)
from test_uda import build, det_datasets, det_model_cfg, losses_of, seg_datasets, seg_model_cfg
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401
from mmnorm.engine.optimizers import is_norm
from mmnorm.models.norms import IBN, PBN, RN, AdaBN
from mmnorm.models.norms.conventions import apply_norm_eval, owns_statistics

NORMS = ('AdaBN', 'IBN', 'PBN', 'RN')
MMNORM = (AdaBN, IBN, PBN, RN)
TORCH = (_BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# The UDA-model tests run on mmseg's ResNetV1c by default; mmdet's ResNet (same mechanism: the
# toolbox's train() override, then the wrapper's apply_norm_eval) is the slow variant.


def _backbone(scope, norm, **kwargs):
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cfg = dict(
        type='ResNetV1c' if scope == 'mmseg' else 'ResNet',
        depth=18,
        base_channels=8,
        num_stages=4,
        out_indices=(3, ),
        norm_cfg=dict(type=norm, requires_grad=True),
        init_cfg=None)
    if scope == 'mmseg':
        cfg.update(stem_channels=8)
    cfg.update(kwargs)
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg)


def _norm_param_ids(model):
    """ids of the parameters inside a norm layer (torch or mmnorm), found by walking the module
    tree."""
    ids = set()
    for module in model.modules():
        if isinstance(module, TORCH + MMNORM):
            ids.update(id(p) for p in module.parameters())
    return ids


def _groups_by_param(optim_wrapper):
    defaults = optim_wrapper.optimizer.defaults
    return {
        id(p): dict(defaults, **{
            k: v
            for k, v in group.items() if k != 'params'
        })
        for group in optim_wrapper.optimizer.param_groups
        for p in group['params']
    }


# ---------------------------------------------------------------------------------------- optimizer
@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('constructor',
                         ['NormAwareOptimWrapperConstructor', 'DefaultOptimWrapperConstructor'])
def test_norm_decay_mult_and_bias_lr_mult(norm, constructor):
    model = _backbone('mmseg', norm)
    cfg = dict(
        type='OptimWrapper',
        constructor=constructor,
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_lr_mult=2.0))
    groups = _groups_by_param(build_optim_wrapper(model, cfg))
    params = dict(model.named_parameters())
    assert set(groups) == {id(p) for p in params.values()}  # every parameter exactly once
    norm_ids = _norm_param_ids(model)
    # the default constructor only recognises torch norms: RN's own parameters are missed (hence the
    # constructor)
    missed = set() if constructor.startswith('NormAware') else {
        id(p)
        for m in model.modules() if isinstance(m, RN) for p in m.parameters()
    }
    assert (norm == 'RN' and constructor.startswith('Default')) == bool(missed)
    for name, p in params.items():
        group = groups[id(p)]
        is_norm_param = id(p) in norm_ids and id(p) not in missed
        assert group['weight_decay'] == (0.0 if is_norm_param else 1e-4), name
        bias_lr = name.endswith('.bias') and not is_norm_param
        assert group['lr'] == pytest.approx(0.2 if bias_lr else 0.1), name
    if norm == 'RN' and not missed:
        gates = [n for n in params if '.gate_' in n]
        assert len(gates) == 4 * sum(isinstance(m, RN) for m in model.modules()) > 0


def test_custom_keys_keep_their_priority_over_the_norm_rule():
    model = _backbone('mmseg', 'RN')
    cfg = dict(
        type='OptimWrapper',
        constructor='NormAwareOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
        paramwise_cfg=dict(
            norm_decay_mult=0.0, custom_keys={'.gate_': dict(decay_mult=0.5, lr_mult=0.1)}))
    groups = _groups_by_param(build_optim_wrapper(model, cfg))
    for name, p in model.named_parameters():
        if '.gate_' in name:
            assert groups[id(p)]['weight_decay'] == pytest.approx(0.5e-4), name
            assert groups[id(p)]['lr'] == pytest.approx(0.01), name
        elif name.endswith(('bn1.weight', 'bn1.bias')):
            assert groups[id(p)]['weight_decay'] == 0.0, name


def _mmcv_is_norm(*args, **kwargs):
    from mmcv.cnn.bricks import is_norm as mmcv_is_norm
    return mmcv_is_norm(*args, **kwargs)


@pytest.mark.parametrize('check', [_mmcv_is_norm, is_norm], ids=['mmcv', 'mmnorm'])
def test_is_norm_meets_mmcv_contract(check):
    """The cases of mmcv 2.1.0's ``test_is_norm`` (tests/test_cnn/test_build_layers.py), restated:
    mmnorm's ``is_norm`` passes them as mmcv's does, so it can replace mmcv's where ``exclude=`` is
    used."""
    one_arg = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, nn.LayerNorm)
    layers = [(cls, cls(3)) for cls in one_arg] + [(nn.GroupNorm, nn.GroupNorm(3, 6))]
    for cls, layer in layers:
        assert check(layer), cls
        assert not check(layer, exclude=(cls, )), cls

    class SubclassedBN(nn.BatchNorm2d):
        pass

    layer = SubclassedBN(3)
    assert check(layer)
    assert not check(
        layer, exclude=_BatchNorm)  # a base class excludes its subclasses, bare or in a tuple
    assert not check(layer, exclude=(_BatchNorm, ))
    assert not check(nn.Conv2d(3, 8, 1))
    for bad in ('BN', ('BN', )):
        with pytest.raises(TypeError):
            check(nn.BatchNorm1d(3), exclude=bad)


def test_is_norm_on_mmnorm_layers():
    layers = [AdaBN(4), IBN(4), PBN(4), RN(4)]
    assert all(is_norm(m) for m in layers)
    assert [_mmcv_is_norm(m) for m in layers] == [False] * 4  # hence mmnorm's
    for layer in layers:
        assert not is_norm(layer, exclude=type(layer))
        assert is_norm(layer, exclude=(nn.GroupNorm, nn.LayerNorm))
    # excluding the torch BN base leaves the composite layers (they are not _BatchNorm) but not BN
    # itself
    assert [is_norm(m, exclude=_BatchNorm) for m in layers] == [True] * 4
    assert not is_norm(nn.BatchNorm2d(4), exclude=_BatchNorm)
    assert [is_norm(m, exclude=MMNORM) for m in layers] == [False] * 4
    assert is_norm(nn.GroupNorm(2, 4), exclude=MMNORM) and is_norm(RN(4), exclude=())
    with pytest.raises(
            TypeError, match=r"exclude must be None, a type or a tuple of types, got str: 'RN'"):
        is_norm(RN(4), exclude='RN')
    with pytest.raises(TypeError, match='got tuple'):
        is_norm(RN(4), exclude=(RN, 'BN'))
    assert [owns_statistics(m) for m in layers] == [False, False, False, True]


# ------------------------------------------------------------------------------- norm_eval / frozen
def _uda_setup(scope, norm, request, **backbone):
    if scope == 'mmseg':
        cfg = seg_model_cfg(norm)
        data = seg_datasets(request.getfixturevalue('tiny_demo_data'), 'target_labelled')
    else:
        cfg = det_model_cfg(norm)
        data = det_datasets(request.getfixturevalue('det_data'))
    cfg.backbone.update(backbone)
    return build(scope, cfg, *data)


def _buffers(module):
    return {n: b.clone() for n, b in module.named_buffers()}


@pytest.mark.parametrize('scope', ['mmseg', pytest.param('mmdet', marks=pytest.mark.slow)])
@pytest.mark.parametrize('norm', NORMS)
def test_norm_eval_freezes_every_statistic(scope, norm, request):
    """norm_eval=True on the toolbox ResNet inside the UDA wrapper: a training step leaves every
    statistic of the backbone unchanged (as for BN), while the backbone's parameters still learn."""
    model, _, batch = _uda_setup(scope, norm, request, norm_eval=True)
    model.train()
    layers = [m for m in model.backbone.modules() if isinstance(m, MMNORM)]
    assert layers
    assert all(not m.training for m in model.backbone.modules()
               if isinstance(m, _BatchNorm))  # the toolbox's rule
    assert all(not m.training for m in layers
               if owns_statistics(m))  # apply_norm_eval in the wrapper's train()
    before = _buffers(model.backbone)
    losses = losses_of(model, batch)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    after = _buffers(model.backbone)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == []
    norm_params = [p for m in layers for p in m.parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in norm_params)


@pytest.mark.parametrize('scope', ['mmseg', pytest.param('mmdet', marks=pytest.mark.slow)])
@pytest.mark.parametrize('norm', NORMS)
def test_frozen_stages_freeze_statistics_and_parameters(scope, norm, request):
    model, _, batch = _uda_setup(scope, norm, request, frozen_stages=1)
    model.train()
    frozen = [
        model.backbone.stem if scope == 'mmseg' else model.backbone.norm1, model.backbone.layer1
    ]
    frozen_layers = [m for part in frozen for m in part.modules() if isinstance(m, MMNORM)]
    live_layers = [m for m in model.backbone.layer2.modules() if isinstance(m, MMNORM)]
    assert frozen_layers and live_layers
    assert all(not m.training and not any(p.requires_grad for p in m.parameters())
               for m in frozen_layers)
    if norm == 'RN':
        assert all(not m.gate_mean_source.requires_grad for m in frozen_layers)
    before = [_buffers(m) for m in frozen_layers + live_layers]
    losses = losses_of(model, batch)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    after = [_buffers(m) for m in frozen_layers + live_layers]
    for i, (b, a) in enumerate(zip(before, after)):
        moved = any(not torch.equal(b[n], a[n]) for n in b if 'num_batches' not in n)
        assert moved == (i >= len(frozen_layers)), i
    assert all(p.grad is None for m in frozen_layers for p in m.parameters())


def test_apply_norm_eval_on_a_bare_backbone():
    """Outside the UDA wrappers (e.g. a hand-written split), apply_norm_eval after train() freezes
    RN."""
    model = _backbone('mmdet', 'RN', norm_eval=True)
    model.train()
    assert all(m.training for m in model.modules()
               if isinstance(m, RN))  # the toolbox's rule misses RN
    assert apply_norm_eval(model) == sum(isinstance(m, RN) for m in model.modules()) > 0
    before = _buffers(model)
    model(torch.randn(2, 3, 32, 32))  # eval RN: no split needed, target running statistics
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    model.train(True)
    model.norm_eval = False
    assert apply_norm_eval(model) == 0


# --------------------------------------------------------------------------------------------- init
def _affine(layer):
    """Every affine tensor of a norm layer (both IBN halves), as one flat tensor."""
    if isinstance(layer, IBN):
        return torch.cat([layer.IN.weight,
                          layer.BN.weight]), torch.cat([layer.IN.bias, layer.BN.bias])
    return layer.weight, layer.bias


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('norm', NORMS)
def test_init_weights_with_zero_init_residual_as_for_bn(scope, depth, norm):
    """The Runner's path (build, then ``init_weights``): the ResNets' init_cfg (Constant 1 on
    ``_BatchNorm``, zero_init_residual's Constant 0 override on norm2 / norm3 of each block) gives
    every mmnorm layer the affine its BN counterpart gets (RN and IBN's IN half are not
    ``_BatchNorm`` but are built with weight 1, bias 0)."""
    reference = _backbone(scope, 'BN', depth=depth, zero_init_residual=True)
    model = _backbone(scope, norm, depth=depth, zero_init_residual=True)
    for m in (reference, model):
        m.init_weights()
    bns = {n: m for n, m in reference.named_modules() if isinstance(m, nn.BatchNorm2d)}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MMNORM)}
    assert bns.keys() == layers.keys()
    zeroed = [n for n, bn in bns.items() if torch.all(bn.weight == 0)]
    last = 'bn3' if depth == 50 else 'bn2'
    blocks = 8 if depth == 18 else 16
    assert len(zeroed) == blocks and all(n.endswith(last) for n in zeroed)  # each block's last norm
    for name, bn in bns.items():
        weight, bias = _affine(layers[name])
        assert torch.all(weight == bn.weight[0]) and torch.all(bias == 0), name
