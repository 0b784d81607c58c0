"""GTA5 ("Playing for Data", Richter et al., ECCV 2016) as an mmseg dataset.

Layout: ``images/NNNNN.png`` and ``labels/NNNNN.png`` (24,966 frames), ``split.mat`` with the
official split. Labels are 8-bit palette PNGs whose indices are Cityscapes *label IDs*; they must be
decoded with PIL (mmseg's default ``imdecode_backend='pillow'`` in ``LoadAnnotations`` does), not
cv2, which would return the palette colours. The dataset maps label IDs to the 19 Cityscapes train
IDs through mmseg's ``label_map`` mechanism, so the stock pipeline works unchanged. Files converted
by ``tools/dataset_converters/gta5.py`` (``*_labelTrainIds.png``) are read as they are with
``seg_map_suffix``; the converter also resolves the frames whose image and label sizes differ. With
raw labels such a frame would be silently misaligned (mmcv's ``Resize`` scales image and label
independently), so the dataset compares the sizes from the file headers (no decoding) and refuses a
mismatch, naming the frame and the converter command.
"""
import os.path as osp
from typing import List, Optional, Tuple

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

from ..runtime import UserError
from .labels import CITYSCAPES_ID_TO_TRAINID

__all__ = [
    'GTA5Dataset', 'CITYSCAPES_ID_TO_TRAINID', 'GTA5_SPLITS', 'read_gta5_split',
    'find_size_mismatches'
]

# Cityscapes label ID -> train ID (19 classes); every other ID is ignored (255).
# Cityscapes label IDs are 0..33 (-1 'license plate' is stored as 255 already).
_NUM_LABEL_IDS = 34
# split name -> variable in split.mat
GTA5_SPLITS = {'train': 'trainIds', 'val': 'valIds', 'test': 'testIds'}


def read_gta5_split(split_file: str, split: str) -> List[str]:
    """Frame names (``'00001'``...) of one split of GTA5's ``split.mat``.

    Args:
        split_file (str): Path of ``split.mat`` (MATLAB file with ``trainIds``, ``valIds``,
            ``testIds``: 1-based frame numbers, any shape).
        split (str): ``'train'`` (12,403 frames), ``'val'`` (6,382) or ``'test'`` (6,181).

    Returns:
        list[str]: Zero-padded 5-digit frame names in ascending order.
    """
    if split not in GTA5_SPLITS:
        raise ValueError(f'split must be one of {sorted(GTA5_SPLITS)} or None, got {split!r}')
    if not osp.isfile(split_file):
        raise FileNotFoundError(
            f'GTA5 split file not found: {split_file!r} (split.mat of the GTA5 download)')
    from scipy.io import loadmat
    mat = loadmat(split_file)
    key = GTA5_SPLITS[split]
    if key not in mat:
        raise ValueError(f'{split_file!r} has no {key!r} (found '
                         f'{sorted(k for k in mat if not k.startswith("__"))})')
    return [f'{int(i):05d}' for i in sorted(mat[key].ravel())]


def find_size_mismatches(data_list: List[dict]) -> List[Tuple[str, tuple, tuple]]:
    """The frames whose image and label differ in size, read from the file headers (PIL decodes no
    pixels for ``.size``; about 0.1 ms per file).

    Args:
        data_list (list[dict]): Frames with ``img_path`` and ``seg_map_path``.

    Returns:
        list[tuple[str, tuple, tuple]]: ``(img_path, (w, h) of the image, (w, h) of the label)``.
    """
    from PIL import Image
    mismatches = []
    for d in data_list:
        with Image.open(d['img_path']) as img, Image.open(d['seg_map_path']) as label:
            if img.size != label.size:
                mismatches.append((d['img_path'], img.size, label.size))
    return mismatches


@DATASETS.register_module()
class GTA5Dataset(BaseSegDataset):
    """GTA5 with the 19 Cityscapes classes.

    Args:
        img_suffix (str): Defaults to '.png'.
        seg_map_suffix (str): '.png' reads the original palette labels (label IDs, mapped to train
            IDs here); '_labelTrainIds.png' reads converter output (already train IDs). Defaults to
            '.png'.
        split (str, optional): ``'train'``, ``'val'`` or ``'test'`` of the official split, read from
            ``split_file``; None lists every frame in ``data_prefix['img_path']`` (or the frames of
            ``ann_file``). Defaults to None.
        split_file (str): ``split.mat``, relative to ``data_root``. Defaults to 'split.mat'.
        **kwargs: See ``mmseg.datasets.BaseSegDataset`` (``data_root``, ``data_prefix``,
        ``ann_file`` with one
            frame name per line, ``pipeline``...).

    With converted labels, frames the converter skipped (corrupt files, or size mismatches under
    ``--mismatch skip``) have no ``_labelTrainIds.png``; they are left out with a warning that
    counts them. With raw labels, a frame whose image and label sizes differ raises a
    :class:`~mmnorm.runtime.UserError` naming it and the converter command (one header read per
    file when the dataset is built: :func:`find_size_mismatches`).
    """

    METAINFO = CityscapesDataset.METAINFO

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 split: Optional[str] = None,
                 split_file: str = 'split.mat',
                 **kwargs) -> None:
        if split is not None and split not in GTA5_SPLITS:
            raise ValueError(f'split must be one of {sorted(GTA5_SPLITS)} or None, got {split!r}')
        if split is not None and kwargs.get('ann_file'):
            raise ValueError(
                f'give either split ({split!r}) or ann_file ({kwargs["ann_file"]!r}), not both')
        self.labels_are_train_ids = seg_map_suffix.endswith('labelTrainIds.png')
        self.split = split
        self.split_file = split_file
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def get_label_map(self, new_classes: Optional[list] = None) -> Optional[dict]:
        """Label IDs -> train IDs for the raw palette labels (None for converted
        ``_labelTrainIds`` files)."""
        if new_classes is not None and list(new_classes) != list(self.METAINFO['classes']):
            raise ValueError('GTA5Dataset only supports the 19 Cityscapes classes, got classes='
                             f'{tuple(new_classes)}')
        if self.labels_are_train_ids:
            return None
        return {i: CITYSCAPES_ID_TO_TRAINID.get(i, 255) for i in range(_NUM_LABEL_IDS)}

    def load_data_list(self) -> List[dict]:
        """Frames of the split (or all), minus converted frames whose label the converter did not
        write."""
        data_list = super().load_data_list()
        if self.split is not None:
            split_file = self.split_file
            if self.data_root and not osp.isabs(split_file):
                split_file = osp.join(self.data_root, split_file)
            wanted = set(read_gta5_split(split_file, self.split))
            data_list = [
                d for d in data_list if _frame_name(d['img_path'], self.img_suffix) in wanted
            ]
        if self.labels_are_train_ids:
            kept = [d for d in data_list if osp.isfile(d['seg_map_path'])]
            if len(kept) < len(data_list):
                print_log(
                    f'GTA5Dataset: {len(data_list) - len(kept)} of {len(data_list)} frames have no '
                    f'{self.seg_map_suffix} (skipped by the converter, see its report) and are '
                    'left out',
                    logger='current',
                    level=30)
            data_list = kept
        elif data_list:
            self._refuse_size_mismatches(data_list)
        if not data_list:
            raise ValueError(
                f'GTA5Dataset found no frames under {self.data_prefix.get("img_path")!r} '
                f'(split={self.split!r})')
        return data_list

    def _refuse_size_mismatches(self, data_list: List[dict]) -> None:
        mismatches = find_size_mismatches(data_list)
        if not mismatches:
            return
        path, img_size, label_size = mismatches[0]
        more = f' (and {len(mismatches) - 1} more frames)' if len(mismatches) > 1 else ''
        root = self.data_root or osp.dirname(osp.dirname(path))
        raise UserError(
            f'GTA5Dataset: frame {_frame_name(path, self.img_suffix)} has a '
            f'{img_size[0]}x{img_size[1]} image and a {label_size[0]}x{label_size[1]} label{more}; '
            'raw labels would be misaligned by the pipeline: run python '
            f'tools/dataset_converters/gta5.py {root} and read its output with '
            "seg_map_suffix='_labelTrainIds.png'")


def _frame_name(img_path: str, img_suffix: str) -> str:
    name = osp.basename(img_path)
    return name[:-len(img_suffix)] if name.endswith(img_suffix) else osp.splitext(name)[0]
