"""Mapillary Vistas v1.2 (Neuhold et al., ICCV 2017) evaluated on the 19 Cityscapes classes, as an
mmseg dataset.

Layouts: ``{training,validation}/images/*.jpg`` with the labels in ``{split}/v1.2/labels/*.png``
(the v2.0 archive, which holds the v1.2 labels next to the v2.0 ones) or in ``{split}/labels/*.png``
(the v1.2 research edition); :func:`find_label_dir` tells which, and the dataset reads the labels
from whichever of the two exists. Labels are 8-bit palette PNGs whose indices are the 66 v1.2 class
IDs (0..65). mmseg's ``MapillaryDataset_v1`` keeps all 66 classes; this dataset maps them to the 19
Cityscapes train IDs through mmseg's ``label_map`` (read with PIL, mmseg's default).
``tools/dataset_converters/mapillary.py`` writes the same mapping to ``*_labelTrainIds.png`` next to
the raw labels (faster to load: the label_map loop runs once per class over the full-size label).
"""
import os.path as osp
from typing import Dict, Optional

from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

__all__ = [
    'Mapillary19Dataset', 'MAPILLARY_V12_TO_TRAINID', 'MAPILLARY_LABEL_DIRS', 'find_label_dir'
]

# Mapillary v1.2 class ID -> Cityscapes train ID (e.g. road, lane marking and manhole are all
# 'road'); every other ID is ignored (255).
MAPILLARY_V12_TO_TRAINID: Dict[int, int] = {
    13: 0,
    24: 0,
    41: 0,
    2: 1,
    15: 1,
    17: 2,
    6: 3,
    3: 4,
    45: 5,
    47: 5,
    48: 6,
    50: 7,
    30: 8,
    29: 9,
    27: 10,
    19: 11,
    20: 12,
    21: 12,
    22: 12,
    55: 13,
    61: 14,
    54: 15,
    58: 16,
    57: 17,
    52: 18
}
_NUM_V12_IDS = 66
# Where a split's v1.2 labels are, per release: layout -> folder under ``{split}/``.
MAPILLARY_LABEL_DIRS: Dict[str, str] = {
    'v2.0 archive': 'v1.2/labels',
    'v1.2 research edition': 'labels',
}


def find_label_dir(root: str, split: str) -> Optional[str]:
    """The v1.2 label folder of ``split`` in either release layout, or None when neither exists.

    Args:
        root (str): The Mapillary Vistas root (holding ``training/``, ``validation/``).
        split (str): A split folder name, e.g. ``'validation'``.

    Returns:
        str | None: ``{root}/{split}/v1.2/labels`` (v2.0 archive) or ``{root}/{split}/labels``
        (v1.2 research edition), the first that is a folder.
    """
    for folder in MAPILLARY_LABEL_DIRS.values():
        path = osp.join(root, split, folder)
        if osp.isdir(path):
            return path
    return None


def _label_prefix(data_root: Optional[str], seg_map_path: str) -> str:
    """``seg_map_path`` if it exists under ``data_root``; else, when it names a split's label folder
    of one release layout (``{split}/v1.2/labels`` or ``{split}/labels``), the folder of the layout
    that exists (relative to ``data_root``); else ``seg_map_path`` unchanged."""
    root = data_root or ''
    if osp.isdir(osp.join(root, seg_map_path)):
        return seg_map_path
    path = osp.normpath(seg_map_path)
    for folder in MAPILLARY_LABEL_DIRS.values():
        if path.endswith('/' + folder):
            found = find_label_dir(root, path[:-len(folder) - 1])
            if found:
                return osp.relpath(found, root) if root else found
    return seg_map_path


@DATASETS.register_module()
class Mapillary19Dataset(BaseSegDataset):
    """Mapillary Vistas v1.2 with the 19 Cityscapes classes.

    Args:
        img_suffix (str): Defaults to '.jpg'.
        seg_map_suffix (str): '.png' reads the raw v1.2 labels (mapped here); '_labelTrainIds.png'
            reads converter output (already train IDs). Defaults to '.png'.
        **kwargs: See ``mmseg.datasets.BaseSegDataset``. A ``data_prefix['seg_map_path']`` of
            the form ``{split}/v1.2/labels`` or ``{split}/labels`` that does not exist is replaced
            by the other layout's folder when that one does (see :func:`find_label_dir`).
    """

    METAINFO = CityscapesDataset.METAINFO

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.png', **kwargs) -> None:
        self.labels_are_train_ids = seg_map_suffix.endswith('labelTrainIds.png')
        prefix = dict(kwargs.get('data_prefix') or {})
        if prefix.get('seg_map_path'):
            prefix['seg_map_path'] = _label_prefix(kwargs.get('data_root'), prefix['seg_map_path'])
            kwargs['data_prefix'] = prefix
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def get_label_map(self, new_classes: Optional[list] = None) -> Optional[dict]:
        """v1.2 class IDs -> train IDs for the raw labels (None for converted ``_labelTrainIds``
        files)."""
        if new_classes is not None and list(new_classes) != list(self.METAINFO['classes']):
            raise ValueError(
                'Mapillary19Dataset only supports the 19 Cityscapes classes, got classes='
                f'{tuple(new_classes)}')
        if self.labels_are_train_ids:
            return None
        return {i: MAPILLARY_V12_TO_TRAINID.get(i, 255) for i in range(_NUM_V12_IDS)}
