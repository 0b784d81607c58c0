"""Datasets (registered in the toolbox registries they extend) and the synthetic demo generator."""
from .domain_pair import DomainPairDataset
from .foggy_cityscapes import FOG_BETAS, FoggyCityscapesDataset
from .gta5 import CITYSCAPES_ID_TO_TRAINID, GTA5Dataset, read_gta5_split
from .mapillary import MAPILLARY_V12_TO_TRAINID, Mapillary19Dataset
from .sim10k import Sim10kDataset
from .synthetic import generate_demo_data
from .synthia import SYNTHIA_CLASS_SUBSETS, SYNTHIA_ID_TO_TRAINID, SynthiaDataset

__all__ = ['CITYSCAPES_ID_TO_TRAINID', 'GTA5Dataset', 'generate_demo_data', 'read_gta5_split', 'SynthiaDataset',
           'SYNTHIA_ID_TO_TRAINID', 'SYNTHIA_CLASS_SUBSETS', 'Mapillary19Dataset', 'MAPILLARY_V12_TO_TRAINID',
           'FoggyCityscapesDataset', 'FOG_BETAS', 'Sim10kDataset', 'DomainPairDataset']
