"""The demo's synthetic domains: real GTA5 / Cityscapes layouts, correct labels, a real
appearance shift."""
import json
import os.path as osp

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from PIL import Image

from mmnorm.datasets.synthetic import apply_target_shift, generate_demo_data, render_scene

LABEL_IDS = {7, 8, 11, 17, 21, 23, 24, 26}


def test_layouts_on_disk(tiny_demo_data):
    src = osp.join(tiny_demo_data, 'gta5')
    label = Image.open(osp.join(src, 'labels', '00001.png'))
    assert label.mode == 'P'  # palette PNG of Cityscapes label IDs, as GTA5 ships them
    ids = set(np.unique(np.asarray(label)).tolist())
    assert ids <= LABEL_IDS and {7, 23} <= ids  # road and sky in every frame
    assert open(osp.join(src, 'train.txt')).read().split() == [f'{i:05d}' for i in range(1, 9)]
    assert open(osp.join(src, 'val.txt')).read().split() == [f'{i:05d}' for i in range(9, 13)]
    tgt = osp.join(tiny_demo_data, 'cityscapes')
    stem = 'synth_000000_000000'
    img = Image.open(osp.join(tgt, 'leftImg8bit', 'val', 'synth', stem + '_leftImg8bit.png'))
    assert img.size == (128, 64) and img.mode == 'RGB'
    train_ids = np.asarray(
        Image.open(osp.join(tgt, 'gtFine', 'val', 'synth', stem + '_gtFine_labelTrainIds.png')))
    label_ids = np.asarray(
        Image.open(osp.join(tgt, 'gtFine', 'val', 'synth', stem + '_gtFine_labelIds.png')))
    assert np.all((label_ids == 7) == (train_ids == 0)) and np.all(
        (label_ids == 26) == (train_ids == 13))


def test_datasets_read_the_layouts(tiny_demo_data):
    init_default_scope('mmseg')
    from mmseg.datasets import CityscapesDataset

    from mmnorm.datasets import GTA5Dataset
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    src = GTA5Dataset(
        data_root=osp.join(tiny_demo_data, 'gta5'),
        ann_file='val.txt',
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        pipeline=pipeline)
    assert len(src) == 4
    sample = src[0]
    raw = np.asarray(Image.open(sample['seg_map_path']))
    gt = sample['gt_seg_map']
    # label IDs -> train IDs (METHODS.md): road 7->0, sidewalk 8->1, building 11->2, pole 17->5,
    # vegetation 21->8, sky 23->10, person 24->11, car 26->13
    for label_id, train_id in {7: 0, 8: 1, 11: 2, 17: 5, 21: 8, 23: 10, 24: 11, 26: 13}.items():
        assert np.all(gt[raw == label_id] == train_id)
    tgt = CityscapesDataset(
        data_root=osp.join(tiny_demo_data, 'cityscapes'),
        pipeline=pipeline,
        data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'))
    assert len(tgt) == 4 and set(np.unique(tgt[0]['gt_seg_map'])) <= {0, 1, 2, 5, 8, 10, 11, 13}


def test_target_shift_is_real():
    rng = np.random.default_rng(0)
    image, label, depth = render_scene(rng)
    assert image.shape == (64, 128, 3) and np.isinf(depth[label == 23]).all()
    fog_only = apply_target_shift(image, label, depth, np.random.default_rng(1), 'fog')
    # fog: far pixels move towards the airlight more than near ones (t = exp(-beta * depth))
    near, far = depth < 10, np.isinf(depth)
    change = np.abs(fog_only - image).mean(axis=2)
    assert change[far].mean() > 3 * change[near].mean()
    full = apply_target_shift(image, label, depth, np.random.default_rng(1), 'full')
    assert np.abs(full.mean(axis=(0, 1)) -
                  image.mean(axis=(0, 1))).max() > 0.05  # colour statistics moved
    assert np.array_equal(apply_target_shift(image, label, depth, rng, 'none'), image)
    with pytest.raises(ValueError, match="shift must be one of .* got 'snow'"):
        apply_target_shift(image, label, depth, rng, 'snow')


def test_generation_is_idempotent_and_protected(tmp_path):
    root = str(tmp_path / 'd')
    kwargs = dict(num_source_train=2, num_source_val=1, num_target_train=1, num_target_val=1)
    generate_demo_data(root, **kwargs)
    before = open(osp.join(root, 'gta5', 'images', '00001.png'), 'rb').read()
    generate_demo_data(root, **kwargs)  # same settings: nothing rewritten
    assert open(osp.join(root, 'gta5', 'images', '00001.png'), 'rb').read() == before
    assert json.load(open(osp.join(root, 'meta.json')))['num_source_train'] == 2
    with pytest.raises(FileExistsError, match='demo data made with other settings'):
        generate_demo_data(root, **dict(kwargs, seed=5))
    generate_demo_data(root, **dict(kwargs, seed=5), overwrite=True)
    assert open(osp.join(root, 'gta5', 'images', '00001.png'), 'rb').read() != before
