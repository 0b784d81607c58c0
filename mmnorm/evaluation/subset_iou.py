"""mIoU over class subsets, for sources that lack some target classes (SYNTHIA: mIoU16 and mIoU13).

The protocol computes the per-class IoUs of the full 19-class prediction on the target and averages
a subset of them; predictions of the missing classes still count as false positives for the other
classes.
"""
from typing import Dict, Mapping, Sequence, Union

import numpy as np
from mmengine.logging import print_log
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

__all__ = ['SubsetIoUMetric', 'subset_miou']

_Subsets = Mapping[str, Sequence[Union[int, str]]]


def subset_miou(iou: np.ndarray, class_names: Sequence[str], subsets: _Subsets) -> Dict[str, float]:
    """Mean IoU (in %) over each subset of classes.

    Args:
        iou (np.ndarray): (num_classes,) per-class IoU in [0, 1]; NaN for classes absent from both
            prediction and ground truth (skipped by the mean, like mmseg's mIoU).
        class_names (Sequence[str]): The num_classes class names.
        subsets (Mapping[str, Sequence[int | str]]): Result name -> class indices or class names.

    Returns:
        dict[str, float]: Result name -> mean IoU x 100, rounded to 2 decimals.
    """
    out = {}
    for name, members in subsets.items():
        idx = []
        for m in members:
            if isinstance(m, str):
                if m not in class_names:
                    raise ValueError(
                        f'subset {name!r}: class {m!r} is not one of {tuple(class_names)}')
                idx.append(list(class_names).index(m))
            elif 0 <= int(m) < len(class_names):
                idx.append(int(m))
            else:
                raise ValueError(
                    f'subset {name!r}: class index {m} is outside [0, {len(class_names)})')
        out[name] = float(np.round(np.nanmean(iou[idx]) * 100, 2))
    return out


@METRICS.register_module()
class SubsetIoUMetric(IoUMetric):
    """mmseg's IoUMetric plus the mean IoU over named class subsets.

    Args:
        subsets (str | Mapping[str, Sequence[int | str]]): ``'synthia'`` for mIoU16 / mIoU13 of the
            SYNTHIA -> Cityscapes protocol, or result name -> class indices / names. Defaults to
            'synthia'.
        **kwargs: See ``mmseg.evaluation.IoUMetric`` (``iou_metrics`` must include 'mIoU').
    """

    def __init__(self, subsets: Union[str, _Subsets] = 'synthia', **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(subsets, str):
            if subsets != 'synthia':
                raise ValueError(
                    f"subsets must be 'synthia' or a dict of name -> classes, got {subsets!r}")
            from mmnorm.datasets.synthia import SYNTHIA_CLASS_SUBSETS
            subsets = SYNTHIA_CLASS_SUBSETS
        if not isinstance(subsets, Mapping) or not subsets:
            raise TypeError(f'subsets must be a non-empty dict of name -> classes, got {subsets!r}')
        if 'mIoU' not in self.metrics:
            raise ValueError(f"SubsetIoUMetric needs 'mIoU' in iou_metrics, got {self.metrics}")
        self.subsets = {str(k): list(v) for k, v in subsets.items()}

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """IoUMetric's metrics (mIoU over all classes...) plus one entry per subset."""
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        intersect, union = (sum(r[i] for r in results) for i in (0, 1))
        iou = (intersect /
               union).cpu().numpy() if hasattr(intersect, 'cpu') else np.asarray(intersect / union)
        extra = subset_miou(iou, self.dataset_meta['classes'], self.subsets)
        print_log(f'class-subset mIoU: {extra}', logger='current')
        metrics.update(extra)
        return metrics
