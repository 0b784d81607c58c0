"""Class-uniform sampling as RobustNet trains with it (Choi et al., "RobustNet: Improving Domain
Generalization in Urban-Scene Segmentation via Instance Selective Whitening", CVPR 2021,
arXiv 2103.15597; the scheme comes from NVIDIA's semantic-segmentation code it builds on).

Index: every label map is cut into ``tile_size`` x ``tile_size`` tiles from the top-left corner
(``H // tile_size`` rows x ``W // tile_size`` columns; the remainder strips are not indexed, as in
the authors' code: a 1914x1052 GTA5 frame has one 1024 tile, a 2048x1024 Cityscapes frame two).
For each tile and each class present in it, the class's centre of mass in the tile (truncated to
int, in pixels of the full label) is one *centroid* record ``(sample, x, y)``.

Sampling: with probability ``class_uniform_pct`` a sample is class-uniform: a class is drawn
uniformly among the ``num_classes`` classes, then one of its centroid records uniformly, and the
crop is taken so that it contains the (rescaled) centroid. A drawn class without any record is
redrawn together with the choice between class-uniform and plain, which gives each class with
records the share the authors' epoch list gives it:
``P(class c) = (pct / C) / (1 - pct * C_missing / C)`` (their epoch holds ``int(N * pct / C)``
records per class with records and ``N - C * int(N * pct / C)`` plain samples). Otherwise the
sample is the plain one the sampler asked for.

:class:`ClassUniformDataset` wraps an mmseg dataset (builds, caches and draws from the index);
:class:`ClassUniformCrop` is mmseg's ``RandomCrop`` that honours the drawn centroid (the
authors' rule: ``x1 ~ U{cx - w_crop, cx}`` clipped into the image, same for y).
"""
import hashlib
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.dist import barrier, get_rank
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations, RandomCrop
from mmseg.registry import DATASETS, TRANSFORMS

from ..validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = [
    'tile_origins', 'class_centroids', 'draw_class_uniform', 'class_probabilities',
    'ClassUniformDataset', 'ClassUniformCrop'
]

CACHE_FORMAT = 'mmnorm-class-centroids-v1'
# key of the drawn centroid in the pipeline's results dict
RESULTS_KEY = 'class_uniform'


def tile_origins(height: int, width: int, tile_size: int) -> List[Tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the whole tiles of a ``height`` x ``width`` map, row by
    row (remainder strips are not tiles)."""
    return [(x * tile_size, y * tile_size) for y in range(height // tile_size)
            for x in range(width // tile_size)]


def class_centroids(label: np.ndarray, num_classes: int,
                    tile_size: int) -> Dict[int, List[Tuple[int, int]]]:
    """Centroids of every class in every tile of one label map.

    Args:
        label (np.ndarray): (H, W) integer train IDs; values outside [0, num_classes) (ignore)
            are skipped.
        num_classes (int): Number of classes.
        tile_size (int): Tile side in pixels.

    Returns:
        dict[int, list[tuple[int, int]]]: class -> ``(x, y)`` per tile holding it: the class
        pixels' mean column and row in the tile, truncated to int, plus the tile's origin.
    """
    rows, cols = label.shape[0] // tile_size, label.shape[1] // tile_size
    inside = label[:rows * tile_size, :cols * tile_size].astype(np.int64)
    ys, xs = np.indices(inside.shape)
    valid = (inside >= 0) & (inside < num_classes)
    # one bin per (tile, class): pixel count and the sums of columns and rows
    tile = (ys // tile_size) * cols + xs // tile_size
    key = (tile * num_classes + inside)[valid]
    size = rows * cols * num_classes
    count = np.bincount(key, minlength=size)
    sum_x = np.bincount(key, weights=xs[valid], minlength=size)
    sum_y = np.bincount(key, weights=ys[valid], minlength=size)
    out = {}
    for k in np.flatnonzero(count):  # tile-major, as the tiles are listed
        # integer sums are exact in float64; the mean is truncated as the authors' int() (in tile
        # coordinates, the same as truncating in image coordinates: the origin is an integer)
        point = (int(sum_x[k] / count[k]), int(sum_y[k] / count[k]))
        out.setdefault(int(k) % num_classes, []).append(point)
    return out


def class_probabilities(num_records: Sequence[int], class_uniform_pct: float) -> np.ndarray:
    """Probability that a sample is a class-uniform crop of each class.

    Args:
        num_records (Sequence[int]): (num_classes,) number of centroid records per class.
        class_uniform_pct (float): Share of class-uniform samples.

    Returns:
        np.ndarray: (num_classes,) ``(pct / C) / (1 - pct * C_missing / C)`` for classes with
        records, 0 for the others (all 0 when no class has records).
    """
    present = np.asarray(num_records) > 0
    if not present.any():
        return np.zeros(len(present))
    num_classes = len(present)
    missing = num_classes - int(present.sum())
    share = class_uniform_pct / num_classes / (1 - class_uniform_pct * missing / num_classes)
    return np.where(present, share, 0.0)


def draw_class_uniform(rng: np.random.RandomState, records: Sequence[np.ndarray],
                       class_uniform_pct: float) -> Optional[Tuple[int, int, int, int]]:
    """One draw of the sampling scheme (see the module docstring).

    Args:
        rng (np.random.RandomState | module): Source of randomness (``np.random`` in the dataset,
            so mmengine's seeding of each worker controls it).
        records (Sequence[np.ndarray]): Per class an (n_c, 3) int array of ``(sample, x, y)``.
        class_uniform_pct (float): Share of class-uniform samples.

    Returns:
        tuple | None: ``(class, sample, x, y)`` of a class-uniform draw, None for a plain sample.
    """
    if not any(len(r) for r in records):
        return None
    while True:
        if rng.random_sample() >= class_uniform_pct:
            return None
        c = rng.randint(len(records))
        if len(records[c]):
            sample, x, y = records[c][rng.randint(len(records[c]))]
            return c, int(sample), int(x), int(y)


@TRANSFORMS.register_module()
class ClassUniformCrop(RandomCrop):
    """mmseg's ``RandomCrop``, except for a class-uniform sample (``results['class_uniform']``
    set by :class:`ClassUniformDataset`): then the crop contains the drawn centroid, rescaled by
    the preceding resize's ``scale_factor``: ``x1 ~ U{cx - w_crop, ..., cx}`` clipped into
    ``[0, W - w_crop]``, same for y (no ``cat_max_ratio`` retries), as RobustNet crops.

    Place it after the resize and before any flip. Args: see ``mmseg RandomCrop``
    (``crop_size`` is (h, w)).
    """

    def crop_bbox(self, results: dict) -> tuple:
        drawn = results.get(RESULTS_KEY)
        if drawn is None:
            return super().crop_bbox(results)
        height, width = results['img'].shape[:2]
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        scale_w, scale_h = results.get('scale_factor', (1.0, 1.0))
        cx, cy = int(drawn['x'] * scale_w), int(drawn['y'] * scale_h)
        x1 = min(max(np.random.randint(cx - crop_w, cx + 1), 0), width - crop_w)
        y1 = min(max(np.random.randint(cy - crop_h, cy + 1), 0), height - crop_h)
        return y1, y1 + crop_h, x1, x1 + crop_w


@DATASETS.register_module()
class ClassUniformDataset:
    """An mmseg dataset sampled class-uniformly (RobustNet); see the module docstring.

    The index of class centroids is computed once from the labels as the dataset's own
    ``LoadAnnotations`` reads them (``label_map`` included) and cached as JSON in ``cache_dir``
    under the name ``.mmnorm_class_centroids_<Dataset>_tile<T>_<key>.json``, where ``key`` hashes
    the label files (paths, sizes, modification times), the label map, ``tile_size`` and the
    number of classes: a changed dataset gets a new file, and no existing file is ever
    overwritten. Rank 0 builds and writes it, the other ranks wait and read it (or, without a
    cache, build the same index themselves).

    Args:
        dataset (dict | BaseDataset): The wrapped mmseg dataset; its pipeline must hold a
            ``LoadAnnotations`` and a :class:`ClassUniformCrop`.
        class_uniform_pct (float): Share of class-uniform samples, in [0, 1]. Defaults to 0.5
            (RobustNet's ``--class_uniform_pct``).
        tile_size (int): Tile side in label pixels. Defaults to 1024 (``--class_uniform_tile``).
        cache_dir (str, optional): Folder of the index cache; None uses the wrapped dataset's
            ``data_root``. Defaults to None.
        cache (bool): False builds the index on every start and writes nothing. Defaults to True.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 class_uniform_pct: float = 0.5,
                 tile_size: int = 1024,
                 cache_dir: Optional[str] = None,
                 cache: bool = True) -> None:
        if isinstance(class_uniform_pct, bool) or not isinstance(class_uniform_pct, (int, float)):
            raise ArgumentTypeError(
                f'class_uniform_pct must be a number in [0, 1], got {class_uniform_pct!r}')
        if not 0 <= class_uniform_pct <= 1:
            raise ArgumentError(
                f'class_uniform_pct must be in [0, 1], got class_uniform_pct={class_uniform_pct}')
        self.class_uniform_pct = float(class_uniform_pct)
        self.tile_size = check_positive_int(tile_size, 'tile_size')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.cache = bool(cache)
        self.cache_dir = cache_dir
        self._loader = self._check_pipeline()
        self.records: Optional[List[np.ndarray]] = None
        self._fully_initialized = False

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def __len__(self) -> int:
        return len(self.dataset)

    def _check_pipeline(self) -> LoadAnnotations:
        transforms = list(getattr(self.dataset.pipeline, 'transforms', []))
        names = [type(t).__name__ for t in transforms]
        loaders = [t for t in transforms if isinstance(t, LoadAnnotations)]
        crops = [i for i, t in enumerate(transforms) if isinstance(t, ClassUniformCrop)]
        if not loaders or len(crops) != 1:
            raise ArgumentError(
                'ClassUniformDataset needs a LoadAnnotations and exactly one ClassUniformCrop in '
                f'the wrapped dataset pipeline, got {names}')
        if any('Flip' in n or 'Rotat' in n for n in names[:crops[0]]):
            raise ArgumentError('ClassUniformCrop must come before flips and rotations (the drawn '
                                f'centroid is in unflipped pixels), got pipeline {names}')
        return loaders[0]

    def full_init(self) -> None:
        """Initialises the wrapped dataset and loads (or builds) the centroid index."""
        if self._fully_initialized:
            return
        self.dataset.full_init()
        self.num_classes = len(self.dataset.metainfo['classes'])
        infos = [self.dataset.get_data_info(i) for i in range(len(self.dataset))]
        path = self.cache_path(infos)
        index = None
        if path is not None and get_rank() == 0:
            index = self._read(path)
            if index is None:
                index = self._build(infos)
                self._write(path, index)
        barrier()
        if index is None and path is not None:
            index = self._read(path)
        if index is None:
            index = self._build(infos)
        self.records = [
            np.asarray(index.get(str(c), []), dtype=np.int64).reshape(-1, 3)
            for c in range(self.num_classes)
        ]
        counts = [len(r) for r in self.records]
        print_log(
            f'ClassUniformDataset: {sum(counts)} centroid records over {len(infos)} images '
            f'(tile {self.tile_size}); per class {counts}',
            logger='current')
        self._fully_initialized = True

    def cache_path(self, infos: Sequence[dict]) -> Optional[str]:
        """The cache file for these samples (None without a cache or a folder for it)."""
        folder = self.cache_dir or getattr(self.dataset, 'data_root', None)
        if not self.cache or not folder:
            return None
        key = hashlib.sha1()
        label_map = sorted((infos[0].get('label_map') or {}).items()) if infos else []
        key.update(json.dumps([self.tile_size, self.num_classes, label_map]).encode())
        for info in infos:
            seg = info['seg_map_path']
            stat = os.stat(seg)
            key.update(f'{seg}\0{stat.st_size}\0{stat.st_mtime_ns}\0'.encode())
        name = (f'.mmnorm_class_centroids_{type(self.dataset).__name__}_tile{self.tile_size}_'
                f'{key.hexdigest()[:16]}.json')
        return osp.join(folder, name)

    def _build(self, infos: Sequence[dict]) -> Dict[str, list]:
        index: Dict[str, list] = {}
        for i, info in enumerate(infos):
            label = self._loader(dict(info, seg_fields=[]))['gt_seg_map']
            for c, points in class_centroids(label, self.num_classes, self.tile_size).items():
                index.setdefault(str(c), []).extend([i, x, y] for x, y in points)
        return index

    def _read(self, path: str) -> Optional[Dict[str, list]]:
        if not osp.isfile(path):
            return None
        with open(path) as f:
            payload = json.load(f)
        if payload.get('format') != CACHE_FORMAT:
            raise ArgumentError(f'{path} is not an mmnorm class-centroid cache (format '
                                f'{payload.get("format")!r}); move it away or set cache_dir')
        return payload['centroids']

    def _write(self, path: str, index: Dict[str, list]) -> None:
        from ..runtime.atomic_io import atomic_write_bytes
        payload = dict(
            format=CACHE_FORMAT,
            tile_size=self.tile_size,
            num_classes=self.num_classes,
            num_images=len(self.dataset),
            centroids=index)
        try:
            atomic_write_bytes(json.dumps(payload).encode(), path)
        except OSError as err:
            print_log(
                f'ClassUniformDataset: index not cached ({err}); set cache_dir to a '
                'writable folder to keep it',
                logger='current')

    def __getitem__(self, idx: int) -> dict:
        if not self._fully_initialized:
            self.full_init()
        drawn = draw_class_uniform(np.random, self.records, self.class_uniform_pct)
        if drawn is None:
            info = self.dataset.get_data_info(idx)
        else:
            c, sample, x, y = drawn
            info = self.dataset.get_data_info(sample)
            info[RESULTS_KEY] = dict(class_id=c, x=x, y=y)
        return self.dataset.pipeline(info)

    def sample_counts(self) -> np.ndarray:
        """(num_classes,) number of centroid records per class."""
        return np.array([len(r) for r in self.records])

    def class_probabilities(self) -> np.ndarray:
        """(num_classes,) probability that a sample is a class-uniform crop of each class."""
        return class_probabilities(self.sample_counts(), self.class_uniform_pct)
