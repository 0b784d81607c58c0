"""PerturbResNet*: perturbation layers after chosen stages of the mmseg / mmdet ResNets, composed
with IBN-Net, any norm_cfg, frozen_stages and norm_eval; plain ResNet checkpoints load unchanged."""
import copy

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as SEG_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.norms import IBN, PBN
from mmnorm.models.perturb import DSU, EFDMix, MixStyle, StatPerturbation

REGISTRIES = {'mmseg': SEG_MODELS, 'mmdet': DET_MODELS}
CLASSES = {'mmseg': ('ResNet', 'ResNetV1c', 'ResNetV1d'), 'mmdet': ('ResNet', 'ResNetV1d')}
SMALL = dict(depth=18, base_channels=8, stem_channels=8)


def build(scope: str, **cfg) -> nn.Module:
    with DefaultScope.overwrite_default_scope(scope):
        return REGISTRIES[scope].build(cfg)


def perturb_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, StatPerturbation)}


@pytest.mark.parametrize('scope, base', [(s, b) for s in CLASSES for b in CLASSES[s]])
def test_positions_checkpoint_and_identity_when_off(scope, base):
    plain = build(scope, type=base, **SMALL)
    model = build(
        scope,
        type='Perturb' + base,
        perturb=dict(type='DSU', p=1.0),
        after_stages=('stem', 0, 2),
        **SMALL)
    assert list(perturb_layers(model)) == ['perturb_stem', 'perturb_layer1', 'perturb_layer3']
    assert model.perturb_positions == ('stem', 0, 2)
    # no new parameters or buffers: the plain checkpoint loads strictly, and back
    assert model.state_dict().keys() == plain.state_dict().keys()
    torch.manual_seed(0)
    for p in plain.parameters():
        p.data.normal_(0, 0.2)
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), model.eval()
    for a, b in zip(plain(x), model(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain.train(), model.train()
    mmnorm.models.perturb.set_perturbation_active(model, False)
    for a, b in zip(plain(x), model(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_perturbed_features_continue_and_are_returned():
    """Each stage's output is the perturbation of that stage applied to the (perturbed) input it
    received."""
    model = build(
        'mmseg',
        type='PerturbResNetV1c',
        perturb=dict(type='MixStyle', p=1.0),
        after_stages=('stem', 1),
        out_indices=(0, 1, 2, 3),
        **SMALL)
    model.train()  # the toolbox ResNet's train() returns None
    for pos, m in perturb_layers(model).items():
        m.generator = torch.Generator().manual_seed(len(pos))
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    outs = model(x)
    for pos, m in perturb_layers(model).items():
        m.generator = torch.Generator().manual_seed(len(pos))
    plain = build('mmseg', type='ResNetV1c', out_indices=(0, 1, 2, 3), **SMALL)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.train()
    torch.manual_seed(0)
    h = model.perturb_stem(plain.maxpool(plain.stem(x)))
    h0 = plain.layer1(h)
    h1 = model.perturb_layer2(plain.layer2(h0))
    h2 = plain.layer3(h1)
    for got, want in zip(outs, (h0, h1, h2, plain.layer4(h2))):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(outs[1], plain.layer2(h0))


@pytest.mark.parametrize('scope, base', [(s, b) for s in CLASSES for b in CLASSES[s]])
def test_conv1_position_is_between_the_first_conv_and_its_norm(scope, base):
    """DSU's extra stem position as in the authors' ResNet (``pertubration0`` after ``conv1``,
    before ``bn1``): perturb_conv1 receives the first conv's output and the first norm receives
    perturb_conv1's output."""
    model = build(
        scope,
        type='Perturb' + base,
        perturb=dict(type='DSU', p=1.0),
        after_stages=(0, 'stem', 'conv1', 3),
        **SMALL)
    model.train()
    assert model.perturb_positions == ('conv1', 'stem', 0, 3)
    assert list(perturb_layers(model)) == [
        'perturb_conv1', 'perturb_stem', 'perturb_layer1', 'perturb_layer4'
    ]
    deep = base != 'ResNet'
    conv, norm = (model.stem[0], model.stem[1]) if deep else (model.conv1, model.norm1)
    order, seen = [], {}

    def record(name):

        def hook(module, args, output):
            order.append(name)
            seen[name] = (args[0], output)

        return hook

    named = dict(
        conv=conv,
        norm=norm,
        perturb_conv1=model.perturb_conv1,
        maxpool=model.maxpool,
        perturb_stem=model.perturb_stem,
        layer1=model.layer1)
    handles = [m.register_forward_hook(record(n)) for n, m in named.items()]
    try:
        model(torch.randn(4, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    # The perturbation runs in the first conv's forward hook (before the hooks registered here), so
    # the recorded order is: perturbation, conv, norm; the stem position likewise inside the
    # max-pool's hooks.
    assert order == ['perturb_conv1', 'conv', 'norm', 'perturb_stem', 'maxpool', 'layer1']
    raw = conv.forward(seen['conv'][0])  # the conv alone, without hooks
    assert torch.equal(seen['perturb_conv1'][0], raw)  # the perturbation sees conv1's output ...
    assert seen['norm'][0] is seen['perturb_conv1'][1]  # ... and the norm sees the perturbation's
    assert seen['conv'][1] is seen['perturb_conv1'][1]
    assert not torch.allclose(seen['perturb_conv1'][1], raw)
    assert seen['maxpool'][1] is seen['perturb_stem'][1] and seen['layer1'][0] is seen[
        'perturb_stem'][1]


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_frozen_stages_and_norm_eval_keep_the_perturbation(scope):
    model = build(
        scope,
        type='PerturbResNet',
        perturb=dict(type='EFDMix', p=1.0),
        after_stages=(0, 1),
        frozen_stages=1,
        norm_eval=True,
        **SMALL)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert all(m.training for m in perturb_layers(model).values())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('conv1', 'bn1', 'layer1.')) for n in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    sum(o.sum() for o in out).backward()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if 'running' in k)
    assert model.layer2[0].conv1.weight.grad is not None and model.conv1.weight.grad is None
    model.eval()
    assert all(not m.training for m in perturb_layers(model).values())


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('ibn_type', ['a', 'b'])
def test_composes_with_ibn_and_pbn(scope, ibn_type):
    model = build(
        scope,
        type='PerturbResNet',
        ibn=dict(type=ibn_type),
        norm_cfg=dict(type='PBN', requires_grad=True),
        perturb=dict(type='MixStyle', p=1.0),
        after_stages=(0, 1, 2),
        **SMALL)
    model.train()
    assert model.ibn['type'] == ibn_type and len(perturb_layers(model)) == 3
    assert any(isinstance(m, PBN) for m in model.modules())
    if ibn_type == 'a':
        assert isinstance(model.layer1[0].bn1, IBN)
    else:
        assert isinstance(model.layer1[-1].IN, nn.InstanceNorm2d)
    out = model(torch.randn(4, 3, 32, 32))
    sum(o.sum() for o in out).backward()
    assert all(torch.isfinite(o).all() for o in out)


def test_any_norm_cfg_and_layer_kinds():
    for norm in ('AdaBN', 'PBN', 'BN'):
        for kind, cls in (('MixStyle', MixStyle), ('EFDMix', EFDMix), ('DSU', DSU)):
            model = build(
                'mmseg',
                type='PerturbResNetV1c',
                norm_cfg=dict(type=norm),
                perturb=dict(type=kind),
                after_stages=(3, ),
                **SMALL)
            assert isinstance(model.perturb_layer4, cls)
            model.train()
            assert all(torch.isfinite(o).all() for o in model(torch.randn(2, 3, 32, 32)))


def test_toolbox_forward_hooks_deepcopy_and_re_adding():
    """The toolbox's own forward runs (no copy of it); hooks follow a deepcopy; add_perturbation
    again replaces the layers without stacking hooks; unlisted positions pass their output
    unchanged."""
    from mmseg.models.backbones import ResNetV1c

    from mmnorm.models.backbones import add_perturbation
    from mmnorm.models.backbones.perturb_resnet import PerturbationHook
    model = build(
        'mmseg',
        type='PerturbResNetV1c',
        perturb=dict(type='MixStyle', p=1.0),
        after_stages=('conv1', 0),
        **SMALL)
    assert type(model).forward is ResNetV1c.forward
    twin = copy.deepcopy(model)
    hooks = [
        h for m in twin.modules() for h in m._forward_hooks.values()
        if isinstance(h, PerturbationHook)
    ]
    assert len(hooks) == 2 and all(h.resnet is twin for h in hooks)
    x = torch.randn(4, 3, 32, 32)
    model.train(), twin.train()
    for m in (model, twin):
        for layer in perturb_layers(m).values():
            layer.generator = torch.Generator().manual_seed(3)
    for a, b in zip(model(x), twin(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    add_perturbation(model, dict(type='DSU', p=1.0), ('conv1', 'stem'))
    hooks = [
        h for m in model.modules() for h in m._forward_hooks.values()
        if isinstance(h, PerturbationHook)
    ]
    assert sorted(str(h.pos) for h in hooks) == ['0', 'conv1', 'stem']
    assert model.perturb_positions == ('conv1', 'stem') and isinstance(model.perturb_conv1, DSU)
    assert not hasattr(model,
                       'perturb_layer1')  # its hook on layer1 stays and passes the output unchanged
    model.perturb_positions = ()
    model.eval(), twin.eval()
    for a, b in zip(model(x), twin(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('after_stages, match', [
    ((4, ), r"after_stages: 4 is not a position .* 0\.\.3 \(num_stages=4\)"),
    (('conv2', ), r"after_stages: 'conv2' is not a position of this backbone; use 'conv1', 'stem'"),
    ((-1, ), r'after_stages: -1 is not a position'),
    (('res1', ), r"after_stages: 'res1' is not a position"),
    ((0, 0), r'lists a position twice, got after_stages=\(0, 0\)'),
    ((), r'non-empty list of positions'),
    (2, r'non-empty list .* got after_stages=2'),
])
def test_bad_positions(after_stages, match):
    with pytest.raises(ValueError, match=match):
        build('mmseg', type='PerturbResNetV1c', after_stages=after_stages, **SMALL)


def test_bad_position_for_fewer_stages_and_bad_perturb():
    with pytest.raises(ValueError, match=r'3 is not a position .*num_stages=3'):
        build(
            'mmdet',
            type='PerturbResNet',
            num_stages=3,
            strides=(1, 2, 2),
            dilations=(1, 1, 1),
            out_indices=(0, 1, 2),
            after_stages=(3, ),
            **SMALL)
    with pytest.raises(TypeError, match='not a perturbation layer'):
        build('mmseg', type='PerturbResNetV1c', perturb=dict(type='ReLU'), **SMALL)
    with pytest.raises(TypeError, match=r"perturb must be a layer config .*got 'MixStyle'"):
        build('mmseg', type='PerturbResNetV1c', perturb='MixStyle', **SMALL)
    with pytest.raises(ValueError, match='got p=2'):
        build('mmdet', type='PerturbResNet', perturb=dict(type='DSU', p=2), **SMALL)
