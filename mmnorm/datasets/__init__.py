"""Datasets, registered in the toolbox registries they extend.

The mmseg datasets import only when mmseg is installed, the mmdet ones only with mmdet. The
synthetic demo generator (:mod:`mmnorm.datasets.synthetic`, :mod:`mmnorm.datasets.synthetic_stream`)
registers nothing and is imported on first use: ``from mmnorm.datasets import generate_demo_data``
still works.
"""
from ..toolboxes import toolbox_installed
from .continual import ContinualDataset
from .domain_pair import DomainPairDataset
from .labels import CITYSCAPES_ID_TO_TRAINID

__all__ = [
    'CITYSCAPES_ID_TO_TRAINID', 'ContinualDataset', 'DomainPairDataset', 'generate_demo_data'
]

if toolbox_installed('mmseg'):
    from .acdc import ACDC_CONDITIONS, ACDCDataset
    from .class_uniform import ClassUniformCrop, ClassUniformDataset
    from .gta5 import GTA5Dataset, read_gta5_split
    from .mapillary import MAPILLARY_V12_TO_TRAINID, Mapillary19Dataset
    from .multi_target import MultiTargetDataset, ResetOriShape
    from .photometric_twin import PhotometricTwin
    from .robustnet_photometric import RobustNetPhotometric
    from .synthia import SYNTHIA_CLASS_SUBSETS, SYNTHIA_ID_TO_TRAINID, SynthiaDataset
    __all__ += [
        'ACDCDataset', 'ACDC_CONDITIONS', 'ClassUniformCrop', 'ClassUniformDataset', 'GTA5Dataset',
        'read_gta5_split', 'Mapillary19Dataset', 'MAPILLARY_V12_TO_TRAINID', 'MultiTargetDataset',
        'ResetOriShape', 'PhotometricTwin', 'RobustNetPhotometric', 'SynthiaDataset',
        'SYNTHIA_ID_TO_TRAINID', 'SYNTHIA_CLASS_SUBSETS'
    ]

if toolbox_installed('mmdet'):
    from .foggy_cityscapes import FOG_BETAS, FoggyCityscapesDataset
    from .sim10k import Sim10kDataset
    __all__ += ['FoggyCityscapesDataset', 'FOG_BETAS', 'Sim10kDataset']


def __getattr__(name):
    if name == 'generate_demo_data':  # the demo generator, imported on first use only
        from .synthetic import generate_demo_data
        return generate_demo_data
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
