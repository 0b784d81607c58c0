"""tools/model_converters/ibnnet2mmseg.py on checkpoints written here in the official IBN-Net key
layout."""
from collections import OrderedDict

import pytest
import torch
from conftest import run_tool
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as SEG_MODELS
from tool_loader import load_tool

import mmnorm  # noqa: F401  (registration)

TOOL = 'tools/model_converters/ibnnet2mmseg.py'
converter = load_tool('model_converters/ibnnet2mmseg')

ARCH = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3))
}


def official_state_dict(depth: int, ibn_type: str, batches_tracked: bool = True) -> OrderedDict:
    """The key layout of XingangPan/IBN-Net ``resnet{depth}_ibn_{a,b}`` (torchvision names), random
    values.

    Written from the architecture description (METHODS.md), not from mmnorm: IBN-a has
    ``bn1.IN``/``bn1.BN`` in every block of layer1-3; IBN-b has an affine IN as the stem ``bn1`` and
    ``IN`` after the residual sum in the last block of layer1-2.
    """
    gen = torch.Generator().manual_seed(depth + ord(ibn_type))
    sd = OrderedDict()

    def bn(prefix, channels):
        sd[prefix + 'weight'] = torch.rand(channels, generator=gen) + 0.5
        sd[prefix + 'bias'] = torch.randn(channels, generator=gen)
        sd[prefix + 'running_mean'] = torch.randn(channels, generator=gen)
        sd[prefix + 'running_var'] = torch.rand(channels, generator=gen) + 0.5
        if batches_tracked:
            sd[prefix + 'num_batches_tracked'] = torch.randint(1, 10**6, (), generator=gen)

    def inorm(prefix, channels):
        sd[prefix + 'weight'] = torch.rand(channels, generator=gen) + 0.5
        sd[prefix + 'bias'] = torch.randn(channels, generator=gen)

    def conv(name, cout, cin, k):
        sd[name] = torch.randn(cout, cin, k, k, generator=gen)

    kind, blocks = ARCH[depth]
    expansion = 4 if kind == 'bottleneck' else 1
    conv('conv1.weight', 64, 3, 7)
    (inorm if ibn_type == 'b' else bn)('bn1.', 64)
    inplanes = 64
    for stage, num in enumerate(blocks, start=1):
        planes = 64 * 2**(stage - 1)
        for i in range(num):
            p = f'layer{stage}.{i}.'
            if kind == 'bottleneck':
                conv(p + 'conv1.weight', planes, inplanes, 1)
            else:
                conv(p + 'conv1.weight', planes, inplanes, 3)
            if ibn_type == 'a' and stage <= 3:
                inorm(p + 'bn1.IN.', planes // 2)
                bn(p + 'bn1.BN.', planes - planes // 2)
            else:
                bn(p + 'bn1.', planes)
            conv(p + 'conv2.weight', planes, planes, 3)
            bn(p + 'bn2.', planes)
            if kind == 'bottleneck':
                conv(p + 'conv3.weight', planes * 4, planes, 1)
                bn(p + 'bn3.', planes * 4)
            if ibn_type == 'b' and stage <= 2 and i == num - 1:
                inorm(p + 'IN.', planes * expansion)
            if i == 0 and (stage > 1 or inplanes != planes * expansion):
                conv(p + 'downsample.0.weight', planes * expansion, inplanes, 1)
                bn(p + 'downsample.1.', planes * expansion)
            inplanes = planes * expansion
    sd['fc.weight'] = torch.randn(1000, inplanes, generator=gen)
    sd['fc.bias'] = torch.randn(1000, generator=gen)
    return sd


def build_backbone(scope, depth, ibn_type, **kwargs):
    registry = {'mmseg': SEG_MODELS, 'mmdet': DET_MODELS}[scope]
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(
            dict(type='IBNResNet', depth=depth, ibn=dict(type=ibn_type), **kwargs))


def assert_every_tensor_in_place(model, official):
    """Strict load, then each official tensor (classifier aside) sits under the same name in the
    model."""
    state = model.state_dict()
    expected = {k: v for k, v in official.items() if not k.startswith('fc.')}
    assert set(state) == set(expected) | {k for k in state if k.endswith('num_batches_tracked')}
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize('depth,ibn_type', [(18, 'a'), (34, 'b'), (50, 'a'), (50, 'b'),
                                            pytest.param(101, 'a', marks=pytest.mark.slow)])
def test_convert_and_strict_load_both_toolboxes(tmp_path, capsys, depth, ibn_type):
    official = official_state_dict(depth, ibn_type)
    src, dst = tmp_path / f'resnet{depth}_ibn_{ibn_type}-0123abcd.pth', tmp_path / 'out.pth'
    torch.save(official, src)
    assert converter.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f'ResNet-{depth} IBN-{ibn_type}' in out and 'dropped (ImageNet classifier) (2)' in out
    assert 'unmatched' not in out
    converted = torch.load(dst, weights_only=True)
    for scope in ('mmseg', 'mmdet'):
        model = build_backbone(scope, depth, ibn_type)
        model.load_state_dict(converted, strict=True)
        assert_every_tensor_in_place(model, official)


def test_old_style_checkpoint_through_the_cli_and_pretrained_init(tmp_path):
    """``{'state_dict': {'module.' + key: ...}, ...}`` (old .pth.tar), converted by the real CLI
    process."""
    official = official_state_dict(50, 'b')
    src, dst = tmp_path / 'resnet50_ibn_b.pth.tar', tmp_path / 'r50_ibn_b.pth'
    torch.save(
        {
            'state_dict': OrderedDict(('module.' + k, v) for k, v in official.items()),
            'epoch': 100,
            'arch': 'resnet50_ibn_b',
            'best_prec1': 77.3
        }, src)
    proc = run_tool([TOOL, src, dst])
    assert 'ResNet-50 IBN-b' in proc.stdout and 'unmatched' not in proc.stdout
    # The documented use: init_cfg=Pretrained in a config (mmengine's loader).
    model = build_backbone('mmseg', 50, 'b', init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    assert_every_tensor_in_place(model, official)


def test_never_overwrites_without_force(tmp_path):
    official = official_state_dict(18, 'a')
    src, dst = tmp_path / 'resnet18_ibn_a.pth', tmp_path / 'out.pth'
    torch.save(official, src)
    dst.write_bytes(b'keep me')
    with pytest.raises(SystemExit) as exc:
        converter.main([str(src), str(dst)])
    assert exc.value.code == 2 and dst.read_bytes() == b'keep me'
    proc = run_tool([TOOL, src, dst], check=False)
    assert proc.returncode == 2 and 'exists; pass --force to overwrite it' in proc.stderr
    assert dst.read_bytes() == b'keep me'
    assert converter.main([str(src), str(dst), '--force']) == 0
    model = build_backbone('mmdet', 18, 'a')
    model.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    assert_every_tensor_in_place(model, official)


def test_unmatched_keys_are_reported(tmp_path, capsys):
    official = official_state_dict(18, 'b')
    broken = OrderedDict(official)
    broken['layer1.0.se.fc.weight'] = torch.zeros(4, 64)
    del broken['layer2.0.conv2.weight']
    broken['layer3.1.bn2.weight'] = torch.ones(7)
    src, dst = tmp_path / 'resnet18_ibn_b.pth', tmp_path / 'out.pth'
    torch.save(broken, src)
    assert converter.main([str(src), str(dst)]) == 1
    captured = capsys.readouterr()
    assert 'unmatched: not in IBNResNet (1):\n  layer1.0.se.fc.weight' in captured.out
    missing = 'unmatched: IBNResNet keys missing from the checkpoint (1):\n  layer2.0.conv2.weight'
    assert missing in captured.out
    assert "('layer3.1.bn2.weight', (7,), (256,))" in captured.out
    assert 'not written' in captured.err and not dst.exists()
    assert converter.main([str(src), str(dst), '--allow-unmatched']) == 0
    written = torch.load(dst, weights_only=True)
    assert 'layer1.0.se.fc.weight' not in written and 'layer3.1.bn2.weight' not in written
    assert torch.equal(written['layer2.1.conv2.weight'], official['layer2.1.conv2.weight'])


def test_old_checkpoint_without_num_batches_tracked(tmp_path, capsys):
    official = official_state_dict(34, 'a', batches_tracked=False)
    src, dst = tmp_path / 'resnet34_ibn_a.pth', tmp_path / 'out.pth'
    torch.save(official, src)
    assert converter.main([str(src), str(dst)]) == 0
    assert 'filled with 0 (absent from old checkpoints)' in capsys.readouterr().out
    model = build_backbone('mmseg', 34, 'a')
    model.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    assert_every_tensor_in_place(model, official)


def test_unrecognised_checkpoints(tmp_path, capsys):
    plain = OrderedDict((k.replace('bn1.BN.', 'bn1.'), v)
                        for k, v in official_state_dict(18, 'a').items() if '.IN.' not in k)
    src = tmp_path / 'resnet18.pth'
    torch.save(plain, src)
    assert converter.main([str(src), str(tmp_path / 'out.pth')]) == 1
    assert 'no IBN layers found' in capsys.readouterr().err
    truncated = OrderedDict(
        (k, v) for k, v in official_state_dict(50, 'a').items() if not k.startswith('layer4'))
    torch.save(truncated, src)
    assert converter.main([str(src), str(tmp_path / 'out.pth')]) == 1
    layout = 'not a ResNet-18/34/50/101/152 layout: bottleneck blocks per stage (3, 4, 6, 0)'
    assert layout in capsys.readouterr().err
    with pytest.raises(ValueError, match='no IBN layers found'):
        converter.infer_arch(plain)
