"""Datasets on fixture copies of the real layouts: the right files, and labels mapped to the
right train IDs."""
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch
from dataset_fixtures import (CITY_HW, GTA5_EXPECTED, GTA5_SPLIT, MAPILLARY_EXPECTED, NUM_CITY,
                              SIM10K_OBJECTS, SYNTHIA_EXPECTED, apply, build_fixture_data,
                              city_boxes, id_map)
from mmdet.evaluation import CocoMetric
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.datasets import BDD100KDataset, CityscapesDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.structures import SegDataSample
from PIL import Image

import mmnorm  # noqa: F401
from mmnorm.datasets import (FoggyCityscapesDataset, GTA5Dataset, Mapillary19Dataset, Sim10kDataset,
                             SynthiaDataset, read_gta5_split)
from mmnorm.datasets.conversion import read_synthia_label
from mmnorm.evaluation import SubsetIoUMetric, subset_miou


@pytest.fixture(scope='session')
def root(tmp_path_factory):
    return build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data')


def load_label(info, backend='pillow'):
    """Runs mmseg's own LoadAnnotations on a data_info (as the pipeline would)."""
    return LoadAnnotations(imdecode_backend=backend)(dict(info))['gt_seg_map']


def names(ds):
    return [osp.splitext(osp.basename(ds.get_data_info(i)['img_path']))[0] for i in range(len(ds))]


# ---------------------------------------------------------------- GTA5
def test_gta5_raw_palette_labels_map_to_train_ids(root):
    ds = GTA5Dataset(
        data_root=f'{root}/gta5', data_prefix=dict(img_path='images', seg_map_path='labels'))
    assert names(ds) == [f'{i:05d}' for i in range(1, 7)]
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        ids = np.array(Image.open(info['seg_map_path']))
        assert set(np.unique(ids)) == set(GTA5_EXPECTED)
        np.testing.assert_array_equal(load_label(info), apply(GTA5_EXPECTED, ids))
    # The palette trap: cv2 decodes the colours, which are not the label IDs.
    colours = cv2.imread(ds.get_data_info(0)['seg_map_path'], cv2.IMREAD_UNCHANGED)
    assert colours.ndim == 3


def test_gta5_converted_labels_match_raw(root):
    kw = dict(data_root=f'{root}/gta5', data_prefix=dict(img_path='images', seg_map_path='labels'))
    raw, conv = GTA5Dataset(**kw), GTA5Dataset(seg_map_suffix='_labelTrainIds.png', **kw)
    assert conv.label_map is None and len(conv) == len(raw) == 6
    for i in range(len(raw)):
        np.testing.assert_array_equal(
            load_label(conv.get_data_info(i)), load_label(raw.get_data_info(i)))


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_gta5_official_split(root, split):
    ds = GTA5Dataset(
        data_root=f'{root}/gta5',
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        split=split)
    assert names(ds) == [f'{i:05d}' for i in GTA5_SPLIT[split]]
    assert read_gta5_split(f'{root}/gta5/split.mat',
                           split) == [f'{i:05d}' for i in GTA5_SPLIT[split]]


def test_gta5_drops_frames_the_converter_skipped(root, tmp_path):
    copy = shutil.copytree(f'{root}/gta5', tmp_path / 'gta5')
    os.remove(copy / 'labels' / '00002_labelTrainIds.png')
    ds = GTA5Dataset(
        data_root=str(copy),
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        seg_map_suffix='_labelTrainIds.png',
        split='train')
    assert names(ds) == ['00001', '00003', '00004']


def test_gta5_bad_arguments(root, tmp_path):
    kw = dict(data_root=f'{root}/gta5', data_prefix=dict(img_path='images', seg_map_path='labels'))
    with pytest.raises(ValueError, match="split must be one of .* got 'trainval'"):
        GTA5Dataset(split='trainval', **kw)
    with pytest.raises(ValueError, match='either split .* or ann_file'):
        GTA5Dataset(split='train', ann_file='train.txt', **kw)
    with pytest.raises(FileNotFoundError, match='GTA5 split file not found'):
        GTA5Dataset(split='train', split_file='nope.mat', **kw)
    with pytest.raises(ValueError, match='only supports the 19 Cityscapes classes'):
        GTA5Dataset(metainfo=dict(classes=('road', 'car')), **kw)
    from scipy.io import savemat
    savemat(tmp_path / 'bad.mat', dict(trainIds=np.array([[1]])))
    with pytest.raises(ValueError, match="has no 'valIds'"):
        read_gta5_split(str(tmp_path / 'bad.mat'), 'val')
    os.makedirs(tmp_path / 'empty' / 'images')
    with pytest.raises(ValueError, match='found no frames'):
        GTA5Dataset(
            data_root=str(tmp_path / 'empty'),
            data_prefix=dict(img_path='images', seg_map_path='labels'))


# ---------------------------------------------------------------- SYNTHIA
def test_synthia_lists_converted_labels(root):
    ds = SynthiaDataset(
        data_root=f'{root}/synthia', data_prefix=dict(img_path='RGB', seg_map_path='GT/LABELS'))
    assert names(ds) == [f'{i:07d}' for i in range(4)]
    assert ds.label_map is None
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        raw = info['seg_map_path'].replace('_labelTrainIds.png', '.png')
        class_ids = read_synthia_label(raw)
        assert set(np.unique(class_ids)) == set(SYNTHIA_EXPECTED)
        np.testing.assert_array_equal(load_label(info), apply(SYNTHIA_EXPECTED, class_ids))


def test_synthia_raw_16bit_labels(root):
    path = f'{root}/synthia/GT/LABELS/0000001.png'
    expected = id_map(SYNTHIA_EXPECTED, (32, 48), 11)
    np.testing.assert_array_equal(read_synthia_label(path), expected)
    # PIL reads the 16-bit RGB label as 8-bit RGB (high bytes): the class IDs are lost, hence the
    # converter.
    assert Image.open(path).mode == 'RGB'
    with pytest.raises(ValueError, match='raw 16-bit SYNTHIA labels'):
        SynthiaDataset(
            data_root=f'{root}/synthia',
            seg_map_suffix='.png',
            data_prefix=dict(img_path='RGB', seg_map_path='GT/LABELS'))


# ---------------------------------------------------------------- Mapillary, BDD100K, Cityscapes
def test_mapillary19_raw_and_converted(root, tmp_path):
    ds = Mapillary19Dataset(
        data_root=f'{root}/mapillary',
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'))
    assert names(ds) == ['val_00xYz', 'val_01xYz']
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        ids = np.array(Image.open(info['seg_map_path']))
        assert set(np.unique(ids)) == set(MAPILLARY_EXPECTED)
        np.testing.assert_array_equal(load_label(info), apply(MAPILLARY_EXPECTED, ids))
    with pytest.raises(ValueError, match='only supports the 19 Cityscapes classes'):
        Mapillary19Dataset(
            data_root=f'{root}/mapillary',
            metainfo=dict(classes=('road', )),
            data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'))


def test_bdd100k_and_cityscapes_layouts(root):
    bdd = BDD100KDataset(
        data_root=f'{root}/bdd100k',
        data_prefix=dict(img_path='images/10k/val', seg_map_path='labels/sem_seg/masks/val'))
    assert len(bdd) == 2 and osp.isfile(bdd.get_data_info(0)['seg_map_path'])
    cs = CityscapesDataset(
        data_root=f'{root}/cityscapes',
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'))
    assert len(cs) == NUM_CITY['val'] and all(
        osp.isfile(cs.get_data_info(i)['seg_map_path']) for i in range(2))
    assert bdd.metainfo['classes'] == cs.metainfo['classes'] == GTA5Dataset.METAINFO['classes']


# ---------------------------------------------------------------- mIoU over class subsets
def test_subset_miou_against_numpy():
    rng = np.random.default_rng(0)
    classes = CityscapesDataset.METAINFO['classes']
    gt = rng.integers(0, 19, (2, 40, 40))
    gt[0, :5] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 19, gt.shape)) % 19
    pred[gt ==
         9] = 3  # no terrain predicted right, so it differs between the 19- and 16-class means
    metric = SubsetIoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=classes)
    for p, g in zip(pred, gt):
        sample = SegDataSample()
        sample.pred_sem_seg = PixelData(data=torch.from_numpy(p)[None])
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(g)[None])
        metric.process({}, [sample.to_dict()])
    res = metric.compute_metrics(metric.results)
    valid = gt != 255
    iou = np.array([
        ((pred == c) & (gt == c) & valid).sum() / (((pred == c) | (gt == c)) & valid).sum()
        for c in range(19)
    ])
    keep16 = [c for c in range(19) if classes[c] not in ('terrain', 'truck', 'train')]
    keep13 = [c for c in keep16 if classes[c] not in ('wall', 'fence', 'pole')]
    assert res['mIoU'] == pytest.approx(100 * iou.mean(), abs=0.006)
    assert res['mIoU16'] == pytest.approx(100 * iou[keep16].mean(), abs=0.006)
    assert res['mIoU13'] == pytest.approx(100 * iou[keep13].mean(), abs=0.006)
    assert res['mIoU16'] != res['mIoU']
    assert subset_miou(iou, classes, {'x': ['road', 1]})['x'] == pytest.approx(
        100 * iou[:2].mean(), abs=0.006)


def test_subset_miou_bad_arguments():
    with pytest.raises(ValueError, match="subsets must be 'synthia'"):
        SubsetIoUMetric(subsets='gta5')
    with pytest.raises(TypeError, match='non-empty dict'):
        SubsetIoUMetric(subsets={})
    with pytest.raises(ValueError, match="needs 'mIoU'"):
        SubsetIoUMetric(iou_metrics=['mDice'])
    with pytest.raises(ValueError, match="class 'sky2' is not one of"):
        subset_miou(np.zeros(19), CityscapesDataset.METAINFO['classes'], {'a': ['sky2']})
    with pytest.raises(ValueError, match=r'class index 19 is outside \[0, 19\)'):
        subset_miou(np.zeros(19), CityscapesDataset.METAINFO['classes'], {'a': [19]})


# ---------------------------------------------------------------- detection
def foggy(root, betas, test_mode=True, split='val'):
    init_default_scope('mmdet')
    return FoggyCityscapesDataset(
        data_root=f'{root}/cityscapes',
        ann_file=f'annotations/instancesonly_filtered_gtFine_{split}.json',
        data_prefix=dict(img=f'leftImg8bit_foggy/{split}/'),
        betas=betas,
        test_mode=test_mode,
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=[])


def test_foggy_cityscapes_one_beta(root):
    ds = foggy(root, (0.02, ))
    assert len(ds) == NUM_CITY['val']
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        assert info['img_path'].endswith(f'aachen_{i:06d}_000019_leftImg8bit_foggy_beta_0.02.png')
        assert osp.isfile(info['img_path']) and info['img_id'] == i + 1
        assert [inst['bbox_label'] for inst in info['instances']] == [c for *_, c in city_boxes(i)]
        x, y, w, h, _ = city_boxes(i)[0]
        assert info['instances'][0]['bbox'] == [x, y, x + w, y + h]


def test_foggy_cityscapes_all_betas_and_filtering(root):
    ds = foggy(root, (0.005, 0.01, 0.02))
    assert len(ds) == 3 * NUM_CITY['val']
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    assert len({d['img_id'] for d in infos}) == len(ds)
    assert sorted(d['fog_beta'] for d in infos) == [0.005] * 2 + [0.01] * 2 + [0.02] * 2
    assert all(
        osp.isfile(d['img_path']) and f"beta_{d['fog_beta']:g}.png" in d['img_path'] for d in infos)
    # Training: Cityscapes' filtering runs on the json's frames (train frame 2 has no box), then x3
    # betas.
    train = foggy(root, [0.01, 0.02], test_mode=False, split='train')
    assert len(train) == 2 * (NUM_CITY['train'] - 1)
    assert not any('aachen_000002' in train.get_data_info(i)['img_path'] for i in range(len(train)))


@pytest.mark.parametrize('betas', [(0.02, ), (0.005, 0.01, 0.02)])
def test_foggy_ap50_of_perfect_and_partial_predictions(root, betas):
    """CocoMetric on the dataset's own ground truth: perfect boxes give AP50 = 1; predicting only
    the beta-0.02 copies of the frames halves/thirds the recall when several betas are evaluated
    (distinct image IDs)."""
    ds = foggy(root, betas)
    results = {}
    for only_last in (False, True):
        metric = CocoMetric(ann_file=None, metric='bbox')
        metric.dataset_meta = ds.metainfo
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            boxes = torch.tensor([inst['bbox'] for inst in info['instances']], dtype=torch.float32)
            labels = torch.tensor([inst['bbox_label'] for inst in info['instances']])
            if only_last and info['fog_beta'] != 0.02:
                boxes, labels = boxes[:0], labels[:0]
            pred = dict(bboxes=boxes, scores=torch.ones(len(boxes)), labels=labels)
            metric.process({}, [
                dict(
                    pred_instances=pred,
                    img_id=info['img_id'],
                    ori_shape=CITY_HW,
                    instances=info['instances'])
            ])
        results[only_last] = metric.compute_metrics(metric.results)['bbox_mAP_50']
    assert results[False] == pytest.approx(1.0)
    if len(betas) == 1:
        assert results[True] == pytest.approx(1.0)
    else:
        assert results[True] < 0.5


def test_foggy_bad_betas(root):
    for betas in [(), (0.03, ), (0.02, 0.02)]:
        with pytest.raises(ValueError, match='betas must be a non-empty subset'):
            foggy(root, betas)


def test_sim10k_car_only(root, tmp_path):
    init_default_scope('mmdet')
    kw = dict(data_root=f'{root}/sim10k', data_prefix=dict(sub_data_root='VOC2012/'), pipeline=[])
    ds = Sim10kDataset(test_mode=True, **kw)
    assert [ds.get_data_info(i)['img_id'] for i in range(len(ds))] == sorted(SIM10K_OBJECTS)
    for i, (name, objects) in enumerate(sorted(SIM10K_OBJECTS.items())):
        info = ds.get_data_info(i)
        assert osp.isfile(
            info['img_path']) and info['img_path'].endswith(f'VOC2012/JPEGImages/{name}.jpg')
        cars = [[x1 - 1, y1 - 1, x2 - 1, y2 - 1] for c, x1, y1, x2, y2 in objects if c == 'car']
        assert [inst['bbox'] for inst in info['instances']] == cars  # VOC 1-based -> 0-based
        assert all(inst['bbox_label'] == 0 for inst in info['instances'])
    train = Sim10kDataset(filter_cfg=dict(filter_empty_gt=True, min_size=32), **kw)
    assert len(train) == 2  # the car-less frame is dropped
    (tmp_path / 'one.txt').write_text('3384647\n')
    assert len(Sim10kDataset(ann_file=str(tmp_path / 'one.txt'), test_mode=True, **kw)) == 1
    with pytest.raises(FileNotFoundError, match='Sim10k ann_file not found'):
        Sim10kDataset(ann_file='missing.txt', test_mode=True, **kw)


def test_cityscapes_car_only_through_metainfo(root):
    from mmdet.datasets import CityscapesDataset as DetCityscapes
    init_default_scope('mmdet')
    ds = DetCityscapes(
        data_root=f'{root}/cityscapes',
        metainfo=dict(classes=('car', )),
        ann_file='annotations/instancesonly_filtered_gtFine_val.json',
        data_prefix=dict(img='leftImg8bit/val/'),
        test_mode=True,
        pipeline=[])
    for i in range(len(ds)):
        expected = [[x, y, x + w, y + h] for x, y, w, h, c in city_boxes(i) if c == 2]
        assert [inst['bbox'] for inst in ds.get_data_info(i)['instances']] == expected
        assert all(inst['bbox_label'] == 0 for inst in ds.get_data_info(i)['instances'])
