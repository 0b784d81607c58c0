"""Class-uniform sampling (RobustNet): the centroid index against scipy's centre of mass, the draw
frequencies against the authors' epoch composition, rare-class crops through the real mmseg
pipeline, determinism under a seed, the cache file and bad arguments; 2 ranks share one index."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, tool_env
from PIL import Image
from scipy import ndimage

from mmnorm.datasets.class_uniform import (ClassUniformDataset, class_centroids,
                                           class_probabilities, draw_class_uniform, tile_origins)
from mmnorm.validation import ArgumentError

CLASSES = ('road', 'car', 'rare')
HW = (64, 96)
NUM_IMAGES = 20
RARE_IMAGES = (3, 11)  # the only images holding class 2
RARE_BOX = (slice(40, 50), slice(70, 80))  # rows, columns of the rare square (in tile (64, 32))


def write_data(root, num_images=NUM_IMAGES):
    """Images and train-ID labels: 'road' below row 32, 'car' above (ignore 255 in a band), 'rare'
    as a 10x10 square in two images."""
    os.makedirs(osp.join(root, 'img'))
    os.makedirs(osp.join(root, 'ann'))
    rng = np.random.RandomState(0)
    for i in range(num_images):
        label = np.zeros(HW, np.uint8)
        label[:32] = 1
        label[30:34] = 255
        if i in RARE_IMAGES:
            label[RARE_BOX] = 2
        Image.fromarray(rng.randint(0, 255, HW + (3, ),
                                    np.uint8)).save(osp.join(root, 'img', f'{i:03d}.png'))
        Image.fromarray(label).save(osp.join(root, 'ann', f'{i:03d}.png'))
    return root


@pytest.fixture
def data_root(tmp_path):
    return write_data(str(tmp_path / 'data'))


def dataset_cfg(root, crop=(16, 16), resize=None, meta=True):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    if resize:
        pipeline.append(dict(type='Resize', scale=resize, keep_ratio=True))
    pipeline += [dict(type='ClassUniformCrop', crop_size=crop), dict(type='RandomFlip', prob=0.5)]
    keys = ('img_path', 'scale_factor', 'flip') + (('class_uniform', ) if meta else ())
    pipeline.append(dict(type='PackSegInputs', meta_keys=keys))
    return dict(
        type='BaseSegDataset',
        data_root=root,
        data_prefix=dict(img_path='img', seg_map_path='ann'),
        img_suffix='.png',
        seg_map_suffix='.png',
        metainfo=dict(classes=CLASSES),
        pipeline=pipeline)


def build(root, **kwargs):
    from mmseg.utils import register_all_modules

    import mmnorm  # noqa: F401 (registers)
    register_all_modules(init_default_scope=True)
    ds = ClassUniformDataset(dataset_cfg(root, **kwargs.pop('cfg', {})), **kwargs)
    ds.full_init()
    return ds


def test_centroids_match_scipy_center_of_mass():
    rng = np.random.RandomState(1)
    label = rng.choice([0, 1, 2, 255], size=(70, 100), p=[0.5, 0.3, 0.05, 0.15]).astype(np.uint8)
    label[:, :40][label[:, :40] == 2] = 0  # class 2 only in the right part
    got = class_centroids(label, 3, 32)
    # 2 x 3 whole tiles; the 6-row and 4-column remainders are not indexed (authors' tiling)
    assert tile_origins(70, 100, 32) == [(0, 0), (32, 0), (64, 0), (0, 32), (32, 32), (64, 32)]
    for c in range(3):
        expect = []
        for x0, y0 in tile_origins(70, 100, 32):
            patch = label[y0:y0 + 32, x0:x0 + 32] == c
            if patch.any():
                cy, cx = ndimage.center_of_mass(patch.astype(int))
                expect.append((int(cx) + x0, int(cy) + y0))
        assert got.get(c, []) == expect
    assert 255 not in got and len(got[2]) == 4  # tiles at x 32 and 64 only


def authors_epoch_shares(num_records, pct, epoch=100000):
    """RobustNet's build_epoch composition: int(N * pct / C) records of each class that has any,
    the rest plain; share of each class in the epoch."""
    num_classes = len(num_records)
    per_class = int(epoch * pct / num_classes)
    present = np.asarray(num_records) > 0
    length = epoch - num_classes * per_class + per_class * present.sum()
    return np.where(present, per_class / length, 0.0)


@pytest.mark.parametrize('pct', [0.5, 0.9])
def test_draw_frequencies_follow_the_authors_epoch(pct):
    records = [np.array([[0, 1, 1]] * 5), np.empty((0, 3), int), np.array([[1, 2, 2]]), []]
    records[3] = np.array([[2, 3, 3], [3, 4, 4]])
    probs = class_probabilities([len(r) for r in records], pct)
    np.testing.assert_allclose(probs, authors_epoch_shares([5, 0, 1, 2], pct), atol=2e-4)
    rng = np.random.RandomState(0)
    n = 20000
    draws = [draw_class_uniform(rng, records, pct) for _ in range(n)]
    counts = np.bincount([d[0] for d in draws if d is not None], minlength=4)
    sigma = np.sqrt(n * probs * (1 - probs))
    assert np.all(np.abs(counts - n * probs) <= 4 * sigma + 1e-9), (counts, n * probs)
    assert counts[1] == 0
    # records of a class are drawn uniformly: class 3's two records about equally often
    picks = [d[1] for d in draws if d is not None and d[0] == 3]
    assert abs(np.mean(np.array(picks) == 2) - 0.5) < 4 * np.sqrt(0.25 / len(picks))
    assert draw_class_uniform(rng, [np.empty((0, 3))] * 3, pct) is None  # no records: plain


def plain_crop_hit_rate(crop=16):
    """Exact chance that mmseg's RandomCrop (offsets uniform) of one rare image holds a rare
    pixel."""
    (r0, r1), (c0, c1) = (RARE_BOX[0].start, RARE_BOX[0].stop), (RARE_BOX[1].start,
                                                                 RARE_BOX[1].stop)
    ys = [y for y in range(HW[0] - crop + 1) if y < r1 and y + crop > r0]
    xs = [x for x in range(HW[1] - crop + 1) if x < c1 and x + crop > c0]
    return len(ys) * len(xs) / ((HW[0] - crop + 1) * (HW[1] - crop + 1))


def rare_crops(ds, n, seed):
    np.random.seed(seed)
    hits, drawn = [], []
    for i in range(n):
        sample = ds[i % len(ds)]
        seg = sample['data_samples'].gt_sem_seg.data
        hits.append(bool((seg == 2).any()))
        drawn.append((sample['data_samples'].get('class_uniform') or {}).get('class_id'))
    return np.array(hits), drawn


def test_rare_class_frequency_rises_as_the_method_says(data_root):
    n = 600
    plain = build(data_root, class_uniform_pct=0.0, tile_size=32, cache=False)
    hits, drawn = rare_crops(plain, n, seed=0)
    q = len(RARE_IMAGES) / NUM_IMAGES * plain_crop_hit_rate()  # 0.0167
    assert set(drawn) == {None}
    assert abs(hits.mean() - q) <= 4 * np.sqrt(q * (1 - q) / n)

    # labels resized x2 before the crop: the centroid is rescaled with the image
    uniform = build(
        data_root, class_uniform_pct=0.5, tile_size=32, cache=False, cfg=dict(resize=(192, 128)))
    p_rare = uniform.class_probabilities()[2]
    assert p_rare == pytest.approx(0.5 / 3)  # every class has records
    assert uniform.sample_counts()[2] == len(RARE_IMAGES)  # one tile holds each rare square
    hits, drawn = rare_crops(uniform, n, seed=0)
    rare_drawn = np.array([d == 2 for d in drawn])
    assert abs(rare_drawn.mean() - p_rare) <= 4 * np.sqrt(p_rare * (1 - p_rare) / n)
    assert hits[rare_drawn].all()  # every crop centred on a rare centroid holds the class
    assert hits.mean() >= p_rare - 4 * np.sqrt(p_rare * (1 - p_rare) / n) and hits.mean() > 5 * q


def test_same_seed_same_crops(data_root):
    ds = build(data_root, class_uniform_pct=0.5, tile_size=32, cache=False)

    def run(seed):
        np.random.seed(seed)
        return [(ds[i]['data_samples'].img_path, ds[i]['inputs'].sum().item()) for i in range(12)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_index_is_cached_once_and_never_overwrites(data_root, tmp_path):
    ds = build(data_root, tile_size=32)
    files = glob.glob(osp.join(data_root, '.mmnorm_class_centroids_BaseSegDataset_tile32_*.json'))
    assert len(files) == 1
    with open(files[0]) as f:
        payload = json.load(f)
    assert payload['format'] == 'mmnorm-class-centroids-v1' and payload['num_images'] == NUM_IMAGES
    mtime = os.stat(files[0]).st_mtime_ns
    again = build(data_root, tile_size=32)
    assert os.stat(files[0]).st_mtime_ns == mtime  # read, not rebuilt
    for a, b in zip(ds.records, again.records):
        np.testing.assert_array_equal(a, b)
    # another tile size or changed labels: another file; cache=False or cache_dir: not data_root
    build(data_root, tile_size=16)
    Image.fromarray(np.zeros(HW, np.uint8)).save(osp.join(data_root, 'ann', '000.png'))
    build(data_root, tile_size=32)
    assert len(glob.glob(osp.join(data_root, '.mmnorm_class_centroids_*'))) == 3
    build(data_root, tile_size=8, cache=False)
    build(data_root, tile_size=8, cache_dir=str(tmp_path / 'cache'))
    assert len(glob.glob(osp.join(data_root, '.mmnorm_class_centroids_*'))) == 3
    assert len(os.listdir(tmp_path / 'cache')) == 1
    # a foreign file of the same name is refused, not overwritten
    name = os.listdir(tmp_path / 'cache')[0]
    with open(tmp_path / 'cache' / name, 'w') as f:
        json.dump({'mine': 1}, f)
    with pytest.raises(ArgumentError, match='not an mmnorm class-centroid cache'):
        build(data_root, tile_size=8, cache_dir=str(tmp_path / 'cache'))
    assert json.load(open(tmp_path / 'cache' / name)) == {'mine': 1}


def test_bad_arguments(data_root):
    with pytest.raises(ArgumentError, match='class_uniform_pct must be in'):
        build(data_root, class_uniform_pct=1.5)
    with pytest.raises(ArgumentError, match='tile_size must be a positive int, got 0'):
        build(data_root, tile_size=0)
    cfg = dataset_cfg(data_root)
    cfg['pipeline'][2] = dict(type='RandomCrop', crop_size=(16, 16))
    with pytest.raises(ArgumentError, match='exactly one ClassUniformCrop'):
        ClassUniformDataset(cfg)
    cfg = dataset_cfg(data_root)
    cfg['pipeline'][2:4] = cfg['pipeline'][3:1:-1]  # flip, then crop
    with pytest.raises(ArgumentError, match='before flips'):
        ClassUniformDataset(cfg)


DIST_SCRIPT = """
import sys, numpy as np
from mmengine.dist import get_rank
from mmnorm_tools.launcher import init_cpu_process_group
init_cpu_process_group('pytorch')
sys.path.insert(0, sys.argv[2])
from test_class_uniform import build
ds = build(sys.argv[1], tile_size=32)
np.save(f'{sys.argv[3]}/rank{get_rank()}.npy', np.concatenate(ds.records))
"""


@pytest.mark.slow
def test_two_ranks_build_one_index(data_root, tmp_path, port):
    """Rank 0 builds and writes the index, rank 1 waits at the barrier and reads the same one."""
    script = tmp_path / 'build_index.py'
    script.write_text(DIST_SCRIPT)
    cmd = [
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        f'--master_port={port}',
        str(script), data_root,
        osp.join(REPO, 'tests'),
        str(tmp_path)
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=tool_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    np.testing.assert_array_equal(np.load(tmp_path / 'rank0.npy'), np.load(tmp_path / 'rank1.npy'))
    assert len(np.load(tmp_path / 'rank0.npy')) > NUM_IMAGES
    assert len(glob.glob(osp.join(data_root, '.mmnorm_class_centroids_*'))) == 1
    assert not glob.glob(osp.join(data_root, '.*.tmp-*'))
