"""Evaluation metrics (registered in the toolbox registries they extend; mmseg's only when mmseg
is installed)."""
from ..toolboxes import toolbox_installed

__all__ = []

if toolbox_installed('mmseg'):
    from .continual_iou import ContinualIoUMetric, continual_iou_metrics
    from .grouped_iou import GroupedIoUMetric, area_summary, grouped_iou_metrics, sum_areas_by_group
    from .multi_target_iou import MultiTargetIoUMetric
    from .subset_iou import SubsetIoUMetric, subset_miou
    __all__ += [
        'ContinualIoUMetric', 'continual_iou_metrics', 'GroupedIoUMetric', 'area_summary',
        'grouped_iou_metrics', 'sum_areas_by_group', 'MultiTargetIoUMetric', 'SubsetIoUMetric',
        'subset_miou'
    ]
