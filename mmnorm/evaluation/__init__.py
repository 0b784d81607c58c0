"""Evaluation metrics (registered in the toolbox registries they extend; mmseg's only when mmseg
is installed)."""
from ..toolboxes import toolbox_installed

__all__ = []

if toolbox_installed('mmseg'):
    from .subset_iou import SubsetIoUMetric, subset_miou
    __all__ += ['SubsetIoUMetric', 'subset_miou']
