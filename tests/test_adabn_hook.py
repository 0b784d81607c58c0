"""AdaBNHook in real mmengine Runners: a tiny mmseg EncoderDecoder (ResNet + FCN head) on images
written to disk, the test loop, training-time validation with EMAHook, tools/test.py and
tools/dist_test.sh (2 gloo processes), and an mmdet Faster R-CNN under tools/test.py.

References: torch's own train-mode BN on the same preprocessed batches in float64 (the one-pass
order), the written statistics being a fixed point of an eval-mode float64 forward (the layerwise
order), and the single-process run.
"""
import copy
import json
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import free_port, run_tool
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

import mmnorm  # noqa: F401
from mmnorm.engine.hooks import AdaBNHook
from mmnorm.models.norms import AdaBN

torch.set_num_threads(1)

SEG_CONFIG = """
default_scope = 'mmseg'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
data_root = {root!r}
norm_cfg = dict(type={norm!r})
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[120.0, 110.0, 100.0], std=[50.0, 55.0, 60.0],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(40, 56)),
    backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8, num_stages=2, strides=(1, 2),
                  dilations=(1, 1), out_indices=(1, ), norm_cfg=norm_cfg, init_cfg=None),
    decode_head=dict(type='FCNHead', in_channels=16, channels=8, num_convs=1, concat_input=False, in_index=0,
                     num_classes=3, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.png', seg_map_suffix='.png',
               metainfo=dict(classes=('a', 'b', 'c'), palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]]))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(dataset, data_prefix=dict(img_path='img/train', seg_map_path='ann/train'),
                                     pipeline=train_pipeline))
test_dataloader = dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                       dataset=dict(dataset, data_prefix=dict(img_path='img/test', seg_map_path='ann/test'),
                                    pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
val_evaluator = test_evaluator
test_cfg = dict(type='TestLoop')
val_cfg = dict(type='ValLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.05, momentum=0.9))
param_scheduler = []
default_hooks = dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', interval=1000))
log_processor = dict(by_epoch=False, window_size=1)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
custom_hooks = {hooks!r}
"""


def write_split(root, split, num, seed):
    """Target-looking images (bright, low contrast; different per image) and 3-class label maps."""
    rng = np.random.default_rng(seed)
    for folder in ('img', 'ann'):
        (root / folder / split).mkdir(parents=True)
    for i in range(num):
        base = rng.uniform(140, 200, size=3)
        img = np.clip(base + rng.normal(0, 25, size=(40, 56, 3)), 0, 255).astype(np.uint8)
        label = rng.integers(0, 3, size=(10, 14)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
        Image.fromarray(img).save(root / 'img' / split / f'{i:03d}.png')
        Image.fromarray(label).save(root / 'ann' / split / f'{i:03d}.png')


@pytest.fixture(scope='module')
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('seg')
    write_split(root, 'train', 4, seed=1)
    write_split(root, 'test', 7, seed=2)  # 7: uneven over 2 ranks
    return root


def seg_config(root, tmp_path, hooks, norm='BN', name='tiny_seg.py'):
    path = tmp_path / name
    path.write_text(SEG_CONFIG.format(root=str(root), hooks=hooks, norm=norm))
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'work')
    return cfg, path


def save_initial_checkpoint(cfg, path):
    """Weights of a freshly built model with non-trivial BN statistics (as after source
    training)."""
    from mmseg.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return model


def bn_names(model):
    return [
        n for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
    ]


def preprocessed_batches(model, loader):
    return [model.data_preprocessor(batch, False)['inputs'] for batch in loader]


def float64_reference(model, inputs, names, bn_train):
    """Float64 mean / unbiased var of each BN input over all batches, torch BN in train or eval
    mode."""
    ref = copy.deepcopy(model).double()
    ref.eval()
    modules = dict(ref.named_modules())
    feats = {n: [] for n in names}
    handles = [
        modules[n].register_forward_pre_hook(lambda m, i, n=n: feats[n].append(i[0])) for n in names
    ]
    for n in names:
        modules[n].train(bn_train)
    with torch.no_grad():
        for x in inputs:
            ref(x.double(), mode='tensor')
    for h in handles:
        h.remove()
    return {
        n: (torch.cat(f).mean((0, 2, 3)), torch.cat(f).var((0, 2, 3)))
        for n, f in feats.items()
    }


def assert_stats(model, ref, names, rtol=1e-5):
    modules = dict(model.named_modules())
    for n in names:
        torch.testing.assert_close(
            modules[n].running_mean.double(), ref[n][0], rtol=rtol, atol=1e-6, msg=n)
        torch.testing.assert_close(
            modules[n].running_var.double(), ref[n][1], rtol=rtol, atol=1e-6, msg=n)


def test_hook_in_runner_test_loop_writes_closed_form_statistics(seg_root, tmp_path):
    hooks = [dict(type='AdaBNHook', dataloader='test', save_checkpoint='adabn.pth', progress=False)]
    cfg, _ = seg_config(seg_root, tmp_path, hooks)
    initial = save_initial_checkpoint(cfg, tmp_path / 'init.pth')
    cfg.load_from = str(tmp_path / 'init.pth')
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert 'mIoU' in metrics
    model = runner.model
    names = bn_names(model)
    assert len(names) == 11  # stem, 2 stages x 2 BasicBlocks x 2, 1 downsample, the FCN conv
    inputs = preprocessed_batches(model, runner.test_dataloader)
    assert len(inputs) == 7
    assert_stats(model, float64_reference(initial, inputs, names, bn_train=True), names)
    # the saved checkpoint is a plain, weights-only loadable dict holding the recalibrated
    # statistics
    saved = torch.load(osp.join(cfg.work_dir, 'adabn.pth'), weights_only=True)
    assert saved['meta']['adabn']['mode'] == 'one_pass'
    for n in names:
        assert torch.equal(saved['state_dict'][f'{n}.running_var'],
                           dict(model.named_modules())[n].running_var)
        assert not torch.allclose(saved['state_dict'][f'{n}.running_var'],
                                  dict(initial.named_modules())[n].running_var)


class Probe(Hook):
    """Records what the model looks like at the end of training, during validation and after it."""
    priority = 'LOWEST'

    def __init__(self):
        self.records = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.records['train'] = copy.deepcopy(runner.model.state_dict())

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        if batch_idx == 0:
            model = runner.model
            loader = runner.val_loop.dataloader
            self.records['val'] = copy.deepcopy(model.state_dict())
            self.records['val_reference'] = float64_reference(
                model, preprocessed_batches(model, loader), bn_names(model), bn_train=False)

    def after_val_epoch(self, runner, metrics=None):
        self.records['after_val'] = copy.deepcopy(runner.model.state_dict())


def test_val_during_training_uses_ema_weights_and_restores_training_statistics(seg_root, tmp_path):
    hooks = [
        dict(type='EMAHook', momentum=0.5, begin_iter=0),
        dict(type='AdaBNHook', dataloader='val', before='val', mode='layerwise', progress=False)
    ]
    cfg, _ = seg_config(seg_root, tmp_path, hooks)
    runner = Runner.from_cfg(cfg)
    probe = Probe()
    runner.register_hook(probe)
    runner.train()
    rec = probe.records
    names = bn_names(runner.model)
    conv = 'backbone.conv1.weight'
    assert not torch.equal(rec['val'][conv], rec['train'][conv])  # EMA weights were swapped in ...
    ref = rec['val_reference']  # ... and the statistics are the fixed point of the EMA-weight model
    for n in names:
        torch.testing.assert_close(
            rec['val'][f'{n}.running_mean'].double(), ref[n][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            rec['val'][f'{n}.running_var'].double(), ref[n][1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(rec['val'][f'{n}.running_var'], rec['train'][f'{n}.running_var'])
    for key, value in rec['after_val'].items():  # training weights and training statistics are back
        assert torch.equal(value, rec['train'][key]), key


def test_hook_selects_adabn_domain_and_recalibrates_it(seg_root, tmp_path):
    hooks = [
        dict(type='AdaBNHook', dataloader='test', domain='target', num_samples=3, progress=False)
    ]
    cfg, _ = seg_config(seg_root, tmp_path, hooks, norm='AdaBN')
    runner = Runner.from_cfg(cfg)
    initial = copy.deepcopy(runner.model)
    runner.test()
    layers = {n: m for n, m in runner.model.named_modules() if isinstance(m, AdaBN)}
    assert len(layers) == 11
    inputs = preprocessed_batches(runner.model, runner.test_dataloader)[:3]
    # reference: torch's train-mode BN (an undeclared AdaBN training batch is exactly BN) on the
    # first 3 images
    ref = float64_reference(initial, inputs, list(layers), bn_train=True)
    init_layers = dict(initial.named_modules())
    for n, m in layers.items():
        assert m.eval_domain == 'target'
        assert torch.equal(
            m.domain_bn('source').running_var, init_layers[n].domain_bn('source').running_var)
        torch.testing.assert_close(
            m.domain_bn('target').running_mean.double(), ref[n][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            m.domain_bn('target').running_var.double(), ref[n][1], rtol=1e-5, atol=1e-6)


def test_hook_bad_inputs_name_the_value(seg_root, tmp_path):
    with pytest.raises(TypeError, match=r'dataloader must be .*got int 42'):
        AdaBNHook(dataloader=42)
    with pytest.raises(ValueError, match=r"dataloader must be .*got 'train'"):
        AdaBNHook(dataloader='train')
    with pytest.raises(ValueError, match=r'num_samples must be a positive int or None, got 0'):
        AdaBNHook(num_samples=0)
    with pytest.raises(ValueError, match=r'num_samples must be a positive int or None, got -5'):
        AdaBNHook(num_samples=-5)
    with pytest.raises(
            ValueError, match=r"before must be \"val\", \"test\" or both, got \('train',\)"):
        AdaBNHook(before='train')
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'ema'"):
        AdaBNHook(mode='ema')
    with pytest.raises(ValueError, match=r"test_mode must be one of .*got 'tent'"):
        AdaBNHook(test_mode='tent')
    hooks = [dict(type='AdaBNHook', domain='cityscapes', progress=False)]
    cfg, _ = seg_config(seg_root, tmp_path, hooks, norm='AdaBN')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(
            ValueError,
            match=r"AdaBNHook domain: unknown domain 'cityscapes'; this AdaBN layer has "
            r"domains \('source', 'target'\)"):
        runner.test()


def test_hook_domain_on_a_model_without_adabn_and_an_empty_folder_are_named(seg_root, tmp_path):
    cfg, _ = seg_config(seg_root, tmp_path,
                        [dict(type='AdaBNHook', domain='target', progress=False)])
    with pytest.raises(ValueError, match=r"AdaBNHook\(domain='target'.*no AdaBN layer"):
        Runner.from_cfg(cfg).test()
    empty = tmp_path / 'empty'
    loader = dict(
        batch_size=1,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(
            type='BaseSegDataset',
            data_root=str(empty),
            img_suffix='.png',
            seg_map_suffix='.png',
            data_prefix=dict(img_path='img', seg_map_path='ann'),
            pipeline=[]))
    cfg, _ = seg_config(
        seg_root,
        tmp_path, [dict(type='AdaBNHook', dataloader=loader, progress=False)],
        name='e.py')
    with pytest.raises(
            ValueError, match=rf"{empty / 'img'} does not exist"):  # the folder itself is missing
        Runner.from_cfg(cfg).test()
    for folder in ('img', 'ann'):
        (empty / folder).mkdir(parents=True)
    with pytest.raises(
            ValueError,
            match=rf"AdaBNHook: the dataloader config found no sample in data_root='{empty}'"
            r".*point data_root / data_prefix / ann_file at the target images"):
        Runner.from_cfg(cfg).test()


def test_tools_test_and_dist_test_equal_in_process_run(seg_root, tmp_path):
    """tools/test.py (1 process) and tools/dist_test.sh (2 gloo processes, 7 images: rank 1 gets
    a padded repeat) write the same recalibrated checkpoint; batch size 1 makes the one-pass
    order independent of the sharding."""
    hooks = [dict(type='AdaBNHook', dataloader='test', save_checkpoint='adabn.pth', progress=False)]
    cfg, config = seg_config(seg_root, tmp_path, hooks)
    initial = save_initial_checkpoint(cfg, tmp_path / 'init.pth')
    single, dist = tmp_path / 'single', tmp_path / 'dist'
    run_tool(['tools/test.py', config, tmp_path / 'init.pth', '--work-dir', single])
    run_tool(['tools/dist_test.sh', config, tmp_path / 'init.pth', 2, '--work-dir', dist],
             PORT=free_port())
    one = torch.load(single / 'adabn.pth', weights_only=True)['state_dict']
    two = torch.load(dist / 'adabn.pth', weights_only=True)['state_dict']
    names = bn_names(initial)
    # the padded repeat on rank 1 (DefaultSampler round_up: image 0 again) is not counted: the
    # statistics are those of the 7 images, not of the 8 the two ranks forwarded
    inputs = preprocessed_batches(initial, Runner.from_cfg(cfg).test_dataloader)
    assert len(inputs) == 7
    seven = float64_reference(initial, inputs, names[:1], bn_train=True)[names[0]]
    eight = float64_reference(initial, inputs + inputs[:1], names[:1], bn_train=True)[names[0]]
    stem = [two[f'{names[0]}.{buf}'].double() for buf in ('running_mean', 'running_var')]
    for got, want, padded in zip(stem, seven, eight):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, padded, rtol=1e-5, atol=1e-6)
    for n in names:
        for buf in ('running_mean', 'running_var'):
            torch.testing.assert_close(two[f'{n}.{buf}'], one[f'{n}.{buf}'], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one[f'{names[-1]}.running_mean'],
                              dict(initial.named_modules())[names[-1]].running_mean)


DET_CONFIG = """
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
data_root = {root!r}
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(depth=18, base_channels=16, init_cfg=None),  # norm_eval=True, frozen_stages=1 (mmdet default)
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=1)))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 64), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                       'scale_factor'))]
test_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=('car', )),
                 ann_file='test.json', data_prefix=dict(img='images/'), test_mode=True, pipeline=test_pipeline))
test_evaluator = dict(type='CocoMetric', ann_file=data_root + '/test.json', metric='bbox')
test_cfg = dict(type='TestLoop')
custom_hooks = [dict(type='AdaBNHook', dataloader='test', before='test', save_checkpoint='adabn.pth')]
"""


def test_mmdet_faster_rcnn_under_tools_test(tmp_path):
    root = tmp_path / 'coco'
    (root / 'images').mkdir(parents=True)
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(5):
        img = np.clip(rng.normal(170, 30, size=(60, 90, 3)), 0, 255).astype(np.uint8)
        img[10:30, 20:50] = (200, 30, 30)
        Image.fromarray(img).save(root / 'images' / f'{i}.jpg', quality=95)
        images.append(dict(id=i + 1, file_name=f'{i}.jpg', width=90, height=60))
        anns.append(
            dict(
                id=i + 1,
                image_id=i + 1,
                category_id=1,
                bbox=[20.0, 10.0, 30.0, 20.0],
                area=600.0,
                iscrowd=0))
    (root / 'test.json').write_text(
        json.dumps(dict(images=images, annotations=anns, categories=[dict(id=1, name='car')])))
    config = tmp_path / 'faster-rcnn_r18-tiny.py'
    config.write_text(DET_CONFIG.format(root=str(root)))
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'inproc')
    runner = Runner.from_cfg(cfg)
    model = runner.model
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), tmp_path / 'init.pth')
    # the in-process reference: recalibrate_bn on the same model and loader
    expected = copy.deepcopy(model)
    mmnorm.recalibrate_bn(expected, runner.test_dataloader, progress=False)
    run_tool(['tools/test.py', config, tmp_path / 'init.pth', '--work-dir', tmp_path / 'work'])
    saved = torch.load(tmp_path / 'work' / 'adabn.pth', weights_only=True)['state_dict']
    names = bn_names(model)
    assert len(names) == 20  # every BN of the norm_eval / frozen_stages ResNet-18
    for n in names:
        torch.testing.assert_close(saved[f'{n}.running_var'],
                                   dict(expected.named_modules())[n].running_var)
        assert not torch.allclose(saved[f'{n}.running_var'],
                                  dict(model.named_modules())[n].running_var)
