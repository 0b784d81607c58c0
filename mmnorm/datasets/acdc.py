"""ACDC, the Adverse Conditions Dataset with correspondences (Sakaridis et al., ICCV 2021,
arXiv 2104.13395), as an mmseg dataset.

Layout of the official download (``rgb_anon_trainvaltest.zip``, ``gt_trainval.zip``)::

    rgb_anon/{fog,night,rain,snow}/{train,val,test}/GOPR*/<frame>_rgb_anon.png
    gt/{fog,night,rain,snow}/{train,val}/GOPR*/<frame>_gt_labelTrainIds.png

1920x1080 frames; the ``_gt_labelTrainIds.png`` labels already hold the 19 Cityscapes train IDs
(255 ignored), so the stock Cityscapes pipeline and metric apply unchanged. The test split's labels
are not public (the benchmark server evaluates them). Per condition: 400 train, 100 val (night:
106), 500 test frames. Every sample's data info carries its ``condition``.
"""
import os.path as osp
from typing import List, Optional, Sequence, Union

from mmengine import fileio
from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

from ..validation import ArgumentError, ArgumentTypeError

__all__ = ['ACDCDataset', 'ACDC_CONDITIONS', 'ACDC_SPLITS']

ACDC_CONDITIONS = ('fog', 'night', 'rain', 'snow')
ACDC_SPLITS = ('train', 'val', 'test')


@DATASETS.register_module()
class ACDCDataset(BaseSegDataset):
    """ACDC with the 19 Cityscapes classes, one or more weather conditions of one split.

    Args:
        conditions (str | Sequence[str]): Conditions to list, in this order (the frames of each
            condition sorted by path). Defaults to ('fog', 'night', 'rain', 'snow').
        split (str): ``'train'``, ``'val'`` or ``'test'``. Defaults to 'val'.
        img_suffix (str): Defaults to '_rgb_anon.png'.
        seg_map_suffix (str): Defaults to '_gt_labelTrainIds.png'.
        data_prefix (dict): The image and label roots under ``data_root``; ``{condition}/{split}``
            is appended to each. Defaults to dict(img_path='rgb_anon', seg_map_path='gt').
        **kwargs: See ``mmseg.datasets.BaseSegDataset`` (``data_root``, ``pipeline``...).
    """

    METAINFO = CityscapesDataset.METAINFO

    def __init__(self,
                 conditions: Union[str, Sequence[str]] = ACDC_CONDITIONS,
                 split: str = 'val',
                 img_suffix: str = '_rgb_anon.png',
                 seg_map_suffix: str = '_gt_labelTrainIds.png',
                 data_prefix: dict = dict(img_path='rgb_anon', seg_map_path='gt'),
                 **kwargs) -> None:
        conditions = [conditions] if isinstance(conditions, str) else conditions
        if not isinstance(conditions, Sequence) or not conditions:
            raise ArgumentTypeError('ACDCDataset conditions must be a condition name or a '
                                    f'non-empty list of them, got {conditions!r}')
        for condition in conditions:
            if condition not in ACDC_CONDITIONS:
                raise ArgumentError(f'ACDCDataset condition must be one of {ACDC_CONDITIONS}, '
                                    f'got {condition!r}')
        if split not in ACDC_SPLITS:
            raise ArgumentError(f'ACDCDataset split must be one of {ACDC_SPLITS}, got {split!r}')
        if kwargs.get('ann_file'):
            raise ArgumentError('ACDCDataset lists the frames of its conditions and split; '
                                f'ann_file={kwargs["ann_file"]!r} is not supported')
        self.conditions = list(conditions)
        self.split = split
        super().__init__(
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, data_prefix=data_prefix, **kwargs)

    def load_data_list(self) -> List[dict]:
        """The frames of every condition (in ``conditions`` order), each with its ``condition``.

        Raises:
            FileNotFoundError: A condition's image folder is missing, or frames have no label
                (the test split has none: evaluate on 'train' or 'val').
        """
        data_list = []
        for condition in self.conditions:
            img_dir = osp.join(self.data_prefix['img_path'], condition, self.split)
            ann_dir = osp.join(self.data_prefix['seg_map_path'], condition, self.split)
            if not fileio.isdir(img_dir, backend_args=self.backend_args):
                raise FileNotFoundError(
                    f'ACDCDataset: no image folder {img_dir!r} for condition {condition!r}, '
                    f'split {self.split!r} (data_root must hold rgb_anon/ and gt/ of the ACDC '
                    'download)')
            frames = sorted(
                fileio.list_dir_or_file(
                    img_dir,
                    list_dir=False,
                    suffix=self.img_suffix,
                    recursive=True,
                    backend_args=self.backend_args))
            if not frames:
                raise FileNotFoundError(
                    f'ACDCDataset found no *{self.img_suffix} under {img_dir!r}')
            for frame in frames:
                seg_map = frame[:-len(self.img_suffix)] + self.seg_map_suffix
                data_list.append(
                    dict(
                        img_path=osp.join(img_dir, frame),
                        seg_map_path=osp.join(ann_dir, seg_map),
                        label_map=self.label_map,
                        reduce_zero_label=self.reduce_zero_label,
                        seg_fields=[],
                        condition=condition))
        missing = [
            d['seg_map_path'] for d in data_list
            if not fileio.exists(d['seg_map_path'], backend_args=self.backend_args)
        ]
        if missing:
            raise FileNotFoundError(
                f'ACDCDataset: {len(missing)} of {len(data_list)} frames of split {self.split!r} '
                f'have no label (first: {missing[0]!r}); the test split has no public labels, '
                "use split='train' or 'val'")
        return data_list

    def get_label_map(self, new_classes: Optional[Sequence] = None) -> Optional[dict]:
        """None: the labels already hold train IDs (only the 19 Cityscapes classes are
        supported)."""
        if new_classes is not None and list(new_classes) != list(self.METAINFO['classes']):
            raise ArgumentError('ACDCDataset only supports the 19 Cityscapes classes, got classes='
                                f'{tuple(new_classes)}')
        return None
