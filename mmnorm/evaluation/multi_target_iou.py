"""mIoU per target dataset and their mean, in one test run (the domain-generalization table: one
checkpoint on Cityscapes, BDD100K and Mapillary).

Reads the ``dataset_name`` each sample of ``mmnorm.datasets.MultiTargetDataset`` carries; each
dataset's IoU is computed from its own summed areas (the same numbers as a separate
``IoUMetric`` run on it) and ``mean/...`` averages the datasets with equal weight.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from mmseg.registry import METRICS

from .grouped_iou import GroupedIoUMetric

__all__ = ['MultiTargetIoUMetric']


@METRICS.register_module()
class MultiTargetIoUMetric(GroupedIoUMetric):
    """``IoUMetric`` per dataset of a ``MultiTargetDataset``: keys ``'{dataset}/mIoU'`` (and
    ``aAcc``, ``mAcc``...) per dataset and ``'mean/mIoU'``..., the unweighted mean over datasets.

    Args:
        group_key (str): Metainfo key naming a sample's dataset. Defaults to 'dataset_name'.
        group_order (Sequence[str], optional): Report order; None takes the dataset's
            ``dataset_names`` metainfo. Defaults to None.
        **kwargs: See ``GroupedIoUMetric`` and ``mmseg.evaluation.IoUMetric``.
    """

    def __init__(self,
                 group_key: str = 'dataset_name',
                 group_order: Optional[Sequence[str]] = None,
                 **kwargs) -> None:
        super().__init__(group_key=group_key, group_order=group_order, **kwargs)

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """Per-dataset metrics and their mean; a dataset of the metainfo without any sample is an
        error (its mean would silently leave it out)."""
        names = (self.dataset_meta or {}).get('dataset_names')
        if self.group_order is None and names:
            self.group_order = list(names)
        seen = OrderedDict.fromkeys(r[0] for r in results)
        missing = [n for n in (names or []) if n not in seen]
        if missing:
            raise RuntimeError(f'MultiTargetIoUMetric: no sample of {missing} reached the metric '
                               f'(datasets {list(names)}, evaluated {list(seen)})')
        return super().compute_metrics(results)
