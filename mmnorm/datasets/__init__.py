"""Datasets (registered in the toolbox registries they extend) and the synthetic demo generator.

The mmseg datasets import only when mmseg is installed, the mmdet ones only with mmdet.
"""
from ..toolboxes import toolbox_installed
from .domain_pair import DomainPairDataset
from .labels import CITYSCAPES_ID_TO_TRAINID
from .synthetic import generate_demo_data

__all__ = ['CITYSCAPES_ID_TO_TRAINID', 'DomainPairDataset', 'generate_demo_data']

if toolbox_installed('mmseg'):
    from .gta5 import GTA5Dataset, read_gta5_split
    from .mapillary import MAPILLARY_V12_TO_TRAINID, Mapillary19Dataset
    from .synthia import SYNTHIA_CLASS_SUBSETS, SYNTHIA_ID_TO_TRAINID, SynthiaDataset
    __all__ += [
        'GTA5Dataset', 'read_gta5_split', 'SynthiaDataset', 'SYNTHIA_ID_TO_TRAINID', 'SYNTHIA_CLASS_SUBSETS',
        'Mapillary19Dataset', 'MAPILLARY_V12_TO_TRAINID'
    ]

if toolbox_installed('mmdet'):
    from .foggy_cityscapes import FOG_BETAS, FoggyCityscapesDataset
    from .sim10k import Sim10kDataset
    __all__ += ['FoggyCityscapesDataset', 'FOG_BETAS', 'Sim10kDataset']
