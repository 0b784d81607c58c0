"""SYNTHIA-RAND-CITYSCAPES (Ros et al., "The SYNTHIA Dataset", CVPR 2016) as an mmseg dataset.

Layout: ``RGB/NNNNNNN.png`` (9,400 frames, 1280x760) and ``GT/LABELS/NNNNNNN.png``. The raw labels
are 16-bit multi-channel PNGs (class ID in the red channel, instance ID in another), which mmseg's
``LoadAnnotations`` cannot read; ``tools/dataset_converters/synthia.py`` writes
``GT/LABELS/NNNNNNN_labelTrainIds.png`` with the 19 Cityscapes train IDs, and this dataset reads
those. SYNTHIA has no terrain, truck or train: results are reported as mIoU over 16 classes and over
13 (also without wall, fence, pole), see :data:`SYNTHIA_CLASS_SUBSETS`.
"""
from typing import Dict, List, Optional

from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

__all__ = ['SynthiaDataset', 'SYNTHIA_ID_TO_TRAINID', 'SYNTHIA_CLASS_SUBSETS']

# SYNTHIA class ID -> Cityscapes train ID; every other ID (void, lane marking, ...) is ignored
# (255).
SYNTHIA_ID_TO_TRAINID: Dict[int, int] = {
    3: 0,
    4: 1,
    2: 2,
    21: 3,
    5: 4,
    7: 5,
    15: 6,
    9: 7,
    6: 8,
    1: 10,
    10: 11,
    17: 12,
    8: 13,
    19: 15,
    12: 17,
    11: 18
}

_NAMES = CityscapesDataset.METAINFO['classes']
_NOT_IN_SYNTHIA = ('terrain', 'truck', 'train')
_NOT_IN_13 = _NOT_IN_SYNTHIA + ('wall', 'fence', 'pole')
# Name of the reported mean -> train IDs (indices into the 19 Cityscapes classes) it averages.
SYNTHIA_CLASS_SUBSETS: Dict[str, List[int]] = {
    'mIoU16': [i for i, c in enumerate(_NAMES) if c not in _NOT_IN_SYNTHIA],
    'mIoU13': [i for i, c in enumerate(_NAMES) if c not in _NOT_IN_13],
}


@DATASETS.register_module()
class SynthiaDataset(BaseSegDataset):
    """SYNTHIA-RAND-CITYSCAPES with the 19 Cityscapes classes (converted labels).

    Args:
        img_suffix (str): Defaults to '.png'.
        seg_map_suffix (str): Suffix of the converted labels. Defaults to '_labelTrainIds.png'.
        **kwargs: See ``mmseg.datasets.BaseSegDataset``.
    """

    METAINFO = CityscapesDataset.METAINFO

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '_labelTrainIds.png',
                 **kwargs) -> None:
        if seg_map_suffix == img_suffix:
            raise ValueError(
                f'seg_map_suffix={seg_map_suffix!r} would read the raw 16-bit SYNTHIA labels, '
                'which LoadAnnotations cannot decode; run tools/dataset_converters/synthia.py and '
                "use seg_map_suffix='_labelTrainIds.png'")
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)

    @classmethod
    def get_label_map(cls, new_classes: Optional[list] = None) -> Optional[dict]:
        """Converted labels hold train IDs already: no mapping; only the 19 Cityscapes classes
        are supported."""
        if new_classes is not None and list(new_classes) != list(cls.METAINFO['classes']):
            raise ValueError('SynthiaDataset only supports the 19 Cityscapes classes, got classes='
                             f'{tuple(new_classes)}')
        return None
