"""IoU grouped by a key of each sample's metainfo: one confusion summary per group.

The shared piece of the multi-target metric (one checkpoint, several target datasets: group =
dataset name) and the continual TTA metric (group = condition / round). Each sample contributes
mmseg's ``IoUMetric.intersect_and_union`` areas tagged with its group; the areas are summed per
group after mmengine has collected every rank's results (one entry per sample, so the padding of
the distributed sampler is dropped exactly as for ``IoUMetric``) and each group is summarised as
``IoUMetric`` summarises a whole dataset.
"""
from collections import OrderedDict
from typing import Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import print_log
from mmseg.evaluation import IoUMetric
from prettytable import PrettyTable

from ..validation import ArgumentError, ArgumentTypeError

__all__ = ['sum_areas_by_group', 'area_summary', 'grouped_iou_metrics', 'GroupedIoUMetric']

# (intersect, union, pred_label, label): (num_classes,) histograms of IoUMetric.intersect_and_union
Areas = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sum_areas_by_group(results: Iterable[tuple]) -> 'OrderedDict[Hashable, Areas]':
    """Sums the per-sample areas of each group.

    Args:
        results (Iterable[tuple]): ``(group, intersect, union, pred_label, label)`` per sample,
            the four areas (num_classes,) histograms as ``IoUMetric.intersect_and_union`` returns.

    Returns:
        OrderedDict[Hashable, tuple]: group -> the four summed (num_classes,) areas, groups in the
        order of their first sample.
    """
    totals = OrderedDict()
    for group, *areas in results:
        if group in totals:
            totals[group] = tuple(t + a for t, a in zip(totals[group], areas))
        else:
            totals[group] = tuple(areas)
    return totals


def area_summary(areas: Areas,
                 metrics: Sequence[str] = ('mIoU', ),
                 nan_to_num: Optional[int] = None,
                 beta: int = 1,
                 ndigits: Optional[int] = 2) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """The summary and per-class metrics of summed areas, exactly as ``IoUMetric`` reports them.

    Args:
        areas (tuple): Summed (intersect, union, pred_label, label), each (num_classes,).
        metrics (Sequence[str]): ``IoUMetric``'s ``iou_metrics``. Defaults to ('mIoU', ).
        nan_to_num (int, optional): See ``IoUMetric``. Defaults to None.
        beta (int): See ``IoUMetric``. Defaults to 1.
        ndigits (int, optional): Decimals to round to (None: no rounding). Defaults to 2.

    Returns:
        tuple[dict, dict]: ``{'aAcc': .., 'mIoU': .., 'mAcc': .., ...}`` in % (NaN classes
        skipped by the mean), and per-class ``{'IoU': (num_classes,) float64 ...}`` in %.
    """
    per_class = IoUMetric.total_area_to_metrics(*areas, list(metrics), nan_to_num, beta)
    per_class = {k: np.asarray(v, dtype=np.float64) * 100 for k, v in per_class.items()}
    summary = {(k if k == 'aAcc' else 'm' + k): float(np.nanmean(v)) for k, v in per_class.items()}
    per_class.pop('aAcc', None)
    if ndigits is not None:
        summary = {k: round(v, ndigits) for k, v in summary.items()}
        per_class = {k: np.round(v, ndigits) for k, v in per_class.items()}
    return summary, per_class


def grouped_iou_metrics(totals: 'OrderedDict[Hashable, Areas]',
                        metrics: Sequence[str] = ('mIoU', ),
                        nan_to_num: Optional[int] = None,
                        beta: int = 1,
                        mean_name: Optional[str] = 'mean') -> Dict[str, float]:
    """Metrics of each group as ``'{group}/{metric}'`` plus their unweighted mean over groups.

    Args:
        totals (OrderedDict): group -> summed areas (:func:`sum_areas_by_group`).
        metrics, nan_to_num, beta: See :func:`area_summary`.
        mean_name (str, optional): The mean over groups is reported as ``'{mean_name}/{metric}'``
            (each group weighs the same, whatever its number of samples or pixels); None leaves it
            out. Defaults to 'mean'.

    Returns:
        dict[str, float]: e.g. ``{'cityscapes/mIoU': 36.6, 'bdd100k/mIoU': 35.2,
        'mean/mIoU': 35.9, ...}`` in %, 2 decimals.
    """
    out = {}
    per_group = {
        group: area_summary(areas, metrics, nan_to_num, beta, ndigits=None)[0]
        for group, areas in totals.items()
    }
    for group, summary in per_group.items():
        for name, value in summary.items():
            out[f'{group}/{name}'] = round(value, 2)
    if mean_name is not None and per_group:
        for name in next(iter(per_group.values())):
            values = [summary[name] for summary in per_group.values()]
            out[f'{mean_name}/{name}'] = round(float(np.mean(values)), 2)
    return out


class GroupedIoUMetric(IoUMetric):
    """``IoUMetric`` per group of samples, the group read from each sample's metainfo.

    Subclasses register themselves and may override :meth:`group_of` (e.g. to combine two
    metainfo keys). Reported keys: ``'{group}/aAcc'``, ``'{group}/mIoU'``, ... for every group and
    ``'{mean_name}/...'``, the unweighted mean over groups.

    Args:
        group_key (str): Metainfo key of a data sample whose value names its group.
        mean_name (str, optional): See :func:`grouped_iou_metrics`. Defaults to 'mean'.
        group_order (Sequence[str], optional): The groups in the order to report them; a group
            not listed comes after, in order of appearance. Defaults to None (order of appearance).
        **kwargs: See ``mmseg.evaluation.IoUMetric`` (``iou_metrics``, ``ignore_index``...).
    """

    def __init__(self,
                 group_key: str,
                 mean_name: Optional[str] = 'mean',
                 group_order: Optional[Sequence[str]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(group_key, str) or not group_key:
            raise ArgumentTypeError(f'group_key must be a non-empty str, got {group_key!r}')
        if mean_name is not None and not isinstance(mean_name, str):
            raise ArgumentTypeError(f'mean_name must be a str or None, got {mean_name!r}')
        if self.format_only:
            raise ArgumentError(f'{type(self).__name__} evaluates labels; format_only=True is '
                                'not supported (use IoUMetric to only write predictions)')
        self.group_key = group_key
        self.mean_name = mean_name
        self.group_order = None if group_order is None else [str(g) for g in group_order]

    def group_of(self, data_sample: dict) -> str:
        """The group of one data sample (its ``group_key`` metainfo value, as a str)."""
        if self.group_key not in data_sample:
            raise KeyError(
                f'{type(self).__name__}: the data sample of {data_sample.get("img_path")!r} has '
                f'no {self.group_key!r} in its metainfo (found {sorted(data_sample)}); the '
                'dataset must set it, and PackSegInputs must list it in meta_keys')
        return str(data_sample[self.group_key])

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Appends ``(group, intersect, union, pred_label, label)`` per sample."""
        num_classes = len(self.dataset_meta['classes'])
        for data_sample in data_samples:
            pred_label = data_sample['pred_sem_seg']['data'].squeeze()
            label = data_sample['gt_sem_seg']['data'].squeeze().to(pred_label)
            areas = self.intersect_and_union(pred_label, label, num_classes, self.ignore_index)
            self.results.append((self.group_of(data_sample), *areas))

    def ordered(self, totals: 'OrderedDict[str, Areas]') -> 'OrderedDict[str, Areas]':
        """``totals`` with the groups of ``group_order`` first."""
        if not self.group_order:
            return totals
        keys = [g for g in self.group_order if g in totals]
        keys += [g for g in totals if g not in keys]
        return OrderedDict((g, totals[g]) for g in keys)

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """Per-group metrics and their mean; logs one table with a row per group."""
        totals = self.ordered(sum_areas_by_group(results))
        out = grouped_iou_metrics(totals, self.metrics, self.nan_to_num, self.beta, self.mean_name)
        self.log_table(totals, out)
        return out

    def log_table(self, totals: 'OrderedDict[str, Areas]', metrics: Dict[str, float]) -> None:
        """Logs the per-class IoU of each group and the group x metric summary."""
        if not totals:
            return
        classes = list(self.dataset_meta['classes'])
        per_class = PrettyTable()
        per_class.add_column('Class', classes)
        for group, areas in totals.items():
            per_class.add_column(f'{group} IoU', list(area_summary(areas, ['mIoU'])[1]['IoU']))
        print_log('per class IoU per group:\n' + per_class.get_string(), logger='current')
        names = [k.split('/', 1)[1] for k in metrics if k.startswith(f'{next(iter(totals))}/')]
        rows = list(totals) + ([self.mean_name] if self.mean_name is not None else [])
        summary = PrettyTable(['group'] + names)
        for group in rows:
            summary.add_row([group] + [metrics[f'{group}/{n}'] for n in names])
        print_log('per group results:\n' + summary.get_string(), logger='current')
