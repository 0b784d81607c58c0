"""One checkpoint, several targets: MultiTargetIoUMetric against separate mmseg IoUMetric runs and a
hand-computed case, MultiTargetDataset's tags and per-dataset pipelines, ResetOriShape, bad input,
and (slow) a 2-process dist_test.sh run of the GTA5 multi-target config equal to 1 process."""

import numpy as np
import pytest
import torch
from conftest import REPO, metrics_of_one_and_two_processes
from mmengine.registry import DefaultScope
from mmseg.evaluation import IoUMetric
from test_class_uniform import CLASSES, HW, write_data

import mmnorm  # noqa: F401  (registers the dataset, transform and metric)
from mmnorm.datasets import MultiTargetDataset
from mmnorm.evaluation import MultiTargetIoUMetric
from mmnorm.validation import ArgumentError


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


def sample(pred, label, name=None):
    out = dict(
        pred_sem_seg=dict(data=torch.as_tensor(pred)[None]),
        gt_sem_seg=dict(data=torch.as_tensor(label)[None]))
    if name is not None:
        out['dataset_name'] = name
    return out


def test_hand_computed_case():
    metric = MultiTargetIoUMetric()
    metric.dataset_meta = dict(classes=('a', 'b', 'c'), dataset_names=['x', 'y'])
    metric.process({}, [
        sample([[0, 1], [2, 2]], [[0, 1], [2, 1]], 'x'),
        sample([[0, 0], [0, 0]], [[0, 0], [1, 255]], 'y')
    ])
    out = metric.compute_metrics(metric.results)
    # x: IoU a 1/1, b 1/2, c 1/2 -> 66.67; y: a 2/3, b 0/1 (c absent: NaN, skipped) -> 33.33
    assert out['x/mIoU'] == 66.67 and out['y/mIoU'] == 33.33
    assert out['x/aAcc'] == 75.0 and out['y/aAcc'] == pytest.approx(66.67)
    assert out['mean/mIoU'] == 50.0  # the mean of the unrounded values, not pixel-weighted


def test_each_dataset_equals_its_own_iou_metric_run():
    rng = np.random.RandomState(0)
    names = ['cityscapes', 'bdd100k', 'mapillary']
    sizes = dict(cityscapes=(3, 20, 40), bdd100k=(5, 18, 32), mapillary=(2, 30, 30))
    samples = []
    for name in names:
        n, h, w = sizes[name]
        for _ in range(n):
            label = rng.randint(0, 19, (h, w))
            label[rng.rand(h, w) < 0.1] = 255
            pred = np.where(rng.rand(h, w) < 0.6, label % 19, rng.randint(0, 19, (h, w)))
            samples.append(sample(pred, label, name))
    order = rng.permutation(len(samples))  # interleaved, as several ranks collect them
    meta = dict(classes=tuple(str(i) for i in range(19)), dataset_names=names)
    metric = MultiTargetIoUMetric(iou_metrics=['mIoU', 'mDice'])
    metric.dataset_meta = meta
    metric.process({}, [samples[i] for i in order])
    out = metric.compute_metrics(metric.results)
    separate = {}
    for name in names:
        ref = IoUMetric(iou_metrics=['mIoU', 'mDice'])
        ref.dataset_meta = meta
        ref.process({}, [s for s in samples if s['dataset_name'] == name])
        separate[name] = ref.compute_metrics(ref.results)
        for key in ('aAcc', 'mIoU', 'mAcc', 'mDice'):
            assert out[f'{name}/{key}'] == pytest.approx(float(separate[name][key]), abs=0.006)
    mean = np.mean([separate[n]['mIoU'] for n in names])
    assert out['mean/mIoU'] == pytest.approx(mean, abs=0.01)
    assert list(out)[:4] == [f'cityscapes/{k}' for k in ('aAcc', 'mIoU', 'mAcc', 'mDice')]


def test_metric_bad_input():
    metric = MultiTargetIoUMetric()
    metric.dataset_meta = dict(classes=('a', 'b'), dataset_names=['x', 'y'])
    with pytest.raises(KeyError, match="no 'dataset_name' in its metainfo"):
        metric.process({}, [sample([[0]], [[0]])])
    metric.process({}, [sample([[0]], [[0]], 'x')])
    with pytest.raises(RuntimeError, match=r"no sample of \['y'\]"):
        metric.compute_metrics(metric.results)


@pytest.fixture(scope='module')
def two_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('targets')
    return write_data(str(base / 'a'), num_images=3), write_data(str(base / 'b'), num_images=2)


def seg_dataset(root, pipeline, classes=CLASSES):
    return dict(
        type='BaseSegDataset',
        data_root=root,
        data_prefix=dict(img_path='img', seg_map_path='ann'),
        img_suffix='.png',
        seg_map_suffix='.png',
        metainfo=dict(classes=classes),
        pipeline=pipeline)


def test_dataset_tags_samples_and_keeps_each_pipeline(two_roots):
    plain = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    cropped = plain[:2] + [
        dict(type='Resize', scale=(48, 200), keep_ratio=True),  # shorter side 48 (x0.75)
        dict(type='CenterCrop', crop_size=(40, 40)),
        dict(type='ResetOriShape'),
        dict(type='PackSegInputs')
    ]
    ds = MultiTargetDataset(
        dict(first=seg_dataset(two_roots[0], plain), second=seg_dataset(two_roots[1], cropped)))
    ds.full_init()
    assert len(ds) == 5 and ds.metainfo['dataset_names'] == ['first', 'second']
    assert tuple(ds.metainfo['classes']) == CLASSES
    names = [ds[i]['data_samples'].dataset_name for i in range(5)]
    assert names == ['first'] * 3 + ['second'] * 2
    assert ds.get_data_info(3)['dataset_name'] == 'second'
    full, crop = ds[0]['data_samples'], ds[4]['data_samples']
    assert full.ori_shape == HW and full.gt_sem_seg.shape == HW
    # the second dataset's label went through the resize and the centre crop, and the prediction
    # will be resized to that size (ori_shape), not to the file's
    assert crop.ori_shape == (40, 40) and crop.gt_sem_seg.shape == (40, 40)
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_bad_input(two_roots):
    plain = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
    with pytest.raises(ArgumentError, match='needs the classes of'):
        MultiTargetDataset(
            dict(
                a=seg_dataset(two_roots[0], plain),
                b=seg_dataset(two_roots[1], plain, classes=('road', 'car'))))
    with pytest.raises(ArgumentError, match='without "/"'):
        MultiTargetDataset({'a/b': seg_dataset(two_roots[0], plain)})
    with pytest.raises(ArgumentError, match='non-empty dict'):
        MultiTargetDataset([seg_dataset(two_roots[0], plain)])


TINY_CONFIG = """
_base_ = '{repo}/configs/baseline/deeplabv3plus_r50-d8_4xb2-40k_gta5-cityscapes-bdd100k-mapillary-512x512.py'
model = dict(pretrained=None)
pipe = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', imdecode_backend='pillow'),
        dict(type='PackSegInputs')]
mapillary_pipe = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', imdecode_backend='pillow'),
                  dict(type='Resize', scale=(24, 200), keep_ratio=True),
                  dict(type='CenterCrop', crop_size=(24, 24)), dict(type='ResetOriShape'),
                  dict(type='PackSegInputs')]
test_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(datasets=dict(
    cityscapes=dict(data_root='{root}/cityscapes/', indices=1, pipeline=pipe),
    bdd100k=dict(data_root='{root}/bdd100k/', pipeline=pipe),
    mapillary=dict(data_root='{root}/mapillary/', pipeline=mapillary_pipe))))
"""


@pytest.mark.slow  # two tools/test.py runs of DeepLabV3+ R50 (1 and 2 processes): 268 s at load 13
@pytest.mark.timeout(900)
def test_two_processes_report_the_one_process_table(tmp_path, port):
    """5 samples (Cityscapes 1, BDD100K 2, Mapillary 2) on 2 ranks: DefaultSampler pads rank 1
    with sample 0; the collected results drop it and every dataset's mIoU equals the 1-process
    run's."""
    from dataset_fixtures import build_fixture_data
    root = build_fixture_data(tmp_path / 'data')
    config = tmp_path / 'multi_target_tiny.py'
    config.write_text(TINY_CONFIG.format(repo=REPO, root=root))
    runs = metrics_of_one_and_two_processes(config, tmp_path, port)
    assert runs[2] == runs[1]
    names = ('cityscapes', 'bdd100k', 'mapillary', 'mean')
    assert {f'{n}/{k}' for n in names for k in ('aAcc', 'mIoU', 'mAcc')} == set(runs[1])
    mean = np.mean([runs[1][f'{n}/mIoU'] for n in names[:3]])
    assert runs[1]['mean/mIoU'] == pytest.approx(mean, abs=0.01)
