"""Deployment: ONNX export of every norm checked with onnxruntime, and folding AdaBN / RN / PBN
into plain BN that stock mmseg / mmdet load in a process that cannot import mmnorm."""
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import REPO, run_tool
from mmengine.config import Config

from mmnorm.deploy import build_model, export_onnx, fold_config, fold_norms
from mmnorm.deploy.onnx_export import DEFAULT_TOLERANCE, max_abs_diff, onnx_outputs, torch_outputs
from mmnorm.models.norms import IBN, PBN, RN, AdaBN

DEMO = 'configs/demo/deeplabv3plus_r18-mini-d8-{}_1xb8-1k_demo-gta5-cityscapes-64x128.py'


def randomise_statistics(model: nn.Module, seed: int = 1) -> nn.Module:
    """Distinct, non-trivial running statistics and affines in every norm buffer (as after
    training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith(('running_mean', 'running_mean_source', 'running_mean_target')):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif name.endswith(('running_var', 'running_var_source', 'running_var_target')):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.split('.')[-1] in ('weight', 'bias') and t.dim() == 1:
                t.copy_(
                    torch.randn(t.shape, generator=g) * 0.3 +
                    (1.0 if name.endswith('weight') else 0.0))
    return model


def norm_net(layer: nn.Module) -> nn.Module:
    return randomise_statistics(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer, nn.ReLU(), nn.Conv2d(8, 4, 1))).eval()


LAYERS = {
    'AdaBN-target': lambda: AdaBN(8, eval_domain='target'),
    'IBN': lambda: IBN(8),
    'PBN': lambda: PBN(8),
    'RN': lambda: RN(8),
}


@pytest.mark.parametrize('kind', list(LAYERS))
def test_onnx_export_of_every_norm_matches_onnxruntime(kind, tmp_path):
    model = norm_net(LAYERS[kind]())
    x = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    onnx_file = str(tmp_path / 'net.onnx')
    export_onnx(model, x, onnx_file, dynamic_batch=True)
    for batch in (x, torch.randn(5, 3, 12, 16)):
        diff, scale = max_abs_diff(
            torch_outputs(model, batch), onnx_outputs(onnx_file, batch.numpy()))
        assert diff <= 1e-5 * scale, (kind, diff)
    # the graph holds the eval statistics: a model with other statistics is far outside the
    # tolerance
    other = randomise_statistics(norm_net(LAYERS[kind]()), seed=7)
    other.load_state_dict({
        k: v
        for k, v in model.state_dict().items() if 'running' not in k
    },
                          strict=False)
    diff, scale = max_abs_diff(torch_outputs(other, x), onnx_outputs(onnx_file, x.numpy()))
    assert diff > 100 * DEFAULT_TOLERANCE * scale


@pytest.mark.parametrize('kind', ['AdaBN-target', 'PBN', 'RN'])
def test_fold_norms_is_the_eval_layer(kind):
    model = norm_net(LAYERS[kind]())
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        expected = model(x)
    folded = fold_norms(model)
    assert folded == {'1': type(LAYERS[kind]()).__name__}
    assert type(model[1]) is nn.BatchNorm2d
    assert set(model[1].state_dict()) == {
        'weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'
    }
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


def test_fold_reference_formula_for_adabn_target_domain():
    """The folded BN uses the *selected* domain's statistics and the shared affine: check against
    the formula."""
    layer = randomise_statistics(AdaBN(4, eval_domain='target')).eval()
    bn = fold_norms(nn.Sequential(layer))
    assert bn == {'0': 'AdaBN'}
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    t = layer.domain_bn('target')
    ref = ((x - t.running_mean.double().view(1, -1, 1, 1)) /
           torch.sqrt(t.running_var.double().view(1, -1, 1, 1) + layer.eps)
           ) * layer.weight.double().view(1, -1, 1, 1) + layer.bias.double().view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x.float()).double(), ref, rtol=1e-5, atol=1e-5)


def test_fold_refuses_ibn_and_batch_statistics():
    with pytest.raises(ValueError, match='IBN layers .* InstanceNorm'):
        fold_norms(nn.Sequential(IBN(8)))
    with pytest.raises(ValueError, match="AdaBN\\(test_mode='batch'\\) .* cannot be folded"):
        fold_norms(nn.Sequential(AdaBN(8, test_mode='batch')))


def test_fold_detector_in_process(tmp_path):
    """The mmdet path of the fold (the stock-mmdet subprocess check of it is a slow case)."""
    config = tmp_path / 'det_rn.py'
    config.write_text(DET_CONFIG.format(norm='RN', extra='', model_type='UDAFasterRCNN'))
    cfg = Config.fromfile(str(config))
    folded, changes = fold_config(cfg.to_dict(), 'mmdet')
    assert folded['model']['type'] == 'FasterRCNN' and folded['norm_cfg'] == dict(
        type='BN', requires_grad=True)
    assert folded['model']['backbone']['norm_cfg']['type'] == 'BN'
    assert 'custom_imports' not in folded
    model = randomise_statistics(build_model(cfg))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.extract_feat(x)
        assert len(fold_norms(model)) == 20
        from mmdet.registry import MODELS
        stock = MODELS.build(Config(folded).model).eval()
        stock.load_state_dict(model.state_dict(), strict=True)
        for a, b in zip(stock.extract_feat(x), expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not any(type(m).__module__.startswith('mmnorm') for m in stock.modules())


def test_fold_config_removes_every_mmnorm_type():
    import mmnorm  # noqa: F401
    cfg = Config.fromfile(osp.join(REPO, DEMO.format('rn-uda')))
    folded, changes = fold_config(cfg.to_dict(), 'mmseg')
    assert folded['model']['type'] == 'EncoderDecoder'
    assert folded['model']['backbone']['norm_cfg'] == dict(type='BN', requires_grad=True)
    for key in ('custom_imports', 'train_dataloader', 'val_dataloader'):
        assert key not in folded
    assert folded['test_dataloader']['dataset']['type'] == 'CityscapesDataset'  # stock: kept
    assert any('UDAEncoderDecoder -> EncoderDecoder' in c for c in changes)


# A process that cannot import mmnorm: stock mmseg / mmdet load the folded files and write their
# outputs.
STOCK_LOADER = r'''
import importlib.abc, sys
class NoMMNorm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'mmnorm':
            raise ImportError('mmnorm is not installed in this process')
sys.meta_path.insert(0, NoMMNorm())
try:
    import mmnorm  # noqa
    sys.exit('mmnorm could be imported')
except ImportError:
    pass
import torch
scope, config, checkpoint, inputs, out = sys.argv[1:6]
x = torch.load(inputs)
if scope == 'mmseg':
    from mmseg.apis import init_model
    model = init_model(config, checkpoint, device='cpu')
    with torch.no_grad():
        y = [model(x, None, mode='tensor')]
else:
    from mmdet.apis import init_detector
    model = init_detector(config, checkpoint, device='cpu')
    with torch.no_grad():
        y = list(model.extract_feat(x))
assert not any(m.__module__.startswith('mmnorm') for m in map(type, model.modules()))
torch.save(y, out)
'''


def stock_outputs(scope, config, checkpoint, x, tmp_path):
    loader = tmp_path / 'stock_loader.py'
    loader.write_text(STOCK_LOADER)
    torch.save(x, tmp_path / 'x.pt')
    env = {k: v for k, v in __import__('os').environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([
        sys.executable,
        str(loader), scope, config, checkpoint,
        str(tmp_path / 'x.pt'),
        str(tmp_path / 'y.pt')
    ],
                          cwd=str(tmp_path),
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return torch.load(tmp_path / 'y.pt', weights_only=True)


def save_random_checkpoint(cfg_path, out, cfg_options=None):
    cfg = Config.fromfile(cfg_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = randomise_statistics(build_model(cfg))
    torch.save(
        dict(
            meta=dict(dataset_meta=dict(classes=[f'c{i}' for i in range(19)])),
            state_dict=model.state_dict()), out)
    return cfg, model


def test_fold_tool_rn_uda_loads_in_stock_mmseg(tmp_path):
    config = osp.join(REPO, DEMO.format('rn-uda'))
    _, model = save_random_checkpoint(config, tmp_path / 'rn.pth')
    proc = run_tool([
        'tools/model_converters/fold_norms.py', config, tmp_path / 'rn.pth', '--out-dir',
        tmp_path / 'out', '--name', 'rn_bn'
    ])
    assert 'folded 22 layers (RN) into BatchNorm2d' in proc.stdout
    x = torch.randn(2, 3, 64, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(x, None, mode='tensor')
    got = stock_outputs('mmseg', str(tmp_path / 'out' / 'rn_bn.py'),
                        str(tmp_path / 'out' / 'rn_bn.pth'), x, tmp_path)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5)
    # nothing is overwritten without --overwrite
    again = run_tool([
        'tools/model_converters/fold_norms.py', config, tmp_path / 'rn.pth', '--out-dir',
        tmp_path / 'out', '--name', 'rn_bn'
    ],
                     check=False)
    assert again.returncode == 2 and 'pass --overwrite' in again.stderr


DET_CONFIG = """
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
default_scope = 'mmdet'
norm_cfg = dict(type={norm!r}, requires_grad=True{extra})
model = dict(
    type={model_type!r},
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        depth=18,
        base_channels=16,
        norm_cfg=norm_cfg,
        init_cfg=None,
        frozen_stages=-1,
        norm_eval=False),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=2)))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='PackDetInputs')
]
test_dataloader = dict(
    batch_size=1,
    dataset=dict(
        type='CocoDataset', metainfo=dict(classes=('car', 'person')), pipeline=test_pipeline))
"""


@pytest.mark.slow
def test_fold_tool_adabn_detector_loads_in_stock_mmdet(tmp_path):
    config = tmp_path / 'det_adabn.py'
    config.write_text(
        DET_CONFIG.format(norm='AdaBN', extra=", eval_domain='target'", model_type='FasterRCNN'))
    _, model = save_random_checkpoint(str(config), tmp_path / 'det.pth')
    run_tool([
        'tools/model_converters/fold_norms.py', config, tmp_path / 'det.pth', '--out-dir',
        tmp_path / 'out', '--name', 'det_bn', '--shape', 64, 96
    ])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.extract_feat(x)
    got = stock_outputs('mmdet', str(tmp_path / 'out' / 'det_bn.py'),
                        str(tmp_path / 'out' / 'det_bn.pth'), x, tmp_path)
    assert len(got) == len(expected) == 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pytorch2onnx_seg_ibn_and_check_refuses_other_weights(tmp_path):
    config = osp.join(REPO, DEMO.format('ibn-a'))
    save_random_checkpoint(config, tmp_path / 'ibn.pth')
    proc = run_tool([
        'tools/deployment/pytorch2onnx.py', config, tmp_path / 'ibn.pth', '--out',
        tmp_path / 'ibn.onnx'
    ])
    assert 'onnxruntime vs torch: max abs diff' in proc.stdout and ': OK' in proc.stdout
    diff = float(proc.stdout.split('max abs diff ')[1].split()[0])
    assert 0 <= diff < 1e-4
    import json
    sidecar = json.loads((tmp_path / 'ibn.onnx.json').read_text())
    assert sidecar['outputs'] == ['logits'] and sidecar['input_shape'] == [1, 3, 64, 128]
    assert sidecar['preprocessing']['mean'] == [123.675, 116.28, 103.53]
    # the same graph checked against other weights: above the tolerance -> exit 1
    save_random_checkpoint(config, tmp_path / 'other.pth')
    other = torch.load(tmp_path / 'other.pth', weights_only=True)
    for k, v in other['state_dict'].items():
        if k.endswith('running_var'):
            v.mul_(4)
    torch.save(other, tmp_path / 'other.pth')
    bad = run_tool([
        'tools/deployment/pytorch2onnx.py', config, tmp_path / 'other.pth', '--check',
        tmp_path / 'ibn.onnx'
    ],
                   check=False)
    assert bad.returncode == 1 and 'FAILED' in bad.stdout
    assert 'more than the tolerance' in bad.stderr
    # an existing --out is not replaced without --overwrite
    exists = run_tool([
        'tools/deployment/pytorch2onnx.py', config, tmp_path / 'ibn.pth', '--out',
        tmp_path / 'ibn.onnx'
    ],
                      check=False)
    assert exists.returncode == 2 and 'pass --overwrite' in exists.stderr


def test_pytorch2onnx_det_backbone_neck_pbn(tmp_path):
    config = tmp_path / 'det_pbn.py'
    config.write_text(DET_CONFIG.format(norm='PBN', extra='', model_type='FasterRCNN'))
    save_random_checkpoint(str(config), tmp_path / 'det.pth')
    proc = run_tool([
        'tools/deployment/pytorch2onnx.py', config, tmp_path / 'det.pth', '--out',
        tmp_path / 'd.onnx', '--shape', 64, 96, '--dynamic-batch'
    ])
    assert 'outputs: feat0, feat1, feat2, feat3, feat4' in proc.stdout
    assert 'over batch sizes [1, 3]: OK' in proc.stdout
    outs = onnx_outputs(str(tmp_path / 'd.onnx'), np.zeros((2, 3, 64, 96), np.float32))
    assert [o.shape for o in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6),
                                       (2, 32, 2, 3), (2, 32, 1, 2)]


@pytest.mark.slow
@pytest.mark.parametrize('norm', ['bn', 'adabn', 'ibn-a', 'ibn-b', 'pbn', 'rn-uda'])
def test_pytorch2onnx_every_demo_config(norm, tmp_path):
    config = osp.join(REPO, DEMO.format(norm))
    save_random_checkpoint(config, tmp_path / 'm.pth')
    proc = run_tool([
        'tools/deployment/pytorch2onnx.py', config, tmp_path / 'm.pth', '--out',
        tmp_path / 'm.onnx', '--dynamic-batch'
    ])
    assert ': OK' in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize('norm,model_type', [('RN', 'UDAFasterRCNN'), ('PBN', 'FasterRCNN')])
def test_fold_tool_detectors_load_in_stock_mmdet(norm, model_type, tmp_path):
    config = tmp_path / 'det.py'
    config.write_text(DET_CONFIG.format(norm=norm, extra='', model_type=model_type))
    _, model = save_random_checkpoint(str(config), tmp_path / 'det.pth')
    run_tool([
        'tools/model_converters/fold_norms.py', config, tmp_path / 'det.pth', '--out-dir',
        tmp_path / 'out', '--name', 'det_bn', '--shape', 64, 96
    ])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.extract_feat(x)
    got = stock_outputs('mmdet', str(tmp_path / 'out' / 'det_bn.py'),
                        str(tmp_path / 'out' / 'det_bn.pth'), x, tmp_path)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
