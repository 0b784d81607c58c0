"""Dataset release layouts beyond the main fixtures: Mapillary Vistas' v1.2 research edition next to
the v2.0 archive (detected by the converter and the dataset), GTA5 frames whose raw image and label
sizes differ (refused by the dataset with the converter command), the older BDD100K release."""
import json
import os
import os.path as osp
import time

import numpy as np
import pytest
from dataset_fixtures import (GTA5_EXPECTED, MAPILLARY_EXPECTED, apply, build_fixture_data,
                              write_bdd100k_older_release, write_gta5_mismatched,
                              write_mapillary_research_edition)
from mmseg.datasets import BDD100KDataset
from mmseg.datasets.transforms import LoadAnnotations
from PIL import Image
from tool_loader import load_tool

from mmnorm.datasets import GTA5Dataset, Mapillary19Dataset
from mmnorm.datasets.gta5 import find_size_mismatches
from mmnorm.datasets.mapillary import find_label_dir
from mmnorm.runtime import UserError


def converter(name):
    return load_tool(f'dataset_converters/{name}').main


def seg_map(dataset, i):
    return LoadAnnotations()(dict(dataset.get_data_info(i)))['gt_seg_map']


@pytest.fixture(scope='module')
def research_edition(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('mapillary_v12') / 'mapillary')
    write_mapillary_research_edition(root)
    return root


def test_mapillary_research_edition_converted_and_read(research_edition):
    root = research_edition
    assert find_label_dir(root, 'validation') == osp.join(root, 'validation', 'labels')
    assert converter('mapillary')([root]) == 0
    report = json.load(open(osp.join(root, 'mapillary_conversion_report.json')))
    assert report['summary']['converted'] == 3 and report['summary']['total'] == 3
    # the shipped configs name the v2.0 archive's folder: the dataset reads the edition's instead
    kw = dict(
        data_root=root,
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/v1.2/labels'))
    raw = Mapillary19Dataset(**kw)
    converted = Mapillary19Dataset(seg_map_suffix='_labelTrainIds.png', **kw)
    assert len(raw) == len(converted) == 2
    shapes = set()
    for i in range(2):
        path = raw.get_data_info(i)['seg_map_path']
        assert path.startswith(osp.join(root, 'validation', 'labels') + os.sep)
        ids = np.array(Image.open(path))
        expected = apply(MAPILLARY_EXPECTED, ids)
        np.testing.assert_array_equal(seg_map(raw, i), expected)
        np.testing.assert_array_equal(seg_map(converted, i), expected)
        shapes.add(ids.shape)
    assert shapes == {(36, 48), (48, 36)}  # portrait and landscape frames


def test_mapillary_v20_archive_layout_still_first(tmp_path_factory):
    root = build_fixture_data(tmp_path_factory.getbasetemp() / 'mmnorm_data')  # v2.0 archive
    mapillary = osp.join(root, 'mapillary')
    assert find_label_dir(mapillary, 'validation') == osp.join(mapillary, 'validation', 'v1.2',
                                                               'labels')
    ds = Mapillary19Dataset(
        data_root=mapillary,
        data_prefix=dict(img_path='validation/images', seg_map_path='validation/labels'))
    assert ds.get_data_info(0)['seg_map_path'].startswith(
        osp.join(mapillary, 'validation', 'v1.2', 'labels'))


def test_mapillary_missing_label_folder_exit_2(tmp_path, capsys):
    os.makedirs(tmp_path / 'validation' / 'images')
    assert find_label_dir(str(tmp_path), 'validation') is None
    assert converter('mapillary')([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for folder in ('validation/v1.2/labels', 'validation/labels'):
        assert repr(str(tmp_path / folder)) in err


@pytest.fixture(scope='module')
def gta5_mismatched(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('gta5_real') / 'gta5')
    return root, write_gta5_mismatched(root)


def test_gta5_raw_labels_size_mismatch_refused(gta5_mismatched):
    root, sizes = gta5_mismatched
    kw = dict(data_root=root, data_prefix=dict(img_path='images', seg_map_path='labels'))
    with pytest.raises(UserError) as exc:
        GTA5Dataset(**kw)
    message = str(exc.value)
    assert '\n' not in message
    assert 'frame 00002 has a 1914x1052 image and a 1914x1046 label (and 1 more frames)' in message
    assert f'tools/dataset_converters/gta5.py {root}' in message
    t0 = time.perf_counter()
    found = find_size_mismatches([
        dict(img_path=f'{root}/images/{n}.png', seg_map_path=f'{root}/labels/{n}.png')
        for n in sizes
    ])
    per_frame = (time.perf_counter() - t0) / len(sizes)
    expected = [(f'{n}.png', img[::-1], label[::-1]) for n, (img, label) in sizes.items()
                if img != label]  # PIL sizes are (w, h)
    assert [(osp.basename(p), a, b) for p, a, b in found] == expected
    assert per_frame < 0.02  # headers only: decoding a 1914x1052 PNG takes far longer


def test_gta5_converted_labels_accepted(gta5_mismatched, tmp_path):
    root, sizes = gta5_mismatched
    out = str(tmp_path / 'converted')
    assert converter('gta5')([root, '--out-dir', out, '--report', str(tmp_path / 'r.json')]) == 0
    ds = GTA5Dataset(
        data_root=root,
        data_prefix=dict(img_path='images', seg_map_path=out),
        seg_map_suffix='_labelTrainIds.png',
        split='train')
    assert len(ds) == 3
    for i, (name, (img_hw, label_hw)) in enumerate(sizes.items()):
        label = seg_map(ds, i)
        assert label.shape == img_hw  # the converter resized the label to the image
        raw = np.array(Image.open(f'{root}/labels/{name}.png'))
        assert set(np.unique(label)) == set(np.unique(apply(GTA5_EXPECTED, raw)))
        if img_hw == label_hw:
            np.testing.assert_array_equal(label, apply(GTA5_EXPECTED, raw))
    # raw labels of the frames whose sizes match: accepted
    (tmp_path / 'ok.txt').write_text('00001\n')
    ok = GTA5Dataset(
        data_root=root,
        data_prefix=dict(img_path='images', seg_map_path='labels'),
        ann_file=str(tmp_path / 'ok.txt'))
    assert len(ok) == 1


def test_bdd100k_older_release_layout(tmp_path):
    root = str(tmp_path / 'bdd100k')
    write_bdd100k_older_release(root)
    ds = BDD100KDataset(
        data_root=root,
        data_prefix=dict(img_path='seg/images/val', seg_map_path='seg/labels/val'),
        seg_map_suffix='_train_id.png')
    assert len(ds) == 2
    for i in range(2):
        info = ds.get_data_info(i)
        assert info['seg_map_path'].endswith('_train_id.png')
        np.testing.assert_array_equal(seg_map(ds, i), np.array(Image.open(info['seg_map_path'])))
