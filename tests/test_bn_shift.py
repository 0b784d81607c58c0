"""tools/analysis/bn_shift.py: zero distance for identical domains, positive for shifted ones,
every mmnorm layer."""
import csv

import pytest
import torch
from conftest import DEMO_CONFIG, run_tool, tiny_seg_options
from mmengine.registry import MODELS, DefaultScope

import mmnorm  # noqa: F401
from mmnorm.analysis import compare_moments, input_moments, mean_shift, symmetric_kl
from mmnorm.recalibration import find_bn_layers


def test_distances_closed_form():
    m1, v1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0])
    m2, v2 = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    # channel 0: 0.5*(1+1-2) + 0.5*1*(1+1) = 1; channel 1: 0.5*(4+0.25-2) + 0 = 1.125
    assert symmetric_kl(m1, v1, m2, v2, eps=0) == pytest.approx((1 + 1.125) / 2)
    assert mean_shift(m1, v1, m2, eps=0) == pytest.approx((1 + 0) / 2)
    assert symmetric_kl(m1, v1, m1, v1) == 0.0


def test_input_moments_match_torch_cat():
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    batches = [torch.randn(n, 3, 5, 5) for n in (3, 1, 4)]
    moments = input_moments(bn, batches)
    feats = torch.cat([bn[0](b) for b in batches]).detach().double()
    count, mean, var = moments['1']
    assert count == 8 * 25
    torch.testing.assert_close(mean, feats.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, feats.var(dim=(0, 2, 3), unbiased=False))


def mmnorm_norms():
    return sorted(n for n, c in MODELS.module_dict.items()
                  if c.__module__.startswith('mmnorm.models.norms.'))


@pytest.mark.parametrize('norm', ['BN'] + mmnorm_norms())
def test_every_layer_mmdet_backbone(norm):
    from mmdet.registry import MODELS as DET_MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = DET_MODELS.build(
            dict(type='ResNet', depth=18, base_channels=8, init_cfg=None, norm_cfg=dict(type=norm)))
    layers, _ = find_bn_layers(model)
    assert len(layers) >= 10
    source = [torch.rand(2, 3, 64, 64) for _ in range(2)]
    target = [0.3 * b + 0.6 for b in source]  # the same scenes, other contrast / brightness
    src = input_moments(model, source, layers=layers)
    same = compare_moments(src, input_moments(model, source, layers=layers))
    shifted = compare_moments(src, input_moments(model, target, layers=layers))
    assert max(kl for kl, _ in same.values()) == 0.0
    assert min(kl for kl, _ in shifted.values()) > 0.0
    assert min(s for _, s in shifted.values()) > 0.0


def test_tool_on_mmseg_model(tiny_demo_data, tmp_path):
    from conftest import REPO
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    cfg = Config.fromfile(f'{REPO}/{DEMO_CONFIG}')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    opts = tiny_seg_options(tiny_demo_data)
    out_same, out_shift = tmp_path / 'same', tmp_path / 'shift'
    run_tool([
        'tools/analysis/bn_shift.py', DEMO_CONFIG, ckpt, '--source', 'test', '--target', 'test',
        '--out-dir', out_same, '--cfg-options', *opts
    ])
    run_tool([
        'tools/analysis/bn_shift.py', DEMO_CONFIG, ckpt, '--source', 'val', '--target', 'test',
        '--out-dir', out_shift, '--cfg-options', *opts
    ])
    same = list(csv.DictReader(open(out_same / 'bn_shift.csv')))
    shift = list(csv.DictReader(open(out_shift / 'bn_shift.csv')))
    assert len(same) == len(shift) >= 30 and same[0]['layer'] == 'backbone.stem.1'
    assert all(float(r['kl_source_target']) == 0.0 for r in same)
    assert all(float(r['kl_source_target']) > 0.0 for r in shift)
    # AdaBN makes the normalising statistics match the target input (one-pass: up to the batch/eval
    # difference)
    before = sum(float(r['kl_running_target_before']) for r in shift)
    after = sum(float(r['kl_running_target_after']) for r in shift)
    assert after < 0.05 * before
    assert (out_shift / 'bn_shift.png').stat().st_size > 10000
    assert '| sym. KL src↔tgt |' in (out_shift / 'bn_shift.md').read_text()
