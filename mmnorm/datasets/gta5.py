"""GTA5 ("Playing for Data", Richter et al., ECCV 2016) as an mmseg dataset.

Layout: ``images/NNNNN.png`` and ``labels/NNNNN.png``. Labels are 8-bit palette PNGs whose indices are Cityscapes
*label IDs*; they must be decoded with PIL (mmseg's default ``imdecode_backend='pillow'`` in ``LoadAnnotations``
does), not cv2, which would return the palette colours. The dataset maps label IDs to the 19 Cityscapes train IDs
through mmseg's ``label_map`` mechanism, so the stock pipeline works unchanged. Files converted by
``tools/dataset_converters/gta5.py`` (``*_labelTrainIds.png``) are read as they are with ``seg_map_suffix``.
"""
from typing import Dict, Optional

from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

__all__ = ['GTA5Dataset', 'CITYSCAPES_ID_TO_TRAINID']

# Cityscapes label ID -> train ID (19 classes); every other ID is ignored (255).
CITYSCAPES_ID_TO_TRAINID: Dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18}
# Cityscapes label IDs are 0..33 (-1 'license plate' is stored as 255 already).
_NUM_LABEL_IDS = 34


@DATASETS.register_module()
class GTA5Dataset(BaseSegDataset):
    """GTA5 with the 19 Cityscapes classes.

    Args:
        img_suffix (str): Defaults to '.png'.
        seg_map_suffix (str): '.png' reads the original palette labels (label IDs, mapped to train IDs here);
            '_labelTrainIds.png' reads converter output (already train IDs). Defaults to '.png'.
        **kwargs: See ``mmseg.datasets.BaseSegDataset`` (``data_root``, ``data_prefix``, ``ann_file`` with one
            frame name per line, ``pipeline``...).
    """

    METAINFO = CityscapesDataset.METAINFO

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png', **kwargs) -> None:
        self.labels_are_train_ids = seg_map_suffix.endswith('labelTrainIds.png')
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    def get_label_map(self, new_classes: Optional[list] = None) -> Optional[dict]:
        """Label IDs -> train IDs for the raw palette labels (None for converted ``_labelTrainIds`` files)."""
        if new_classes is not None and list(new_classes) != list(self.METAINFO['classes']):
            raise ValueError('GTA5Dataset only supports the 19 Cityscapes classes, got classes='
                             f'{tuple(new_classes)}')
        if self.labels_are_train_ids:
            return None
        return {i: CITYSCAPES_ID_TO_TRAINID.get(i, 255) for i in range(_NUM_LABEL_IDS)}
