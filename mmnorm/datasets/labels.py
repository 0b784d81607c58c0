"""Label conventions shared by the datasets and the synthetic generator (no toolbox needed)."""
from typing import Dict

__all__ = ['CITYSCAPES_ID_TO_TRAINID']

CITYSCAPES_ID_TO_TRAINID: Dict[int, int] = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18
}
