"""The Cityscapes -> ACDC continual protocol: ACDCDataset on a fixture in the official layout,
ContinualDataset's order and rounds, ContinualIoUMetric on hand-computed predictions, and (slow)
the metric of a 2-process ``dist_test.sh`` run equal to the 1-process run."""
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import REPO, metrics_of_one_and_two_processes
from dataset_fixtures import ACDC_CONDITIONS, ACDC_FRAMES, acdc_seed, build_fixture_data, id_map
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.evaluation import IoUMetric
from mmseg.structures import SegDataSample
from PIL import Image

import mmnorm  # noqa: F401  (registers the datasets and the metric)
from mmnorm.datasets import ACDCDataset, ContinualDataset
from mmnorm.evaluation import ContinualIoUMetric
from mmnorm.validation import ArgumentError

PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope('mmseg'):  # pipelines and datasets of mmseg
        yield


@pytest.fixture(scope='module')
def acdc_root(tmp_path_factory):
    return osp.join(build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data'), 'acdc')


def val_frames(condition):
    """(image, label) paths of a condition's val frames, in the order the dataset must list
    them."""
    out = []
    for seq, n in sorted(ACDC_FRAMES['val']):
        stem = f'{seq}_frame_{n:06d}'
        out.append((f'rgb_anon/{condition}/val/{seq}/{stem}_rgb_anon.png',
                    f'gt/{condition}/val/{seq}/{stem}_gt_labelTrainIds.png'))
    return out


def test_acdc_lists_the_official_layout(acdc_root):
    ds = ACDCDataset(data_root=acdc_root, conditions=['night', 'fog'], split='val')
    expected = val_frames('night') + val_frames('fog')
    got = [(osp.relpath(d['img_path'], acdc_root), osp.relpath(d['seg_map_path'], acdc_root))
           for d in (ds.get_data_info(i) for i in range(len(ds)))]
    assert got == expected
    assert [ds.get_data_info(i)['condition'] for i in range(len(ds))] == ['night'] * 2 + ['fog'] * 2
    assert ds.metainfo['classes'][0] == 'road' and len(ds.metainfo['classes']) == 19
    assert len(ACDCDataset(data_root=acdc_root)) == 4 * len(ACDC_FRAMES['val'])
    assert len(ACDCDataset(data_root=acdc_root, conditions='snow', split='train')) == 1


def test_acdc_sample_holds_the_train_ids_of_the_label_file(acdc_root):
    ds = ACDCDataset(data_root=acdc_root, conditions='rain', split='val', pipeline=PIPELINE)
    sample = ds[1]['data_samples']
    # the second val frame in path order is the GP01* sequence (k=1 in the fixture's list)
    k = [seq for seq, _ in ACDC_FRAMES['val']].index(sorted(ACDC_FRAMES['val'])[1][0])
    expected = id_map(list(range(19)) + [255], (36, 64), acdc_seed('rain', 'val', k))
    assert np.array_equal(sample.gt_sem_seg.data[0].numpy(), expected)
    on_disk = np.array(Image.open(sample.seg_map_path))
    assert np.array_equal(on_disk, expected)


def test_protocol_pipeline_resizes_full_frames_as_cotta(tmp_path):
    """One frame at ACDC's real 1920x1080 through the protocol's pipeline
    (configs/_base_/datasets/acdc_continual.py): the image at 960x540, the label kept at
    1920x1080 for the metric."""
    from mmengine.config import Config
    base = Config.fromfile(osp.join(REPO, 'configs/_base_/datasets/acdc_continual.py'))
    assert (base.acdc_split, base.acdc_rounds, base.acdc_scale) == ('train', 10, (960, 540))
    assert base.acdc_conditions == ('fog', 'night', 'rain', 'snow')
    stem = 'GOPR0400/GOPR0400_frame_000001'
    img = np.zeros((1080, 1920, 3), np.uint8)
    img[:, 960:] = 200  # right half bright: survives the resize at the same place
    label = np.full((1080, 1920), 255, np.uint8)
    label[:540] = 13  # car above, ignored below
    for folder, array, suffix in (('rgb_anon', img, '_rgb_anon.png'), ('gt', label,
                                                                       '_gt_labelTrainIds.png')):
        path = tmp_path / folder / 'snow' / 'val' / (stem + suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
    ds = ACDCDataset(
        data_root=str(tmp_path), conditions='snow', split='val', pipeline=base.acdc_test_pipeline)
    sample = ds[0]
    assert tuple(sample['inputs'].shape) == (3, 540, 960)
    assert sample['inputs'][:, :, :478].max() == 0 and sample['inputs'][:, :, 482:].min() == 200
    seg = sample['data_samples'].gt_sem_seg.data[0]
    assert tuple(seg.shape) == (1080, 1920)
    assert (seg[:540] == 13).all() and (seg[540:] == 255).all()
    assert sample['data_samples'].ori_shape == (1080, 1920)


def test_acdc_bad_input(acdc_root, tmp_path):
    with pytest.raises(ArgumentError, match="'haze'"):
        ACDCDataset(data_root=acdc_root, conditions=['fog', 'haze'])
    with pytest.raises(ArgumentError, match="'testing'"):
        ACDCDataset(data_root=acdc_root, split='testing')
    with pytest.raises(FileNotFoundError, match='no public labels'):
        ACDCDataset(data_root=acdc_root, conditions='fog', split='test')
    with pytest.raises(FileNotFoundError, match='rgb_anon/ and gt/'):
        ACDCDataset(data_root=str(tmp_path), conditions='fog')


def continual(acdc_root, rounds, conditions=ACDC_CONDITIONS, split='val'):
    return ContinualDataset(
        rounds=rounds,
        datasets=dict(
            type='ACDCDataset',
            data_root=acdc_root,
            conditions=conditions,
            split=split,
            pipeline=PIPELINE))


def test_continual_dataset_keeps_condition_order_for_every_round(acdc_root):
    ds = continual(acdc_root, rounds=3)
    per_round = [f for c in ACDC_CONDITIONS for f in val_frames(c)]
    assert len(ds) == 3 * len(per_round) == 24
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        r, j = divmod(i, len(per_round))
        assert osp.relpath(info['img_path'], acdc_root) == per_round[j][0]
        assert info['round'] == r + 1
        assert info['condition'] == per_round[j][0].split('/')[1]
    # the packed samples carry round and condition although PackSegInputs' meta_keys do not
    sample = ds[13]['data_samples']
    assert (sample.round, sample.condition) == (2, 'rain')  # item 5 of round 2
    assert osp.relpath(sample.img_path, acdc_root) == per_round[5][0]
    assert ds.metainfo['classes'] == ACDCDataset.METAINFO['classes']


def test_continual_dataset_of_several_datasets_and_bad_input(acdc_root):
    cfg = dict(type='ACDCDataset', data_root=acdc_root, split='train', pipeline=PIPELINE)
    chained = ContinualDataset(
        [dict(cfg, conditions='snow'), dict(cfg, conditions='fog')], rounds=2)
    assert [chained.get_data_info(i)['condition'] for i in range(4)] == ['snow', 'fog'] * 2
    # a dataset without conditions (plain mmseg) needs names
    plain = dict(
        type='BaseSegDataset',
        data_root=acdc_root,
        img_suffix='_rgb_anon.png',
        seg_map_suffix='_gt_labelTrainIds.png',
        data_prefix=dict(img_path='rgb_anon/rain/val', seg_map_path='gt/rain/val'),
        pipeline=PIPELINE)
    with pytest.raises(ArgumentError, match='no condition in its data info'):
        ContinualDataset([plain])
    named = ContinualDataset([plain, dict(cfg, conditions='fog')], rounds=2, names=['r', 'f'])
    assert [named.get_data_info(i)['condition'] for i in range(6)] == ['r', 'r', 'f'] * 2
    assert (named[4]['data_samples'].condition, named[4]['data_samples'].round) == ('r', 2)
    with pytest.raises(ArgumentError, match='one name per dataset'):
        ContinualDataset([dict(cfg, conditions='fog')], names=['a', 'b'])
    with pytest.raises(ArgumentError, match='rounds must be a positive int, got 0'):
        ContinualDataset([dict(cfg, conditions='fog')], rounds=0)
    with pytest.raises(ArgumentError, match='at least one dataset'):
        ContinualDataset([])
    with pytest.raises(IndexError):
        named[12]


def seg_sample(gt, pred, round_, condition):
    s = SegDataSample(metainfo=dict(round=round_, condition=condition, img_path='x.png'))
    s.gt_sem_seg = PixelData(data=torch.tensor([gt]))
    s.pred_sem_seg = PixelData(data=torch.tensor([pred]))
    return s.to_dict()


# 1x4 label maps, 3 classes, 255 ignored.
SAMPLES = [
    ([[0, 0, 1, 1]], [[0, 1, 1, 1]], 1, 'fog'),  # A
    ([[2, 2, 255, 0]], [[2, 0, 1, 0]], 1, 'fog'),  # B (the prediction under 255 is not counted)
    ([[1, 1, 1, 1]], [[1, 1, 1, 1]], 1, 'night'),  # C
    ([[0, 1, 2, 2]], [[0, 1, 2, 2]], 2, 'fog'),  # D
    ([[0, 0, 0, 0]], [[1, 1, 0, 0]], 2, 'night'),  # E
]
# Hand-computed. Round 1 fog sums A and B: class 0 I = 1 + 1, U = 2 + 2 -> 1/2; class 1 I = 2,
# U = 3 -> 2/3; class 2 I = 1, U = 2 -> 1/2; mIoU = (1/2 + 2/3 + 1/2) / 3 = 55.56 (the mean of
# the two images' own mIoUs, 58.33 and 50, would be 54.17). Round 1 night: class 1 only, 1 -> 100.
# Round 2 fog: all exact -> 100. Round 2 night: class 0 I = 2, U = 4; class 1 I = 0, U = 2 -> 25.
R1_FOG = (1 / 2 + 2 / 3 + 1 / 2) / 3 * 100
EXPECTED = {
    'round1/fog/mIoU': R1_FOG,
    'round1/night/mIoU': 100.0,
    'round2/fog/mIoU': 100.0,
    'round2/night/mIoU': 25.0,
    'round1/mIoU': (R1_FOG + 100) / 2,
    'round2/mIoU': 62.5,
    'fog/mIoU': (R1_FOG + 100) / 2,
    'night/mIoU': 62.5,
    'mIoU': (R1_FOG + 100 + 100 + 25) / 4,
}


def evaluate(metric_cls, samples, **kwargs):
    metric = metric_cls(**kwargs)
    metric.dataset_meta = dict(classes=('a', 'b', 'c'))
    metric.process({}, [seg_sample(*s) for s in samples])
    return metric.evaluate(len(samples))


def test_metric_per_condition_per_round_on_known_predictions():
    got = evaluate(ContinualIoUMetric, SAMPLES)
    assert {
        k: v
        for k, v in got.items() if k.endswith('mIoU')
    } == {
        k: round(v, 2)
        for k, v in EXPECTED.items()
    }
    # IoUMetric's aAcc and mAcc come along: round 1 fog has 3 + 2 of 4 + 3 valid pixels right
    assert got['round1/fog/aAcc'] == round(5 / 7 * 100, 2) and 'night/mAcc' in got
    assert got['round1/fog/mIoU'] == 55.56 and got['mIoU'] == 70.14
    # one (round, condition) equals mmseg's IoUMetric over the same samples
    assert got['round1/fog/mIoU'] == evaluate(IoUMetric, SAMPLES[:2])['mIoU']
    # the order of the samples does not matter (results arrive rank-interleaved)
    assert evaluate(ContinualIoUMetric, SAMPLES[::-1]) == got
    more = evaluate(ContinualIoUMetric, SAMPLES, iou_metrics=['mIoU', 'mDice'])
    assert more['round2/night/mDice'] == round((2 * 2 / (2 + 4) + 0) / 2 * 100, 2)


def test_metric_needs_round_and_condition():
    metric = ContinualIoUMetric()
    metric.dataset_meta = dict(classes=('a', 'b', 'c'))
    sample = seg_sample([[0]], [[0]], 1, 'fog')
    del sample['round']
    with pytest.raises(KeyError, match='ContinualDataset'):
        metric.process({}, [sample])


TINY_CONFIG = """
_base_ = ['{repo}/configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py']
custom_hooks = [dict(type='TestTimeAdaptHook', method='bn')]
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 36), keep_ratio=True),
            dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
test_dataloader = dict(
    _delete_=True, batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ContinualDataset', rounds=3, datasets=dict(
        type='ACDCDataset', data_root='{root}', conditions=('fog', 'night', 'rain'),
        split='train', pipeline=pipeline)))
test_evaluator = dict(_delete_=True, type='ContinualIoUMetric')
"""


@pytest.mark.slow  # ~75 s on 2 busy cores: two tools/test.py runs (1 and 2 processes)
def test_two_processes_report_the_one_process_table(acdc_root, tmp_path, port):
    """9 stream items (3 conditions x 1 frame x 3 rounds) on 2 ranks: DefaultSampler pads rank 1
    with item 0; the collected results drop it, and every (round, condition) mIoU equals the
    1-process run's ('bn': each image normalised by its own statistics, independent of the
    ranks)."""
    config = tmp_path / 'continual_tiny.py'
    config.write_text(TINY_CONFIG.format(repo=REPO, root=acdc_root))
    runs = metrics_of_one_and_two_processes(config, tmp_path, port)
    assert runs[2] == runs[1]
    keys = {f'round{r}/{c}/mIoU' for r in (1, 2, 3) for c in ('fog', 'night', 'rain')}
    assert keys <= set(runs[1]) and {'round3/mIoU', 'rain/mIoU', 'mIoU'} <= set(runs[1])
    # 'bn' adapts nothing across images: every round repeats round 1
    assert all(runs[1][f'round{r}/mIoU'] == runs[1]['round1/mIoU'] for r in (2, 3))
