"""The compatibility sweep over the toolboxes' own shipped configs (tools/analysis/compat_sweep.py).

Default run: the norm replacement, the fast subset (Fast-SCNN, PointRend, RetinaNet R18 x BN and
every mmnorm norm: all pass), one named error, the table and the resumable JSON-lines output. The
full sweep (every config x norm: pass or a named mmnorm error, never another exception) is marked
slow; its table is docs/compatibility.md.
"""
import json

import pytest
from mmnorm_tools.compat_cases import run_case
from mmnorm_tools.compat_configs import (DET_CONFIGS, FAST_CASES, NORMS, SEG_CONFIGS, config_path,
                                         model_config, replace_norms, uda_type)
from tool_loader import load_tool

sweep = load_tool('analysis/compat_sweep')


def test_sweep_covers_enough_shipped_configs():
    assert len(SEG_CONFIGS) >= 20 and len(DET_CONFIGS) >= 15
    families = {name.split('/')[0] for name in SEG_CONFIGS + DET_CONFIGS}
    assert len(families) >= 35
    import os.path as osp
    missing = [
        n for s, names in (('mmseg', SEG_CONFIGS), ('mmdet', DET_CONFIGS)) for n in names
        if not osp.isfile(config_path(s, n))
    ]
    assert missing == []


def test_replace_norms_only_bn_and_syncbn():
    model = dict(
        backbone=dict(
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            stages=[dict(norm_cfg=dict(type='BN', eps=1e-3))]),
        neck=dict(norm_cfg=dict(type='GN', num_groups=32)),
        head=dict(norm_cfg=None))
    out = replace_norms(model, 'RN')
    assert out['backbone']['norm_cfg'] == dict(type='RN', requires_grad=True)
    assert out['backbone']['stages'][0]['norm_cfg'] == dict(type='RN', eps=1e-3)
    assert out['neck']['norm_cfg'] == dict(
        type='GN', num_groups=32) and out['head']['norm_cfg'] is None
    assert replace_norms(model, None)['backbone']['norm_cfg']['type'] == 'BN'


def test_model_config_switches_pretrained_weights_off():
    cfg = model_config('mmseg',
                       'deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'PBN')
    assert cfg.pretrained is None and cfg.data_preprocessor.size == (64, 64)
    assert cfg.backbone.norm_cfg.type == cfg.decode_head.norm_cfg.type == cfg.auxiliary_head.norm_cfg.type == 'PBN'
    det = model_config('mmdet', 'retinanet/retinanet_r18_fpn_1x_coco.py', 'IBN')
    assert det.backbone.init_cfg is None and det.backbone.norm_cfg.type == 'IBN'
    assert uda_type('mmseg', 'EncoderDecoder') == 'UDAEncoderDecoder'
    assert uda_type('mmdet',
                    'PAA') == 'UDASingleStageDetector'  # a plain SingleStageDetector subclass
    assert uda_type('mmdet', 'DINO') is None  # no wrapper registered


# Every norm on the smallest model (Fast-SCNN: 1x1 pyramid-pooling branches); the R50 PointRend (a
# UDA cascade with a source-only point head, recalibration through predict mode) and RetinaNet (a
# dense head in the split) with RN, the norm that exercises what they add, and their BN reference.
# Every other pair is in the slow full sweep.
FAST = [(scope, name, norm) for scope, name in FAST_CASES for norm in ('BN', ) + NORMS
        if 'fastscnn' in name or norm in ('BN', 'RN')]


@pytest.mark.parametrize('scope,name,norm', FAST)
def test_fast_subset_passes(scope, name, norm):
    record = run_case(scope, name, norm)
    assert record['status'] == 'pass', record
    assert (record['layers'] > 0) == (norm != 'BN')


def test_rn_where_rows_are_not_images_is_a_named_error():
    record = run_case('mmseg', 'isanet/isanet_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'RN')
    assert record['status'] == 'named' and record['step'] == 'train', record
    assert 'at decode_head.global_relation' in record[
        'error'] and "norm_cfg=dict(type='BN') there" in record['error']


def test_rn_in_detr_through_its_uda_wrapper():
    assert uda_type('mmdet', 'DETR') == 'UDADETR'
    record = run_case('mmdet', 'detr/detr_r50_8xb2-150e_coco.py', 'RN')
    assert record['status'] == 'pass' and record['layers'] > 0, record


def test_table_and_resumable_output(tmp_path, capsys):
    out = tmp_path / 'r.jsonl'
    args = ['--configs', f'mmseg:{FAST_CASES[0][1]}', '--norms', 'BN', 'RN', '--out', str(out)]
    assert sweep.main(args) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['norm'], r['status']) for r in first] == [('BN', 'pass'), ('RN', 'pass')]
    assert sweep.main(args) == 0 and out.read_text().count('\n') == 2  # done cases are skipped
    records = first + [
        dict(first[1], norm='IBN', status='named', step='train', error='ValueError: IBN(8) ...'),
        dict(first[1], norm='PBN', status='FAIL', step='predict', error='RuntimeError: boom')
    ]
    text = sweep.markdown(records)
    assert '| RN | 1 | 0 | 0 | 1 |' in text and '| IBN | 0 | 1 | 0 | 1 |' in text and '| PBN | 0 | 0 | 1 | 1 |' in text
    assert 'named error (train) [1]' in text and '**FAIL** (predict) [2]' in text
    assert f'1. `{FAST_CASES[0][1]}` × IBN (train): ValueError: IBN(8) ...' in text
    table = tmp_path / 'r.jsonl'
    assert sweep.main(['--table', str(table)]) == 0
    assert '| BN | 1 | 0 | 0 | 1 |' in capsys.readouterr().out
    doc = tmp_path / 'doc.md'
    doc.write_text('# Title\n\nintro\n')
    for _ in range(2):  # the second write replaces the block, the text around it stays
        assert sweep.main(['--table', str(table), '--markdown', str(doc)]) == 0
    written = doc.read_text()
    assert written.startswith('# Title\n\nintro\n') and written.count(sweep.BEGIN) == 1
    assert '| BN | 1 | 0 | 0 | 1 |' in written and written.rstrip().endswith(sweep.END)
    with pytest.raises(SystemExit, match='not in the sweep'):
        sweep.main(['--configs', 'mmseg:nope.py'])


@pytest.mark.slow
@pytest.mark.parametrize('scope,name,norm', sweep.all_cases())
def test_full_sweep(scope, name, norm):
    """Every shipped config x norm: pass, or a named mmnorm error (docs/compatibility.md lists
    the reasons)."""
    record = run_case(scope, name, norm)
    assert record['status'] in ('pass', 'named'), record
