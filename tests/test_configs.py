"""Every config under configs/ loads, builds its model and runs one train and one test iteration on
CPU.

The configs run unchanged except for generic, test-side overrides (the `--cfg-options` a user would
pass): every ``data/...`` path is re-pointed at the session's fixture copies of the real layouts,
images and crops are shrunk to 64x64, batches to 2 (train) / 1 (test), pretrained weights dropped,
checkpoint saving off. The overrides walk the whole config, so configs added later (other norms, UDA
wrappers with paired datasets) are covered without changes here. A config that still fails is a
finding about that config.
"""
import glob
import math
import os.path as osp
import re

import pytest
import torch
from conftest import REPO
from dataset_fixtures import build_fixture_data
from mmengine.config import Config
from mmengine.runner import Runner
from torch.nn.modules.batchnorm import _BatchNorm

SIZE = (64, 64)
CONFIGS = sorted(
    p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in osp.relpath(p, REPO).split(osp.sep))


@pytest.fixture(scope='session')
def fixture_root(tmp_path_factory):
    return build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data')


def _shrink_transform(t: dict) -> dict:
    """Smaller sizes in one pipeline transform (any toolbox, any type)."""
    t = dict(t)
    if 'scale' in t and t['scale'] is not None:
        t['scale'] = SIZE
    if 'scales' in t:
        t['scales'] = [SIZE]
    if 'crop_size' in t:
        t['crop_size'] = SIZE
    if t.get('type') == 'TestTimeAug':
        t['transforms'] = [[_shrink_transform(x) for x in group] for group in t['transforms']]
    return t


def override(node, data_root: str, key: str = ''):
    """Returns ``node`` with the test overrides applied (recursively, on plain dicts/lists)."""
    if isinstance(node, str):
        # Every dataset root, annotation file and evaluator ann_file of the configs lives under
        # data/.
        return osp.join(data_root, node[len('data/'):]) if node.startswith('data/') else node
    if isinstance(node, (list, tuple)):
        items = [override(x, data_root, key) for x in node]
        if key == 'pipeline' or key.endswith('_pipeline'):
            items = [_shrink_transform(x) if isinstance(x, dict) else x for x in items]
        return type(node)(items) if isinstance(node, tuple) else items
    if not isinstance(node, dict):
        return node
    out = {}
    if 'dataset' in node and 'batch_size' in node:  # any dataloader (incl. those of hooks)
        node = dict(
            node, batch_size=min(node['batch_size'], 2), num_workers=0, persistent_workers=False)
    for k, v in node.items():
        if k == 'pretrained' and isinstance(v, str):
            v = None  # no downloads in tests
        elif k == 'init_cfg' and v is not None:
            inits = v if isinstance(v, list) else [v]
            inits = [
                i for i in inits if not (isinstance(i, dict) and i.get('type') == 'Pretrained')
            ]
            v = None if not inits else (inits if isinstance(v, list) else inits[0])
        else:
            v = override(v, data_root, k)
        out[k] = v
    if str(out.get('type', '')).endswith('DataPreProcessor') and out.get('size') is not None:
        out['size'] = SIZE
    if out.get('type') == 'ContinualDataset':  # one round of a continual stream (not 10)
        out['rounds'] = 1
    if out.get('type') == 'MixVisionTransformer':  # SegFormer-B5's 3+6+40+3 blocks: 1 per
        out['num_layers'] = [1] * len(out['num_layers'])  # stage (same widths, same head)
        # and no spatial reduction: its stride-8 conv needs >= 32 pixels a side at stage 1,
        # which CoTTA's 0.5 scale of a 64-pixel test image does not have
        out['sr_ratios'] = [1] * len(out['num_layers'])
    if out.get('type') == 'ClassUniformDataset':  # tiles that fit the fixture frames (32x48)
        out['tile_size'] = 16
    if out.get('mode') == 'slide':  # segmentor test_cfg
        out.update(crop_size=SIZE, stride=(SIZE[0] // 2, SIZE[1] // 2))
    if 'score_thr' in out and 'nms' in out:  # detector test_cfg: a 1-iteration single-stage
        out['score_thr'] = 0.0  # model scores ~0.01 (focal prior), keep its boxes
    return out


def shrunk_config(path: str, data_root: str, work_dir: str, raw: Config = None) -> Config:
    """The config at ``path`` (or its loaded ``raw`` copy) with every override applied, for
    ``Runner.from_cfg``."""
    cfg = override((raw or Config.fromfile(path)).to_dict(), data_root)
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if loader:
            loader['batch_size'] = min(loader.get('batch_size', 1), 2) if split == 'train' else 1
    loop = cfg['train_cfg']
    if 'max_iters' in loop:
        loop.update(max_iters=1, val_interval=10**6)
    elif 'max_epochs' in loop:
        loop.update(max_epochs=1, val_interval=10**6)
    cfg['load_from'] = None
    cfg['resume'] = False
    hooks = cfg.setdefault('default_hooks', {})
    hooks['checkpoint'] = None
    if hooks.get('logger'):
        hooks['logger']['interval'] = 1
    for hook in cfg.get('custom_hooks', []):
        if hook.get('type') == 'AdaBNHook' and hook.get('num_samples'):
            hook[
                # the fixture pool holds a few images, not the config's sample budget
                'num_samples'] = None
        if hook.get('type') == 'ISWStatisticsHook':  # the statistics pass inside the 1 iteration
            hook.update(after_iter=0, num_images=2, trials=2)
    name = osp.splitext(osp.basename(path))[0]
    cfg.update(
        work_dir=work_dir, experiment_name=name, log_level='WARNING', randomness=dict(seed=0))
    if cfg.get('visualizer'):
        cfg['visualizer']['name'] = name  # one visualizer instance per config
    return Config(cfg)


def states_protocol(path: str) -> bool:
    """'protocol' in a comment of the config or of a config it names in ``_base_`` (relative
    paths)."""
    text = open(path).read()
    if re.search(r'#.*protocol', text, re.IGNORECASE):
        return True
    bases = re.findall(r"['\"](\.\.?/[^'\"]+\.py)['\"]",
                       text.split('_base_', 1)[-1].split('\n\n', 1)[0])
    return any(states_protocol(osp.normpath(osp.join(osp.dirname(path), b))) for b in bases)


def test_configs_are_collected():
    names = {osp.relpath(p, osp.join(REPO, 'configs')) for p in CONFIGS}
    for must in ('baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-512x512.py',
                 'baseline/faster-rcnn_r50_fpn_2xb4-20k_sim10k-cityscapes.py'):
        assert must in names
    assert not any(n.startswith('_base_') for n in names)


def test_states_protocol_follows_relative_bases(tmp_path):
    (tmp_path / 'a.py').write_text("# Protocol: 8 GPUs\nx = 1\n")
    (tmp_path / 'b.py').write_text("_base_ = ['./a.py']\ny = 2\n")
    (tmp_path / 'c.py').write_text("# a config\n_base_ = 'mmseg::_base_/default_runtime.py'\n")
    assert states_protocol(str(tmp_path / 'b.py')) and not states_protocol(str(tmp_path / 'c.py'))


def test_override_repoints_every_data_path():
    cfg = {
        'train_dataloader': {
            'dataset': {
                'type': 'Wrapper',
                'source': {
                    'data_root': 'data/gta5/'
                },
                'target': {
                    'data_root': 'data/cityscapes/',
                    'pipeline': [dict(type='RandomCrop', crop_size=(512, 512))]
                }
            }
        },
        'val_evaluator': {
            'ann_file': 'data/cityscapes/annotations/x.json'
        },
        'model': {
            'pretrained': 'open-mmlab://resnet50_v1c',
            'backbone': {
                'init_cfg': dict(type='Pretrained', checkpoint='torchvision://resnet50')
            },
            'data_preprocessor': dict(type='SegDataPreProcessor', size=(512, 512)),
            'test_cfg': dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
        }
    }
    out = override(cfg, '/fix')
    ds = out['train_dataloader']['dataset']
    assert ds['source']['data_root'] == '/fix/gta5/' and ds['target'][
        'data_root'] == '/fix/cityscapes/'
    assert ds['target']['pipeline'][0]['crop_size'] == SIZE
    assert out['val_evaluator']['ann_file'] == '/fix/cityscapes/annotations/x.json'
    assert out['model']['pretrained'] is None and out['model']['backbone']['init_cfg'] is None
    assert out['model']['data_preprocessor']['size'] == SIZE
    assert out['model']['test_cfg'] == dict(mode='slide', crop_size=SIZE, stride=(32, 32))


@pytest.fixture
def plain_config_text(monkeypatch):
    """mmengine's Runner formats the whole config with yapf five times per run, only for its log
    and the dumped copy (about 1.5 s of a 5 s run here); an unformatted text serves the same
    purpose in these tests."""
    monkeypatch.setattr(Config, 'pretty_text', property(lambda self: repr(self.to_dict())))


def is_target_variant(path: str) -> bool:
    """A config whose model and hooks another config of its folder already trains in the default
    run: per folder and model family (DeepLabV3+, Faster R-CNN, RetinaNet) the plainest config
    (the main GTA5 -> Cityscapes / Cityscapes -> Foggy protocol, TENT with safeguards for TTA, the
    shortest name) trains by default; the others — other target / source sets (BDD100K,
    Mapillary, SYNTHIA, Sim10k), other test-time methods, stacked or head variants whose layers
    their own tests cover (test_uda_heads, test_perturb_resnet, test_ibn_resnet) — train in slow
    runs. Every config still loads and names its protocol in the default run
    (test_every_config_loads)."""
    return path not in DEFAULT_TRAINED


def _model_family(path: str) -> tuple:
    rel = osp.relpath(path, osp.join(REPO, 'configs'))
    return rel.split(osp.sep)[0], osp.basename(rel).split('_')[0]


def _plainness(path: str) -> tuple:
    name = osp.basename(path)
    other_data = any(d in name for d in ('bdd100k', 'mapillary', 'synthia', 'sim10k'))
    return other_data, 'tta' in name and 'tent-safe' not in name, len(name)


DEFAULT_TRAINED = {
    min((p for p in CONFIGS if _model_family(p) == family), key=_plainness)
    for family in {_model_family(p)
                   for p in CONFIGS}
}


def test_every_config_loads():
    for path in CONFIGS:
        raw = Config.fromfile(path)
        assert raw.get('custom_imports', {}).get('imports') == ['mmnorm'], path
        assert raw.get('default_scope') in ('mmseg', 'mmdet'), path
        assert 'norm_cfg' in raw and states_protocol(path), path
    # every method folder keeps at least one config that trains in the default run
    folders = {osp.relpath(p, osp.join(REPO, 'configs')).split(osp.sep)[0] for p in CONFIGS}
    trained = {
        osp.relpath(p, osp.join(REPO, 'configs')).split(osp.sep)[0]
        for p in CONFIGS if not is_target_variant(p)
    }
    assert trained == folders


@pytest.mark.parametrize(
    'path',
    [pytest.param(p, marks=pytest.mark.slow) if is_target_variant(p) else p for p in CONFIGS],
    ids=[osp.relpath(p, osp.join(REPO, 'configs')) for p in CONFIGS])
def test_config_trains_and_tests_one_iteration(path, fixture_root, tmp_path, plain_config_text):
    raw = Config.fromfile(path)
    assert raw.get('custom_imports', {}).get('imports') == ['mmnorm'], 'config must import mmnorm'
    assert raw.get('default_scope') in ('mmseg', 'mmdet')
    assert 'norm_cfg' in raw, 'config must have a top-level norm_cfg'
    assert states_protocol(
        path), 'config (or the config it inherits) must state its protocol in a comment'
    cfg = shrunk_config(path, fixture_root, str(tmp_path), raw)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter >= 1
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss), f'train loss {loss}'
    adabn = any(h.get('type') == 'AdaBNHook' for h in raw.get('custom_hooks', []))
    if adabn:
        first_bn = next(m for m in runner.model.modules()
                        if isinstance(m, _BatchNorm) and m.track_running_stats)
        trained_mean = first_bn.running_mean.clone()
    metrics = runner.test()
    if adabn:
        assert not torch.equal(first_bn.running_mean, trained_mean), 'AdaBNHook did not recalibrate'
    if raw.default_scope == 'mmseg' and raw.test_evaluator.get('type') == 'MultiTargetIoUMetric':
        names = list(raw.test_dataloader.dataset.datasets)  # one mIoU per target and their mean
        assert all(math.isfinite(metrics[f'{n}/mIoU']) for n in names + ['mean']), metrics
    elif raw.default_scope == 'mmseg':
        assert math.isfinite(metrics['mIoU'])  # NaN: no labelled pixel reached the metric
        if raw.test_evaluator.get('type') == 'SubsetIoUMetric':
            assert {'mIoU16', 'mIoU13'} <= set(metrics)
    else:
        assert metrics['coco/bbox_mAP_50'] >= 0  # COCO gives -1 when it finds no ground truth
