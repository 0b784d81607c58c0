"""Evaluation metrics (registered in the toolbox registries they extend)."""
from .subset_iou import SubsetIoUMetric, subset_miou

__all__ = ['SubsetIoUMetric', 'subset_miou']
