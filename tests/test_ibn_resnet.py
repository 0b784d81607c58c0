"""IBN-Net-a/-b on the mmseg and mmdet ResNets: placement, block forward, ResNet options, toolchain,
errors."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS as DET_MODELS
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as SEG_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401  (registration)
from mmnorm.models.backbones import add_ibn
from mmnorm.models.backbones.ibn_resnet import PostResidualIN
from mmnorm.models.norms import IBN

REGISTRIES = {'mmseg': SEG_MODELS, 'mmdet': DET_MODELS}
STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3)
}


def build(scope: str, **cfg) -> nn.Module:
    cfg.setdefault('type', 'IBNResNet')
    with DefaultScope.overwrite_default_scope(scope):
        return REGISTRIES[scope].build(cfg)


def randomize(model: nn.Module) -> None:
    """Random affine parameters and running stats, so misplaced or skipped layers change the
    output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (_BatchNorm, nn.InstanceNorm2d)) and module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            if isinstance(module, _BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
            if isinstance(module, nn.Conv2d) and 'conv_offset' not in module.__class__.__name__:
                nn.init.normal_(module.weight, std=0.5 / module.weight[0].numel()**0.5)


def blocks_with_in(model: nn.Module) -> set:
    return {name for name, m in model.named_modules() if isinstance(m, PostResidualIN)}


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_ibn_a_resnet50_positions(scope):
    model = build(scope, depth=50, ibn=dict(type='a'))
    modules = dict(model.named_modules())
    for name in ('layer1.0.bn1', 'layer1.2.bn1', 'layer2.0.bn1', 'layer2.3.bn1', 'layer3.0.bn1',
                 'layer3.5.bn1'):
        assert isinstance(modules[name], IBN), name
        planes = modules[name].num_features
        assert (modules[name].IN.num_features, modules[name].BN.num_features) == (planes // 2,
                                                                                  planes // 2)
        assert type(modules[name + '.IN']) is nn.InstanceNorm2d and modules[name + '.IN'].affine
        assert type(modules[name + '.BN']) is nn.BatchNorm2d
    assert modules['layer3.5.bn1'].num_features == 256
    for name in ('bn1', 'layer1.0.bn2', 'layer1.0.bn3', 'layer1.0.downsample.1', 'layer3.5.bn2',
                 'layer4.0.bn1', 'layer4.2.bn1', 'layer4.2.bn3'):
        assert type(modules[name]) is nn.BatchNorm2d, name
    assert sum(isinstance(m, IBN) for m in model.modules()) == 3 + 4 + 6
    assert not blocks_with_in(model)
    keys = set(model.state_dict())
    assert {
        'layer1.0.bn1.IN.weight', 'layer1.0.bn1.BN.running_var',
        'layer3.5.bn1.BN.num_batches_tracked', 'bn1.running_mean', 'layer4.0.bn1.weight'
    } <= keys
    assert model.ibn == dict(type='a', stages=(True, True, True, False), ratio=0.5)


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_ibn_b_resnet50_positions(scope):
    model = build(scope, depth=50, ibn=dict(type='b'))
    modules = dict(model.named_modules())
    assert type(modules['bn1']) is nn.InstanceNorm2d and modules['bn1'].num_features == 64
    assert modules['bn1'].affine and not modules['bn1'].track_running_stats
    assert blocks_with_in(model) == {'layer1.2', 'layer2.3'}
    assert type(
        modules['layer1.2.IN']) is nn.InstanceNorm2d and modules['layer1.2.IN'].num_features == 256
    assert type(
        modules['layer2.3.IN']) is nn.InstanceNorm2d and modules['layer2.3.IN'].num_features == 512
    assert not any(isinstance(m, IBN) for m in model.modules())
    for name in ('layer1.0.bn1', 'layer1.2.bn3', 'layer2.3.bn1', 'layer3.5.bn3', 'layer4.2.bn1'):
        assert type(modules[name]) is nn.BatchNorm2d, name
    keys = set(model.state_dict())
    assert {'bn1.weight', 'bn1.bias', 'layer1.2.IN.weight', 'layer2.3.IN.bias'} <= keys
    assert 'bn1.running_mean' not in keys and 'layer3.5.IN.weight' not in keys
    assert sum(type(m) is nn.InstanceNorm2d for m in model.modules()) == 3


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_all_depths(scope, depth):
    blocks = STAGE_BLOCKS[depth]
    model_a = build(scope, depth=depth, ibn=dict(type='a'))
    ibn_layers = [n for n, m in model_a.named_modules() if isinstance(m, IBN)]
    assert len(ibn_layers) == sum(blocks[:3]) and all(n.endswith('.bn1') for n in ibn_layers)
    assert not any(n.startswith('layer4') for n in ibn_layers)
    model_b = build(scope, depth=depth, ibn=dict(type='b'))
    assert blocks_with_in(model_b) == {f'layer1.{blocks[0] - 1}', f'layer2.{blocks[1] - 1}'}
    if depth in (18, 50):
        x = torch.randn(2, 3, 32, 32)
        for model in (model_a, model_b):
            outs = model(x)
            assert [o.shape[1]
                    for o in outs] == [64 * (4 if depth == 50 else 1) * 2**i for i in range(4)]


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('depth', [18, 50])
def test_ibn_b_block_forward(scope, depth):
    """relu(residual_sum) of the IBN-b block equals the toolbox block forward; IN sits between the
    sum and ReLU."""
    plugins = None
    # plugins at all three positions of a Bottleneck (mmseg/mmdet BasicBlock have none)
    if depth == 50:
        plugins = [
            dict(cfg=dict(type='ContextBlock', ratio=0.25, postfix=i), position=f'after_conv{i}')
            for i in (1, 2, 3)
        ]
    plain = build(scope, type='ResNet', depth=depth, plugins=plugins, norm_eval=False)
    randomize(plain)
    model = build(
        scope, depth=depth, plugins=plugins, norm_eval=False, ibn=dict(type='b', stem=False))
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [
        'layer1.%d.IN.bias' % (len(model.layer1) - 1),
        'layer1.%d.IN.weight' % (len(model.layer1) - 1),
        'layer2.%d.IN.bias' % (len(model.layer2) - 1),
        'layer2.%d.IN.weight' % (len(model.layer2) - 1)
    ]
    expansion = 4 if depth == 50 else 1
    for train in (False, True):
        for layer, channels in (('layer1', 64 * expansion), ('layer2', 128 * expansion)):
            block, ref = getattr(model, layer)[-1], getattr(plain, layer)[-1]
            block.train(train), ref.train(train)
            x = torch.randn(2, channels, 8, 8)
            with torch.no_grad():
                expected = ref(x)
                seen = {}
                hook = block.IN.register_forward_hook(
                    lambda m, inp, out: seen.update(inp=inp[0].clone()))
                y = block(x)
                hook.remove()
                # IN's input is the pre-ReLU residual sum of the toolbox block; the output is
                # relu(IN(sum)).
                torch.testing.assert_close(F.relu(seen['inp']), expected)
                torch.testing.assert_close(
                    y,
                    F.relu(
                        F.instance_norm(seen['inp'], weight=block.IN.weight, bias=block.IN.bias)))
                assert not torch.allclose(y, expected)
                instance_norm = block.IN
                block.IN = nn.Identity()
                torch.testing.assert_close(block(x), expected)
                block.IN = instance_norm


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
def test_ibn_b_blocks_are_built_as_such(scope):
    """IBN-b blocks are instances of the IBN-b subclass from construction (no class swap
    afterwards), the other blocks of the stage are the toolbox's; the IBN-b placement needs them,
    add_ibn alone cannot make them."""
    from mmnorm.models.backbones.ibn_resnet import IBN_B_BLOCKS
    model = build(scope, depth=50, ibn=dict(type='b'))
    plain_block = type(model.layer3[0])
    assert IBN_B_BLOCKS[plain_block] is type(model.layer1[2]) is type(model.layer2[3])
    assert all(type(b) is plain_block for b in list(model.layer1)[:2] + list(model.layer2)[:3])
    assert type(model.layer1[2]).__init__ is PostResidualIN.__init__
    plain = build(scope, type='ResNet', depth=50)
    with pytest.raises(
            TypeError,
            match=r"layer1 of ResNet was not built with IBN-b blocks .*ibn=dict\(type='b'\)"):
        add_ibn(plain, type='b')
    assert not blocks_with_in(plain) and getattr(plain, 'ibn', None) is None


def test_ibn_b_with_checkpointing_matches_plain_forward():
    torch.manual_seed(0)
    model = build('mmseg', depth=18, ibn=dict(type='b'), with_cp=True).double()
    randomize(model)
    plain = copy.deepcopy(model)
    for m in plain.modules():
        m.with_cp = False
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grads = []
    for net in (model, plain):
        outs = net(x)
        sum(o.square().mean() for o in outs).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    # Absolute tolerance from the largest gradient: some gradients are exactly zero in theory (e.g.
    # the bias of the norm before an IBN-b IN, whose per-channel shift IN removes) and only hold
    # rounding noise.
    scale = max(g.abs().max().item() for g in grads[1])
    for g_cp, g_plain in zip(*grads):
        torch.testing.assert_close(g_cp, g_plain, atol=1e-12 * scale, rtol=1e-9)


OPTION_SETS = {
    'mmseg': [
        dict(
            type='ResNetV1c',
            depth=50,
            strides=(1, 2, 1, 1),
            dilations=(1, 1, 2, 4),
            contract_dilation=True,
            multi_grid=(1, 2, 4),
            out_indices=(0, 3)),
        dict(
            type='ResNetV1d',
            depth=50,
            style='caffe',
            dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
            stage_with_dcn=(False, True, True, True),
            plugins=[
                dict(
                    cfg=dict(type='ContextBlock', ratio=0.25),
                    stages=(True, True, False, False),
                    position='after_conv3')
            ]),
        dict(
            type='ResNet',
            depth=34,
            num_stages=3,
            strides=(1, 2, 2),
            dilations=(1, 1, 2),
            out_indices=(0, 1, 2),
            deep_stem=True,
            avg_down=True),
    ],
    'mmdet': [
        dict(
            type='ResNet',
            depth=50,
            strides=(1, 2, 2, 1),
            dilations=(1, 1, 1, 2),
            style='caffe',
            dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
            stage_with_dcn=(False, False, True, True),
            out_indices=(1, 2, 3)),
        dict(
            type='ResNetV1d',
            depth=18,
            num_stages=3,
            strides=(1, 2, 2),
            dilations=(1, 1, 1),
            out_indices=(0, 1, 2)),
    ],
}


def _conv_layout(model: nn.Module) -> dict:
    return {
        name: (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
               m.dilation)
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
    }


@pytest.mark.parametrize('scope,index',
                         [(s, i) for s in OPTION_SETS for i in range(len(OPTION_SETS[s]))])
@pytest.mark.parametrize('ibn_type', ['a', 'b'])
def test_other_resnet_options_keep_working(scope, index, ibn_type):
    options = dict(OPTION_SETS[scope][index])
    plain = build(scope, **options)
    model = build(scope, **dict(options, type='IBN' + options['type'], ibn=dict(type=ibn_type)))
    assert _conv_layout(model) == _conv_layout(
        plain)  # strides, dilations, dcn, deep stem, avg_down intact
    assert {n for n, _ in plain.named_modules()} <= {n for n, _ in model.named_modules()}
    assert len(model.ibn['stages']) == options.get('num_stages', 4)
    if ibn_type == 'a':
        assert sum(isinstance(m, IBN) for m in model.modules()) == sum(
            len(getattr(model, name)) for name in model.res_layers[:3])
    deep_stem = options.get('deep_stem') or options['type'] in ('ResNetV1c', 'ResNetV1d')
    if ibn_type == 'b' and deep_stem:  # the deep stem's last norm becomes IN
        assert type(model.stem[-2]) is nn.InstanceNorm2d and model.stem[-2].num_features == 64
        assert type(model.stem[1]) is type(model.stem[4]) is nn.BatchNorm2d
    model.eval(), plain.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [o.shape for o in model(x)] == [o.shape for o in plain(x)]


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('ibn_type', ['a', 'b'])
def test_norm_eval_and_frozen_stages(scope, ibn_type):
    model = build(scope, depth=18, ibn=dict(type=ibn_type), frozen_stages=1, norm_eval=True)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if 'running' in k)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(('conv1', 'bn1', 'layer1.')) for n in frozen)
    assert all(n.startswith(('layer2', 'layer3', 'layer4')) for n in trainable)
    if ibn_type == 'a':
        assert {'layer1.0.bn1.IN.weight', 'layer1.1.bn1.BN.bias'} <= set(frozen)
        assert {'layer2.0.bn1.IN.weight', 'layer3.1.bn1.BN.weight'} <= set(trainable)
    else:
        assert {'bn1.weight', 'layer1.1.IN.weight'
                } <= set(frozen) and 'layer2.1.IN.bias' in trainable


@pytest.mark.parametrize('ibn_type', ['a', 'b'])
def test_norm_requires_grad_false_reaches_new_layers(ibn_type):
    model = build(
        'mmseg', depth=18, ibn=dict(type=ibn_type), norm_cfg=dict(type='BN', requires_grad=False))
    norm_params = [
        n for n, p in model.named_parameters() if '.bn' in n or n.startswith('bn') or '.IN.' in n
    ]
    assert norm_params and not any(p.requires_grad
                                   for n, p in model.named_parameters() if n in norm_params)
    assert all(p.requires_grad for n, p in model.named_parameters() if 'conv' in n)


def test_init_cfg_default_and_pretrained(tmp_path):
    model = build('mmseg', depth=50, ibn=dict(type='a'))
    randomize(model)
    model.init_weights()  # Kaiming convs, constant 1 on BN (the BN halves too), zero-init of bn3
    assert torch.all(model.layer1[0].bn1.BN.weight == 1) and torch.all(
        model.layer2[1].bn3.weight == 0)
    randomize(model)
    path = tmp_path / 'ibn_a.pth'
    torch.save(model.state_dict(), path)
    loaded = build(
        'mmseg',
        depth=50,
        ibn=dict(type='a'),
        init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    loaded.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bn_checkpoint_loads_into_ibn_a():
    """A plain BN ResNet checkpoint (e.g. ImageNet R50) initialises IBN-a: IBN layers take the BN
    slices."""
    plain = build('mmdet', type='ResNet', depth=50)
    randomize(plain)
    model = build('mmdet', depth=50, ibn=dict(type='a'))
    result = model.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    bn, ibn = plain.layer2[1].bn1, model.layer2[1].bn1
    torch.testing.assert_close(ibn.IN.weight, bn.weight[:64], rtol=0, atol=0)
    torch.testing.assert_close(ibn.BN.running_mean, bn.running_mean[64:], rtol=0, atol=0)


@pytest.mark.parametrize('ibn_type', ['a', 'b'])
def test_sync_bn_round_trip_keeps_ibn(ibn_type):
    model = build('mmseg', depth=18, ibn=dict(type=ibn_type), norm_cfg=dict(type='SyncBN'))
    randomize(model)
    assert all(isinstance(m.BN, nn.SyncBatchNorm) for m in model.modules() if isinstance(m, IBN))
    reverted = revert_sync_batchnorm(model)  # a non-distributed Runner does this
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    if ibn_type == 'a':
        assert sum(isinstance(m, IBN) for m in reverted.modules()) == 6
    else:
        assert blocks_with_in(reverted) == {'layer1.1', 'layer2.1'} and type(
            reverted.bn1) is nn.InstanceNorm2d
    x = torch.randn(1, 3, 32, 32)
    reverted.eval()  # (the toolbox ResNet.train() returns None, so no chaining)
    expected = [o.clone() for o in reverted(x)]
    synced = convert_sync_batchnorm(reverted)  # sync_bn='torch' in a config
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == sum(
        isinstance(m, _BatchNorm) for m in reverted.modules())
    if ibn_type == 'a':
        assert all(
            isinstance(m.BN, nn.SyncBatchNorm) for m in synced.modules() if isinstance(m, IBN))
    assert blocks_with_in(synced) == blocks_with_in(reverted)
    back = revert_sync_batchnorm(synced)
    back.eval()
    for a, b in zip(back(x), expected):
        torch.testing.assert_close(a, b)


def test_ratio_and_stages_options():
    model = build(
        'mmseg', depth=50, ibn=dict(type='a', ratio=0.25, stages=(False, True, False, True)))
    ibn = {n: m for n, m in model.named_modules() if isinstance(m, IBN)}
    assert set(n.split('.')[0] for n in ibn) == {'layer2', 'layer4'}
    assert ibn['layer4.0.bn1'].num_in == 128 and ibn['layer2.0.bn1'].num_in == 32
    model = build(
        'mmdet', depth=50, ibn=dict(type='b', stages=(False, False, True, True), stem=False))
    assert blocks_with_in(model) == {'layer3.5', 'layer4.2'} and type(model.bn1) is nn.BatchNorm2d


def test_bad_ibn_arguments():
    with pytest.raises(ValueError, match="ibn type must be 'a' or 'b', got type='c'"):
        build('mmseg', depth=18, ibn=dict(type='c'))
    with pytest.raises(
            ValueError,
            match=r'ibn stages must be 4 bools \(one per ResNet stage\), got stages=\(True, '
            r'True\)'):
        build('mmseg', depth=18, ibn=dict(type='a', stages=(True, True)))
    with pytest.raises(ValueError, match='ibn ratio is an IBN-a option, got ratio=0.5 with type=b'):
        build('mmdet', depth=18, ibn=dict(type='b', ratio=0.5))
    with pytest.raises(ValueError, match='ibn stem is an IBN-b option, got stem=True with type=a'):
        build('mmdet', depth=18, ibn=dict(type='a', stem=True))
    with pytest.raises(ValueError, match=r"unknown ibn keys \['position'\]"):
        build('mmseg', depth=18, ibn=dict(type='a', position='after_conv1'))
    with pytest.raises(ValueError, match=r'IBN ratio must be a number in \(0, 1\), got ratio=1.5'):
        build('mmseg', depth=18, ibn=dict(type='a', ratio=1.5))
    with pytest.raises(TypeError, match='ibn must be a dict'):
        build('mmseg', depth=18, ibn='a')
    model = build('mmseg', depth=18, ibn=dict(type='a'))
    with pytest.raises(ValueError, match='IBNResNet already holds IBN-a layers'):
        add_ibn(model, type='b')
    with pytest.raises(TypeError, match='add_ibn expects an mmseg/mmdet ResNet, got Sequential'):
        add_ibn(nn.Sequential())


IBN_CONFIGS = {
    'deeplabv3plus_r50-d8-ibn-a_4xb2-40k_gta5-cityscapes-512x512.py': 'a',
    'deeplabv3plus_r50-d8-ibn-b_4xb2-40k_gta5-cityscapes-512x512.py': 'b',
    'faster-rcnn_r50-ibn-a_fpn_2xb4-20k_cityscapes-foggy.py': 'a',
}


@pytest.mark.parametrize('name', sorted(IBN_CONFIGS))
def test_config_builds_in_a_runner_and_runs_forward(name, tmp_path):
    """The config's model through a real (non-distributed) Runner: SyncBN halves reverted, IBN kept,
    forward runs."""
    from conftest import REPO
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(f'{REPO}/configs/ibn/{name}')
    assert cfg.model.backbone.type == 'IBNResNet' and cfg.model.backbone.ibn == dict(
        type=IBN_CONFIGS[name])
    if cfg.default_scope == 'mmseg':
        assert cfg.model.pretrained.startswith('checkpoints/resnet50_ibn_')
        cfg.model.pretrained = None  # no weights in tests
    else:
        assert cfg.model.backbone.init_cfg.checkpoint == 'checkpoints/resnet50_ibn_a_mmnorm.pth'
        cfg.model.backbone.init_cfg = None
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = cfg.visualizer.name = f'ibn_{name}'
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    model = runner.model
    backbone = model.backbone
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if IBN_CONFIGS[name] == 'a':
        assert isinstance(backbone.layer1[0].bn1, IBN) and isinstance(backbone.layer3[5].bn1, IBN)
        assert isinstance(backbone.layer1[0].bn1.BN, _BatchNorm) and type(
            backbone.layer4[0].bn1) is not IBN
    else:
        assert blocks_with_in(backbone) == {'layer1.2', 'layer2.3'} and type(
            backbone.bn1) is nn.InstanceNorm2d
    model.eval()
    with torch.no_grad():
        if cfg.default_scope == 'mmseg':
            from mmseg.structures import SegDataSample
            sample = SegDataSample(
                metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
            data = model.data_preprocessor(
                dict(
                    inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)],
                    data_samples=[sample]), False)
            logits = model(data['inputs'], data['data_samples'], mode='tensor')
            assert logits.shape == (1, 19, 64 // 4, 64 // 4) and torch.isfinite(logits).all()
            pred = model(data['inputs'], data['data_samples'], mode='predict')[0]
            assert pred.pred_sem_seg.data.shape == (1, 64, 64)
        else:
            from mmdet.structures import DetDataSample
            sample = DetDataSample(
                metainfo=dict(
                    img_shape=(64, 96),
                    ori_shape=(64, 96),
                    pad_shape=(64, 96),
                    scale_factor=(1.0, 1.0),
                    batch_input_shape=(64, 96)))
            data = model.data_preprocessor(
                dict(
                    inputs=[torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)],
                    data_samples=[sample]), False)
            feats = model.extract_feat(data['inputs'])
            assert [f.shape[1] for f in feats] == [256] * 5
            pred = model(data['inputs'], data['data_samples'], mode='predict')[0]
            assert pred.pred_instances.bboxes.shape[1] == 4
