"""AdaBN pools of mixed image sizes (as Mapillary's, after a keep-ratio resize): recalibrate_bn
regroups the loader's samples into batches of one size, so nothing is padded and padded pixels
never enter a statistic.

References: torch's own train-mode BN in float64 on ``torch.cat`` of the real features of the
batches of one size (one pass; each batch forwarded alone, no padding anywhere), and the layerwise
recalibration with batch size 1 (layerwise does not depend on the batching, so a padded pixel would
show as a difference).
"""
import copy
import json

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401
from mmnorm import recalibrate_bn

torch.set_num_threads(1)

# (height, width) on disk, interleaved; Resize(scale=(64, 32), keep_ratio=True) makes 32x45,
# 45x32 and 32x64: three input sizes, as Mapillary's landscape / portrait / wide frames
SIZES = [(40, 56), (56, 40), (40, 56), (30, 60), (40, 56), (56, 40), (40, 56), (40, 56)]
BATCH = 3

SEG_MODEL = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[120.0, 110.0, 100.0],
        std=[50.0, 55.0, 60.0],
        bgr_to_rgb=True),
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=8,
        base_channels=8,
        num_stages=2,
        strides=(1, 2),
        dilations=(1, 1),
        out_indices=(1, ),
        norm_cfg=dict(type='BN'),
        init_cfg=None),
    decode_head=dict(
        type='FCNHead',
        in_channels=16,
        channels=8,
        num_convs=1,
        concat_input=False,
        num_classes=3,
        norm_cfg=dict(type='BN'),
        loss_decode=dict(type='CrossEntropyLoss')),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))


def pool_loader_cfg(root, batch_size, labels=False):
    load = [dict(type='LoadAnnotations')] if labels else []
    return dict(
        batch_size=batch_size,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(
            type='BaseSegDataset',
            data_root=str(root),
            img_suffix='.png',
            seg_map_suffix='.png',
            data_prefix=dict(img_path='img', seg_map_path='ann'),
            metainfo=dict(classes=('a', 'b', 'c')),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(64, 32), keep_ratio=True), *load,
                dict(type='PackSegInputs')
            ]))


@pytest.fixture(scope='module')
def seg_pool(tmp_path_factory):
    """Target-looking images of mixed sizes (bright, low contrast, different per image)."""
    root = tmp_path_factory.mktemp('mixed')
    (root / 'img').mkdir()
    (root / 'ann').mkdir()  # read by the test loop's metric only, never by the pool
    rng = np.random.default_rng(4)
    for i, hw in enumerate(SIZES):
        img = np.clip(rng.uniform(140, 200, 3) + rng.normal(0, 25, (*hw, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / 'img' / f'{i:03d}.png')
        Image.fromarray(rng.integers(0, 3, hw).astype(np.uint8)).save(root / 'ann' / f'{i:03d}.png')
    return root


def seg_model():
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(SEG_MODEL)
    with torch.no_grad():  # statistics far from the pool's, as after source training
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def build_loader(cfg, scope):
    with DefaultScope.overwrite_default_scope(scope):
        return Runner.build_dataloader(cfg)


def bn_stats(model):
    return {
        n: (m.running_mean.clone(), m.running_var.clone())
        for n, m in model.named_modules() if isinstance(m, _BatchNorm)
    }


def one_size_batches(model, loader_of_one):
    """The preprocessed images (1, C, H, W) grouped by size in stream order and cut into batches
    of BATCH: what a loader of each size alone would give."""
    groups = {}
    for batch in loader_of_one:
        x = model.data_preprocessor(batch, False)['inputs']
        groups.setdefault(tuple(x.shape), []).append(x)
    return [
        torch.cat(images[i:i + BATCH]) for images in groups.values()
        for i in range(0, len(images), BATCH)
    ]


def train_mode_reference(model, batches):
    """Float64 mean / unbiased var of every BN input over the real features of ``batches``
    (torch BN in train mode, each batch forwarded alone)."""
    ref = copy.deepcopy(model).double().eval()
    feats, handles = {}, []
    for name, m in ref.named_modules():
        if isinstance(m, _BatchNorm):
            m.train()
            handles.append(
                m.register_forward_pre_hook(
                    lambda mod, inp, name=name: feats.setdefault(name, []).append(inp[0])))
    with torch.no_grad():
        for x in batches:
            ref(x.double(), mode='tensor')
    for h in handles:
        h.remove()
    return {
        n: (torch.cat([f.transpose(0, 1).flatten(1) for f in fs],
                      1).mean(1), torch.cat([f.transpose(0, 1).flatten(1) for f in fs], 1).var(1))
        for n, fs in feats.items()
    }


def test_hook_pool_of_mixed_sizes_one_pass_equals_torch_bn_on_real_pixels(seg_pool, tmp_path):
    """AdaBNHook's pool loader (batch 3, keep-ratio resize, three sizes): the mmseg preprocessor
    refuses its raw batches; the recalibrated statistics are torch BN's over the batches of one
    size, real pixels only."""
    model = seg_model()
    loader = build_loader(pool_loader_cfg(seg_pool, BATCH), 'mmseg')
    first = next(iter(loader))
    assert len({tuple(x.shape) for x in first['inputs']}) > 1
    with pytest.raises(AssertionError, match='image size in a batch should be the same'):
        model.data_preprocessor(first, False)

    batches = one_size_batches(model, build_loader(pool_loader_cfg(seg_pool, 1), 'mmseg'))
    assert sorted(x.shape[0] for x in batches) == [1, 2, 2, 3]  # 32x45: 3 + 2, 45x32: 2, 32x64: 1
    want = train_mode_reference(model, batches)

    # the hook in a real Runner test loop, its pool given as a dataloader config
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), tmp_path / 'init.pth')
    cfg = Config(
        dict(
            default_scope='mmseg',
            model=SEG_MODEL,
            work_dir=str(tmp_path / 'work'),
            load_from=str(tmp_path / 'init.pth'),
            test_dataloader=pool_loader_cfg(seg_pool, 1, labels=True),
            test_evaluator=dict(type='IoUMetric'),
            test_cfg=dict(type='TestLoop'),
            env_cfg=dict(dist_cfg=dict(backend='gloo')),
            default_hooks=dict(logger=dict(type='LoggerHook', interval=100)),
            custom_hooks=[
                dict(
                    type='AdaBNHook',
                    before='test',
                    dataloader=pool_loader_cfg(seg_pool, BATCH),
                    save_checkpoint='adabn.pth',
                    progress=False)
            ]))
    Runner.from_cfg(cfg).test()
    got = torch.load(tmp_path / 'work' / 'adabn.pth', weights_only=True)['state_dict']
    assert sorted(want) == sorted(bn_stats(model))
    for name, (mean, var) in want.items():
        torch.testing.assert_close(got[f'{name}.running_mean'].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[f'{name}.running_var'].double(), var, rtol=1e-5, atol=1e-6)


def test_layerwise_mixed_sizes_equals_batch_size_one(seg_pool):
    """Layerwise recalibration does not depend on the batching: batches of 3 mixed-size images give
    the statistics of batch size 1 (no padding anywhere)."""
    model = seg_model()
    by_three, by_one = copy.deepcopy(model), copy.deepcopy(model)
    recalibrate_bn(
        by_three,
        build_loader(pool_loader_cfg(seg_pool, BATCH), 'mmseg'),
        mode='layerwise',
        progress=False)
    recalibrate_bn(
        by_one,
        build_loader(pool_loader_cfg(seg_pool, 1), 'mmseg'),
        mode='layerwise',
        progress=False)
    three, one, before = bn_stats(by_three), bn_stats(by_one), bn_stats(model)
    for name in before:
        for got, want, old in zip(three[name], one[name], before[name]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(got, old)


DET_MODEL = """
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py']
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=1)))
"""


def test_mmdet_mixed_sizes_are_not_padded_to_each_other(tmp_path):
    """mmdet's preprocessor pads a batch to its largest image: landscape and portrait frames in one
    batch of 2 would each carry the other's padding. Regrouped, every image keeps only its own
    size-divisor padding (as at test time): layerwise statistics equal batch size 1's."""
    from mmdet.registry import MODELS
    root = tmp_path / 'coco'
    (root / 'images').mkdir(parents=True)
    rng = np.random.default_rng(5)
    images = []
    for i, (h, w) in enumerate([(60, 90), (90, 60), (60, 90)]):
        img = np.clip(rng.normal(170, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / 'images' / f'{i}.png')
        images.append(dict(id=i + 1, file_name=f'{i}.png', width=w, height=h))
    (root / 'pool.json').write_text(
        json.dumps(dict(images=images, annotations=[], categories=[dict(id=1, name='car')])))
    config = tmp_path / 'det.py'
    config.write_text(DET_MODEL)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(Config.fromfile(str(config)).model).eval()

    def loader(batch_size):
        return build_loader(
            dict(
                batch_size=batch_size,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=dict(
                    type='CocoDataset',
                    data_root=str(root),
                    ann_file='pool.json',
                    metainfo=dict(classes=('car', )),
                    data_prefix=dict(img='images/'),
                    test_mode=True,
                    pipeline=[dict(type='LoadImageFromFile'),
                              dict(type='PackDetInputs')])), 'mmdet')

    first = model.data_preprocessor(next(iter(loader(2))), False)['inputs']
    assert first.shape[-2:] == (96, 96)  # what one loader batch would be, padded
    by_two, by_one = copy.deepcopy(model), copy.deepcopy(model)
    recalibrate_bn(by_two, loader(2), mode='layerwise', progress=False)
    recalibrate_bn(by_one, loader(1), mode='layerwise', progress=False)
    two, one, before = bn_stats(by_two), bn_stats(by_one), bn_stats(model)
    assert len(before) == 20
    for name in before:
        for got, want, old in zip(two[name], one[name], before[name]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert not torch.allclose(got, old)


@pytest.mark.slow
def test_mapillary_adabn_config_with_mixed_sizes_under_tools_test(tmp_path):
    """The shipped Mapillary AdaBN config (pool batch 8, keep-ratio resize) through tools/test.py on
    Mapillary-layout frames in landscape, portrait and wide formats (the issue: mmseg's
    preprocessor refused the pool's first batch); pipelines at 1/4 scale for CPU time."""
    import cv2
    from conftest import run_tool
    from mmseg.registry import MODELS
    root = tmp_path / 'mapillary'
    rng = np.random.default_rng(6)
    for split, sizes in (('training', [(300, 400), (400, 300), (360, 640), (300, 400),
                                       (400, 300)]), ('validation', [(300, 400)])):
        (root / split / 'images').mkdir(parents=True)
        (root / split / 'v1.2' / 'labels').mkdir(parents=True)
        for i, hw in enumerate(sizes):
            cv2.imwrite(
                str(root / split / 'images' / f'{i}.jpg'),
                rng.integers(0, 255, (*hw, 3)).astype(np.uint8))
            Image.fromarray(rng.integers(0, 66, hw).astype(np.uint8)).save(root / split / 'v1.2' /
                                                                           'labels' / f'{i}.png')
    config = 'configs/adabn/deeplabv3plus_r50-d8-adabn_4xb2-40k_gta5-mapillary-512x512.py'
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), tmp_path / 'bn.pth')
    before = {k: v for k, v in model.state_dict().items() if k.endswith('running_var')}
    run_tool([
        'tools/test.py', config, tmp_path / 'bn.pth', '--work-dir', tmp_path / 'work',
        '--cfg-options', f'data_roots.mapillary={root}', 'custom_hooks.0.save_checkpoint=adabn.pth',
        'custom_hooks.0.progress=False', 'custom_hooks.0.dataloader.num_workers=0',
        'custom_hooks.0.dataloader.dataset.pipeline.1.scale=(256,128)',
        'test_dataloader.dataset.pipeline.1.scale=(256,128)', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False'
    ])
    after = torch.load(tmp_path / 'work' / 'adabn.pth', weights_only=True)['state_dict']
    changed = [k for k in before if not torch.allclose(after[k], before[k])]
    assert len(changed) > 50  # every BN the tensor-mode forward reaches


def test_bn_shift_input_moments_of_mixed_sizes_equal_batch_size_one(seg_pool):
    """bn_shift's input moments regroup a mixed-size pool as the recalibration does: the eval-mode
    moments over batches of 3 equal those over batches of 1 (mmseg refuses the raw batches)."""
    from mmnorm.analysis import input_moments
    model = seg_model()
    got = input_moments(model, build_loader(pool_loader_cfg(seg_pool, BATCH), 'mmseg'))
    want = input_moments(model, build_loader(pool_loader_cfg(seg_pool, 1), 'mmseg'))
    assert sorted(got) == sorted(want) and len(got) > 0
    for name, (count, mean, var) in want.items():
        assert got[name][0] == count
        # float32 features: a conv over 3 images rounds slightly differently from one over 1
        torch.testing.assert_close(got[name][1], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[name][2], var, rtol=1e-5, atol=1e-6)
