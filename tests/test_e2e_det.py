"""A tiny mmdet Faster R-CNN trains and tests on generated COCO-format data through tools/train.py
and test.py."""
import json
import os.path as osp
import pickle

import numpy as np
import pytest
from conftest import run_tool
from PIL import Image

CLASSES = ('car', 'person')

DET_CONFIG = """
_base_ = ['mmdet::_base_/models/faster-rcnn_r50_fpn.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
data_root = {root!r}
metainfo = dict(classes={classes!r})
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(depth=18, base_channels=16, norm_cfg=norm_cfg, init_cfg=None, frozen_stages=-1,
                  norm_eval=False),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes={num_classes})))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='Resize', scale=(96, 96), keep_ratio=True), dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'),
                 dict(type='Resize', scale=(96, 96), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True),
                 dict(type='PackDetInputs',
                      meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
train_dataloader = dict(batch_size=2, num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/train.json', data_prefix=dict(img='images/'),
                 filter_cfg=dict(filter_empty_gt=True), pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/val.json', data_prefix=dict(img='images/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + '/annotations/val.json', metric='bbox')
test_evaluator = val_evaluator
train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=3), logger=dict(interval=1))
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
"""


def write_coco(root: str, split: str, num_images: int, rng: np.random.Generator) -> None:
    """Images with coloured boxes (red = car, green = person) and their COCO json."""
    images, annotations = [], []
    for i in range(num_images):
        img = np.full((80, 120, 3), 90, np.uint8)
        file_name = f'{split}_{i:03d}.jpg'
        for _ in range(2):
            label = int(rng.integers(0, 2))
            w, h = rng.integers(15, 40), rng.integers(15, 40)
            x, y = rng.integers(0, 120 - w), rng.integers(0, 80 - h)
            img[y:y + h, x:x + w] = (220, 30, 30) if label == 0 else (30, 200, 40)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=i + 1,
                    category_id=label + 1,
                    bbox=[float(x), float(y), float(w), float(h)],
                    area=float(w * h),
                    iscrowd=0))
        Image.fromarray(img).save(osp.join(root, 'images', file_name), quality=95)
        images.append(dict(id=i + 1, file_name=file_name, width=120, height=80))
    categories = [dict(id=k + 1, name=name) for k, name in enumerate(CLASSES)]
    with open(osp.join(root, 'annotations', f'{split}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


@pytest.fixture(scope='module')
def det_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    (root / 'images').mkdir()
    (root / 'annotations').mkdir()
    rng = np.random.default_rng(0)
    write_coco(str(root), 'train', 6, rng)
    write_coco(str(root), 'val', 4, rng)
    config = root / 'faster-rcnn_r18-tiny_coco-synthetic.py'
    config.write_text(DET_CONFIG.format(root=str(root), classes=CLASSES, num_classes=len(CLASSES)))
    return root, str(config)


def test_faster_rcnn_trains_and_tests(det_setup, tmp_path):
    root, config = det_setup
    work_dir = tmp_path / 'work'
    run_tool(['tools/train.py', config, '--work-dir', work_dir])
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    rows = [row for row in map(json.loads, scalars) if 'loss' in row]  # logger interval 1
    assert [row['iter'] for row in rows] == [1, 2, 3]
    for name in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'):
        assert all(name in row for row in rows)  # both stages of the two-stage detector trained
    metrics_file, out_file = tmp_path / 'metrics.json', tmp_path / 'results.pkl'
    run_tool([
        'tools/test.py', config, work_dir / 'iter_3.pth', '--work-dir', work_dir, '--metrics-out',
        metrics_file, '--out', out_file
    ])
    metrics = json.loads(metrics_file.read_text())
    assert metrics['coco/bbox_mAP_50'] >= 0.0  # COCO gives -1 when it finds no ground truth
    with open(out_file, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 4 and 'pred_instances' in results[0]


def test_mmdet_out_must_be_pickle(det_setup, tmp_path):
    root, config = det_setup
    dummy = tmp_path / 'x.pth'
    dummy.write_bytes(b'')
    proc = run_tool(['tools/test.py', config, dummy, '--out', tmp_path / 'results.json'],
                    check=False)
    assert proc.returncode != 0
    assert '--out' in proc.stderr and repr(str(tmp_path / 'results.json')) in proc.stderr
