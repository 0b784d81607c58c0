"""Datasets (registered in the toolbox registries they extend) and the synthetic demo generator."""
from .gta5 import CITYSCAPES_ID_TO_TRAINID, GTA5Dataset
from .synthetic import generate_demo_data

__all__ = ['CITYSCAPES_ID_TO_TRAINID', 'GTA5Dataset', 'generate_demo_data']
