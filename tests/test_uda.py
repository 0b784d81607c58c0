"""Source+target training: DomainPairDataset, UDAEncoderDecoder (mmseg), UDAFasterRCNN (mmdet), in
process on real datasets written to disk and as 2-process gloo runs through tools/dist_train.sh."""
import copy
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import REPO, free_port, run_tool
from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS, DefaultScope
from mmengine.structures import InstanceData
from PIL import Image

import mmnorm  # noqa: F401
from mmnorm.datasets import DomainPairDataset
from mmnorm.models.norms import RN, DomainAwareMixin

DEMO_BASE = osp.join(REPO, 'configs/_base_/models/deeplabv3plus_r18-mini-d8.py')

# --------------------------------------------------------------------------------------------- data
SEG_PIPELINES = dict(
    source=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ],
    # The target pipeline loads labels only where a test must show they are ignored.
    target=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackSegInputs')
    ],
    target_labelled=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ])


def seg_datasets(root, target_pipeline='target'):
    source = dict(
        type='GTA5Dataset',
        data_root=osp.join(root, 'gta5'),
        ann_file='train.txt',
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        pipeline=SEG_PIPELINES['source'])
    target = dict(
        type='CityscapesDataset',
        data_root=osp.join(root, 'cityscapes'),
        data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
        pipeline=SEG_PIPELINES[target_pipeline])
    return source, target


DET_CLASSES = ('car', 'person')


def write_coco(root, split, num_images, seed, tint=(0, 0, 0)):
    """Images with coloured boxes (car red, person green) and their COCO json; ``tint`` shifts the
    domain."""
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'images'), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = np.full((80, 120, 3), 90, np.int16) + np.array(tint, np.int16)
        for _ in range(2):
            label = int(rng.integers(0, 2))
            w, h = int(rng.integers(15, 40)), int(rng.integers(15, 40))
            x, y = int(rng.integers(0, 120 - w)), int(rng.integers(0, 80 - h))
            img[y:y + h, x:x + w] = (220, 30, 30) if label == 0 else (30, 200, 40)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=i + 1,
                    category_id=label + 1,
                    bbox=[x, y, w, h],
                    area=w * h,
                    iscrowd=0))
        name = f'{split}_{i:03d}.png'
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(osp.join(root, 'images', name))
        images.append(dict(id=i + 1, file_name=name, width=120, height=80))
    with open(osp.join(root, 'annotations', f'{split}.json'), 'w') as f:
        json.dump(
            dict(
                images=images,
                annotations=annotations,
                categories=[dict(id=k + 1, name=n) for k, n in enumerate(DET_CLASSES)]), f)


@pytest.fixture(scope='module')
def det_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('uda_det'))
    write_coco(osp.join(root, 'source'), 'train', 8, seed=0)
    write_coco(osp.join(root, 'target'), 'train', 8, seed=1, tint=(-40, 20, 60))
    write_coco(osp.join(root, 'target'), 'val', 2, seed=2, tint=(-40, 20, 60))
    return root


def det_datasets(root, target_labelled=False):
    resize = dict(type='Resize', scale=(96, 96), keep_ratio=True)
    source = dict(
        type='CocoDataset',
        data_root=osp.join(root, 'source'),
        metainfo=dict(classes=DET_CLASSES),
        ann_file='annotations/train.json',
        data_prefix=dict(img='images/'),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True), resize,
            dict(type='PackDetInputs')
        ])
    target_pipeline = [dict(type='LoadImageFromFile'), resize, dict(type='PackDetInputs')]
    if target_labelled:
        target_pipeline.insert(1, dict(type='LoadAnnotations', with_bbox=True))
    target = dict(
        type='CocoDataset',
        data_root=osp.join(root, 'target'),
        metainfo=dict(classes=DET_CLASSES),
        ann_file='annotations/train.json',
        data_prefix=dict(img='images/'),
        pipeline=target_pipeline)
    return source, target


# ------------------------------------------------------------------------------------------- models
def seg_model_cfg(norm='RN'):
    from mmengine.config import Config
    model = Config.fromfile(DEMO_BASE).model
    model.type = 'UDAEncoderDecoder'
    model.backbone.norm_cfg = dict(type=norm, requires_grad=True)
    return model


def det_model_cfg(norm='RN'):
    from mmengine.config import ConfigDict
    return ConfigDict(
        type='UDAFasterRCNN',
        data_preprocessor=dict(
            type='DetDataPreprocessor',
            mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375],
            bgr_to_rgb=True,
            pad_size_divisor=32),
        backbone=dict(
            type='ResNet',
            depth=18,
            base_channels=16,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            frozen_stages=-1,
            norm_cfg=dict(type=norm, requires_grad=True),
            norm_eval=False,
            style='pytorch',
            init_cfg=None),
        neck=dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=32, num_outs=5),
        rpn_head=dict(
            type='RPNHead',
            in_channels=32,
            feat_channels=32,
            anchor_generator=dict(
                type='AnchorGenerator',
                scales=[8],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        roi_head=dict(
            type='StandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                out_channels=32,
                featmap_strides=[4, 8, 16, 32],
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0)),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=32,
                fc_out_channels=64,
                roi_feat_size=7,
                num_classes=len(DET_CLASSES),
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0.] * 4,
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=0.7,
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=64,
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            rpn_proposal=dict(
                nms_pre=200,
                max_per_img=100,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='MaxIoUAssigner',
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler',
                    num=64,
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)),
        test_cfg=dict(
            rpn=dict(
                nms_pre=200,
                max_per_img=100,
                nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=20)))


def build(scope, model_cfg, source, target, n=2, pairing='cycle'):
    """(model, collated paired batch of n source + n target samples) built in ``scope``."""
    import importlib
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = registry.build(model_cfg)
        dataset = DATASETS.build(
            dict(type='DomainPairDataset', source=source, target=target, pairing=pairing))
        batch = pseudo_collate([dataset[i] for i in range(n)])
    return model, dataset, batch


@pytest.fixture(scope='module')
def seg_setup(tiny_demo_data):
    return build('mmseg', seg_model_cfg(), *seg_datasets(tiny_demo_data, 'target_labelled'))


@pytest.fixture(scope='module')
def det_setup(det_data):
    return build('mmdet', det_model_cfg(), *det_datasets(det_data, target_labelled=True))


def losses_of(model, batch, seed=0):
    """Loss dict of one paired batch (same dropout / sampler randomness for every call)."""
    model.train()
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    torch.manual_seed(seed)
    losses = model(**data, mode='loss')
    return {k: (torch.stack(v).sum() if isinstance(v, list) else v) for k, v in losses.items()}


# ---------------------------------------------------------------------------------- dataset wrapper
def test_domain_pair_dataset_items(tiny_demo_data):
    source, target = seg_datasets(tiny_demo_data)
    with DefaultScope.overwrite_default_scope('mmseg'):
        cycle = DATASETS.build(
            dict(type='DomainPairDataset', source=source, target=target, pairing='cycle'))
        random = DATASETS.build(dict(type='DomainPairDataset', source=source, target=target))
    assert isinstance(cycle, DomainPairDataset)
    assert (len(cycle.source), len(cycle.target)) == (8, 4)
    assert len(cycle) == 8 and len(random) == 8
    assert cycle.metainfo['classes'] == cycle.source.metainfo['classes']
    item = cycle[5]
    assert item['source']['data_samples'].img_path == cycle.source.get_data_info(5)['img_path']
    assert item['target']['data_samples'].img_path == cycle.target.get_data_info(1)['img_path']
    assert 'gt_sem_seg' in item['source']['data_samples'] and 'gt_sem_seg' not in item['target'][
        'data_samples']
    assert 'cityscapes' in item['target']['data_samples'].img_path
    np.random.seed(3)
    draws = [random.target_index(0) for _ in range(40)]
    assert set(draws) == {0, 1, 2, 3}  # uniform over the target set, not tied to the item index
    random2 = DomainPairDataset(random.source, random.target)
    np.random.seed(3)
    assert [random2.target_index(0)
            for _ in range(40)] == draws  # reproducible under the global seed
    batch = pseudo_collate([cycle[i] for i in range(3)])
    assert len(batch['source']['inputs']) == 3 and len(batch['target']['data_samples']) == 3


def test_domain_pair_dataset_bad_inputs(tiny_demo_data):
    source, target = seg_datasets(tiny_demo_data)
    with DefaultScope.overwrite_default_scope('mmseg'):
        with pytest.raises(ValueError, match='needs a target dataset.*got target=None'):
            DATASETS.build(dict(type='DomainPairDataset', source=source, target=None))
        with pytest.raises(
                ValueError, match="pairing must be one of \\('random', 'cycle'\\), got 'half'"):
            DATASETS.build(
                dict(type='DomainPairDataset', source=source, target=target, pairing='half'))
        with pytest.raises(
                TypeError, match='target must be a dataset config dict or a Dataset, got list'):
            DATASETS.build(dict(type='DomainPairDataset', source=source, target=[target]))


# ----------------------------------------------------------------------------------------- wrappers
@pytest.mark.parametrize('toolbox', ['mmseg', 'mmdet'])
def test_every_domain_aware_layer_sees_the_split(toolbox, request):
    model, _, batch = request.getfixturevalue(f'{"seg" if toolbox == "mmseg" else "det"}_setup')
    layers = {name: m for name, m in model.named_modules() if isinstance(m, DomainAwareMixin)}
    assert len(layers) >= 15 and all(isinstance(m, RN) for m in layers.values())
    seen = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(
            (mod.domain_split, args[0].shape[0]))) for name, m in layers.items()
    ]
    try:
        losses = losses_of(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert seen == {name: [((2, 2), 4)] for name in layers}  # every layer, once, on the joint batch
    assert all(m.domain_split is None for m in layers.values())  # declaration cleared afterwards
    assert all(int(m.num_batches_tracked) > 0 for m in layers.values())
    assert all(torch.isfinite(v) for v in losses.values())


def _relabel(samples, toolbox, seed):
    g = torch.Generator().manual_seed(seed)
    for s in samples:
        if toolbox == 'mmseg':
            s.gt_sem_seg.data = torch.randint(0, 19, s.gt_sem_seg.data.shape, generator=g)
        else:
            boxes = torch.rand(3, 4, generator=g) * 40
            boxes[:, 2:] += boxes[:, :2] + 10
            s.gt_instances = InstanceData(
                bboxes=boxes, labels=torch.randint(0, 2, (3, ), generator=g))
    return samples


@pytest.mark.parametrize('toolbox', ['mmseg', 'mmdet'])
def test_loss_uses_source_labels_only(toolbox, request):
    model, _, batch = request.getfixturevalue(f'{"seg" if toolbox == "mmseg" else "det"}_setup')
    key = 'gt_sem_seg' if toolbox == 'mmseg' else 'gt_instances'
    assert all(key in s
               for s in batch['target']['data_samples'])  # the target samples do carry labels
    reference = losses_of(model, batch)
    relabelled_target = copy.deepcopy(batch)
    _relabel(relabelled_target['target']['data_samples'], toolbox, seed=1)
    changed_target = losses_of(model, relabelled_target)
    assert changed_target.keys() == reference.keys()
    for name in reference:
        assert torch.equal(changed_target[name], reference[name]), name
    relabelled_source = copy.deepcopy(batch)
    _relabel(relabelled_source['source']['data_samples'], toolbox, seed=1)
    changed_source = losses_of(model, relabelled_source)
    main = 'decode.loss_ce' if toolbox == 'mmseg' else 'loss_cls'
    assert not torch.equal(changed_source[main],
                           reference[main])  # the loss does read the source labels


def test_uda_loss_hook_gets_target_features(seg_setup):
    from mmnorm.models.uda import UDAEncoderDecoder
    model, _, batch = seg_setup
    calls = []

    class EntropyUDA(UDAEncoderDecoder):

        def uda_loss(self, source_feats, target_feats, source_data_samples, target_data_samples):
            calls.append(([f.shape[0] for f in source_feats], [f.shape[0] for f in target_feats],
                          len(source_data_samples), len(target_data_samples)))
            p = self.decode_head(target_feats).softmax(1)
            return dict(loss_target_entropy=-(p * p.clamp_min(1e-8).log()).sum(1).mean())

    with DefaultScope.overwrite_default_scope('mmseg'):
        uda = EntropyUDA(**{k: v for k, v in seg_model_cfg().items() if k != 'type'})
    uda.load_state_dict(model.state_dict())
    losses = losses_of(uda, batch)
    assert calls == [([2, 2, 2, 2], [2, 2, 2, 2], 2, 2)]
    assert {'decode.loss_ce', 'loss_target_entropy'} <= set(losses)
    uda.zero_grad()
    losses['loss_target_entropy'].backward()
    assert uda.backbone.stem[0].weight.grad.abs().sum(
    ) > 0  # the target loss reaches the shared backbone

    class Clashing(UDAEncoderDecoder):

        def uda_loss(self, *args):
            return {'decode.loss_ce': torch.zeros(())}

    with DefaultScope.overwrite_default_scope('mmseg'):
        clash = Clashing(**{k: v for k, v in seg_model_cfg().items() if k != 'type'})
    with pytest.raises(ValueError, match=r"uda_loss returned keys \['decode.loss_ce'\]"):
        losses_of(clash, batch)


def test_predict_on_plain_target_batch(seg_setup, tiny_demo_data):
    model, _, _ = seg_setup
    with DefaultScope.overwrite_default_scope('mmseg'):
        val = DATASETS.build(
            dict(
                type='CityscapesDataset',
                data_root=osp.join(tiny_demo_data, 'cityscapes'),
                data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
                pipeline=SEG_PIPELINES['target_labelled']))
    model.eval()
    with torch.no_grad():
        out = model.val_step(pseudo_collate([val[0], val[1]]))
    assert len(out) == 2 and out[0].pred_sem_seg.data.shape[-2:] == (64, 128)


@pytest.mark.parametrize('toolbox', ['mmseg', 'mmdet'])
def test_wrapper_bad_inputs(toolbox, request):
    model, dataset, batch = request.getfixturevalue(
        f'{"seg" if toolbox == "mmseg" else "det"}_setup')
    model.train()
    name = type(model).__name__
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    with pytest.raises(
            ValueError,
            match=f'{name} trains on \\[source \\| target\\] batches.*DomainPairDataset'):
        model(data['inputs'][:2], data['data_samples'], mode='loss')
    with pytest.raises(
            ValueError, match=r'the batch holds 3 images but 2 source \+ 2 target data samples'):
        model(
            data['inputs'][:3],
            data['data_samples'],
            mode='loss',
            target_data_samples=data['target_data_samples'])
    with pytest.raises(
            ValueError, match=r'needs source and target samples, got 2 source and 0 target'):
        model(data['inputs'][:2], data['data_samples'], mode='loss', target_data_samples=[])
    with pytest.raises(ValueError, match='is for mode="loss", got mode=\'predict\''):
        model(
            data['inputs'],
            data['data_samples'],
            mode='predict',
            target_data_samples=data['target_data_samples'])
    with pytest.raises(ValueError, match='needs a "target" part'):
        model.data_preprocessor(dict(source=copy.deepcopy(batch['source']), target=None), True)


def test_rn_backbone_without_wrapper_is_an_error(tiny_demo_data):
    """A plain EncoderDecoder with RN on a source-only batch: no declared split -> clear error, not
    a silent BN."""
    from mmseg.registry import MODELS
    cfg = seg_model_cfg()
    cfg.type = 'EncoderDecoder'
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg)
        source, _ = seg_datasets(tiny_demo_data)
        ds = DATASETS.build(source)
    data = model.data_preprocessor(pseudo_collate([ds[0], ds[1]]), True)
    with pytest.raises(ValueError, match='without a declared \\[source \\| target\\] split'):
        model(**data, mode='loss')


# ------------------------------------------------------------------------------- 2-process training
PROBE = '''
import json, os
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmnorm.models.norms import DomainAwareMixin


@HOOKS.register_module()
class UDAProbeHook(Hook):
    """Writes, per rank and iteration, the source/target images of the batch and the split every
    layer saw."""

    def before_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.layers = [n for n, m in model.named_modules() if isinstance(m, DomainAwareMixin)]
        self.seen = []
        for name, m in model.named_modules():
            if isinstance(m, DomainAwareMixin):
                m.register_forward_pre_hook(self._record(name))

    def _record(self, name):
        def hook(module, args):
            if module.training:
                self.seen.append([name, list(module.domain_split), args[0].shape[0]])
        return hook

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen = []
        self.batch = {
            d: [s.img_path for s in data_batch[d]['data_samples']]
            for d in ('source', 'target')
        }

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        record = dict(rank=get_rank(), iter=runner.iter, layers=self.layers, seen=self.seen,
                      **self.batch)
        with open(os.path.join(runner.work_dir, f'probe_rank{get_rank()}.jsonl'), 'a') as f:
            f.write(json.dumps(record) + chr(10))
'''

SEG_UDA = '''
_base_ = [{model!r}, {runtime!r}]
custom_imports = dict(imports=['mmnorm', 'uda_probe'], allow_failed_imports=False)
model = dict(type='UDAEncoderDecoder', backbone=dict(norm_cfg=dict(type='RN', requires_grad=True)))
train_dataloader = dict(batch_size=2, num_workers=0,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(type='DomainPairDataset', pairing='random',
                                     source={source!r}, target={target!r}))
val_dataloader = dict(batch_size=2, num_workers=0,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset={val!r})
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4))
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=3)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
                     param_scheduler=dict(type='ParamSchedulerHook'),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3),
                     sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='UDAProbeHook')]
log_processor = dict(by_epoch=False, window_size=1)
'''

DET_UDA = '''
default_scope = 'mmdet'
custom_imports = dict(imports=['mmnorm', 'uda_probe'], allow_failed_imports=False)
model = {model!r}
train_dataloader = dict(batch_size=2, num_workers=0,
                        sampler=dict(type='InfiniteSampler', shuffle=True),
                        batch_sampler=dict(type='AspectRatioBatchSampler'),
                        dataset=dict(type='DomainPairDataset', pairing='cycle',
                                     source={source!r}, target={target!r}))
val_dataloader = dict(batch_size=1, num_workers=0,
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset={val!r})
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file={val_ann!r}, metric='bbox')
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=3)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
                     param_scheduler=dict(type='ParamSchedulerHook'),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3),
                     sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='UDAProbeHook')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
'''


def dist_uda_run(tmp_path, config_text):
    (tmp_path / 'uda_probe.py').write_text(PROBE)
    config = tmp_path / 'uda.py'
    config.write_text(config_text)
    work_dir = tmp_path / 'work'
    run_tool(['tools/dist_train.sh', config, 2, '--work-dir', work_dir],
             PORT=free_port(),
             PYTHONPATH=f'{REPO}{os.pathsep}{tmp_path}')
    records = {}
    for rank in (0, 1):
        with open(work_dir / f'probe_rank{rank}.jsonl') as f:
            records[rank] = [json.loads(line) for line in f]
    return records, work_dir


def logged_scalars(work_dir):
    """The rows mmengine's LocalVisBackend wrote (``<timestamp>/vis_data/scalars.json``): training
    rows carry ``iter`` and the losses (logger interval 1), validation rows the metrics."""
    (path, ) = work_dir.glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_records(records, iters=3, per_rank=2):
    for rank in (0, 1):
        assert [r['iter'] for r in records[rank]] == list(range(iters))
        for r in records[rank]:
            assert len(r['layers']) >= 15
            # every domain-aware layer saw this rank's (2 source, 2 target) batch, once per
            # iteration
            assert sorted(name for name, _, _ in r['seen']) == sorted(r['layers'])
            assert all(split == [per_rank, per_rank] and n == 2 * per_rank
                       for _, split, n in r['seen'])
    for a, b in zip(records[0], records[1]):  # each rank loads its own source and target samples
        assert set(a['source']).isdisjoint(b['source'])
    return [r['target'] for r in records[0]], [r['target'] for r in records[1]]


def test_dist_uda_training_segmentor(tiny_demo_data, tmp_path):
    source, target = seg_datasets(tiny_demo_data)
    val = dict(
        type='CityscapesDataset',
        data_root=osp.join(tiny_demo_data, 'cityscapes'),
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=SEG_PIPELINES['target_labelled'])
    text = SEG_UDA.format(
        model=DEMO_BASE,
        runtime=osp.join(REPO, 'configs/_base_/demo_runtime.py'),
        source=source,
        target=target,
        val=val)
    records, work_dir = dist_uda_run(tmp_path, text)
    targets0, targets1 = check_records(records)
    assert targets0 != targets1  # random pairing: each rank draws its own target stream
    rows = logged_scalars(work_dir)
    train = [r for r in rows if 'decode.loss_ce' in r]
    assert [r['iter'] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r['decode.loss_ce']) for r in train)
    # validation on the target set through the ValLoop, once, after the last iteration
    assert [i for i, r in enumerate(rows) if 'mIoU' in r] == [rows.index(train[-1]) + 1]
    checkpoint = torch.load(work_dir / 'iter_3.pth', weights_only=True)
    assert checkpoint['meta']['iter'] == 3
    state = checkpoint['state_dict']
    assert 'backbone.layer1.0.bn1.gate_mean_source' in state
    assert 'backbone.layer1.0.bn1.running_var_target' in state


def test_dist_uda_training_detector(det_data, tmp_path):
    source, target = det_datasets(det_data)
    val = dict(
        type='CocoDataset',
        data_root=osp.join(det_data, 'target'),
        metainfo=dict(classes=DET_CLASSES),
        ann_file='annotations/val.json',
        data_prefix=dict(img='images/'),
        test_mode=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(96, 96), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(
                type='PackDetInputs',
                meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
        ])
    text = DET_UDA.format(
        model=det_model_cfg().to_dict(),
        source=source,
        target=target,
        val=val,
        val_ann=osp.join(det_data, 'target', 'annotations', 'val.json'))
    records, work_dir = dist_uda_run(tmp_path, text)
    targets0, targets1 = check_records(records)
    for a, b in zip(targets0,
                    targets1):  # cycle pairing over equal-size sets: disjoint target parts per rank
        assert set(a).isdisjoint(b)
    rows = logged_scalars(work_dir)
    train = [r for r in rows if 'loss' in r]
    assert [r['iter'] for r in train] == [1, 2, 3]
    for name in ('loss_rpn_cls', 'loss_cls'):  # both stages trained, finite losses
        assert all(math.isfinite(r[name]) for r in train)
    # validation on the target set through the ValLoop, once, after the last iteration
    assert [i for i, r in enumerate(rows) if 'coco/bbox_mAP_50' in r] == [rows.index(train[-1]) + 1]
    assert torch.load(work_dir / 'iter_3.pth', weights_only=True)['meta']['iter'] == 3


def test_adabn_trains_domain_pure_statistics_through_the_wrapper(tiny_demo_data):
    """The AdaBN layer in the same wrapper: source part -> source statistics, target part -> target
    statistics."""
    from mmnorm.models.norms import AdaBN
    cfg = seg_model_cfg()
    cfg.backbone.norm_cfg = dict(type='AdaBN', eval_domain='target', requires_grad=True)
    model, _, batch = build('mmseg', cfg, *seg_datasets(tiny_demo_data))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaBN)}
    assert len(layers) >= 15
    inputs = {}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, m in layers.items()
    ]
    try:
        losses_of(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert inputs.keys() == layers.keys()
    for name, layer in layers.items():
        x = inputs[name].double()
        for domain, part in (('source', x[:2]), ('target', x[2:])):
            var, mean = torch.var_mean(part, dim=(0, 2, 3), correction=1)
            bn = getattr(layer, domain)
            torch.testing.assert_close(
                bn.running_mean.double(), 0.1 * mean, rtol=1e-4, atol=1e-5, msg=name)
            torch.testing.assert_close(
                bn.running_var.double(), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5, msg=name)
