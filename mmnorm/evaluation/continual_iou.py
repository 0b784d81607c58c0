"""mIoU per condition per round of a continual test stream, in the layout of CoTTA's Cityscapes ->
ACDC table (Wang et al., CVPR 2022, arXiv 2203.13591, Table 5): one mIoU per (round, condition),
their mean per round, and the mean over all (round, condition) pairs.

Each sample's areas (``IoUMetric.intersect_and_union``) are summed per (round, condition) after
mmengine has collected every rank's results (:mod:`mmnorm.evaluation.grouped_iou`), so a
(round, condition) mIoU equals that of ``IoUMetric`` over the same samples, whatever the number of
processes. The samples' ``round`` and ``condition`` come from ``mmnorm.datasets.ContinualDataset``.
"""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np
from mmengine.logging import print_log
from mmseg.registry import METRICS
from prettytable import PrettyTable

from .grouped_iou import Areas, GroupedIoUMetric, area_summary, sum_areas_by_group

__all__ = ['ContinualIoUMetric', 'continual_iou_metrics']

Group = Tuple[int, str]  # (round, condition)


def continual_iou_metrics(totals: 'OrderedDict[Group, Areas]',
                          metrics: Sequence[str] = ('mIoU', ),
                          nan_to_num=None,
                          beta: int = 1) -> Dict[str, float]:
    """The CoTTA table of summed areas per (round, condition).

    Args:
        totals (OrderedDict): ``(round, condition)`` -> summed (intersect, union, pred_label,
            label), each (num_classes,) (:func:`~mmnorm.evaluation.sum_areas_by_group`).
        metrics, nan_to_num, beta: See :func:`~mmnorm.evaluation.area_summary`.

    Returns:
        dict[str, float]: For every summary metric ``m`` (``'mIoU'``, and ``'aAcc'``, ``'mAcc'``...
        as ``metrics`` asks), in %, rounded to 2 decimals after averaging:

        - ``'round{r}/{condition}/{m}'``: one (round, condition);
        - ``'round{r}/{m}'``: the mean over the conditions of round ``r``;
        - ``'{condition}/{m}'``: the mean over the rounds of one condition;
        - ``'{m}'``: the mean over all (round, condition) pairs (CoTTA's "Mean").

        Every mean weighs its (round, condition) entries equally, whatever their sizes.
    """
    per_group = {
        group: area_summary(areas, metrics, nan_to_num, beta, ndigits=None)[0]
        for group, areas in totals.items()
    }
    out = {}
    if not per_group:
        return out
    names = list(next(iter(per_group.values())))
    rounds = sorted({r for r, _ in per_group})
    conditions = list(OrderedDict.fromkeys(c for _, c in per_group))
    for name in names:
        for (r, c), summary in per_group.items():
            out[f'round{r}/{c}/{name}'] = round(summary[name], 2)
        for r in rounds:
            values = [s[name] for (rr, _), s in per_group.items() if rr == r]
            out[f'round{r}/{name}'] = round(float(np.mean(values)), 2)
        for c in conditions:
            values = [s[name] for (_, cc), s in per_group.items() if cc == c]
            out[f'{c}/{name}'] = round(float(np.mean(values)), 2)
        out[name] = round(float(np.mean([s[name] for s in per_group.values()])), 2)
    return out


@METRICS.register_module()
class ContinualIoUMetric(GroupedIoUMetric):
    """mmseg's ``IoUMetric`` per (round, condition) of a ``ContinualDataset`` stream.

    Logs one table: a row per round (its conditions' mIoU and their mean), a last row with each
    condition's mean over the rounds and the mean over all. Reports the keys of
    :func:`continual_iou_metrics` (``'round1/fog/mIoU'``, ``'round1/mIoU'``, ``'fog/mIoU'``,
    ``'mIoU'``...), which ``tools/test.py --metrics-out`` writes to JSON.

    Args:
        **kwargs: See ``mmseg.evaluation.IoUMetric`` (``iou_metrics``, ``ignore_index``,
            ``nan_to_num``...).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(group_key='condition', mean_name=None, **kwargs)

    def group_of(self, data_sample: dict) -> Group:
        """``(round, condition)`` of one data sample (set by ``ContinualDataset``)."""
        for key in ('round', 'condition'):
            if key not in data_sample:
                raise KeyError(
                    f'ContinualIoUMetric: the data sample of {data_sample.get("img_path")!r} has '
                    f'no {key!r} in its metainfo; wrap the test datasets in ContinualDataset '
                    "(type='ContinualDataset', datasets=[...], rounds=R)")
        return int(data_sample['round']), str(data_sample['condition'])

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """The CoTTA table of the collected per-sample areas; logs it."""
        totals = sum_areas_by_group(results)
        out = continual_iou_metrics(totals, self.metrics, self.nan_to_num, self.beta)
        self.log_table(totals, out)
        return out

    def log_table(self, totals: 'OrderedDict[Group, Areas]', metrics: Dict[str, float]) -> None:
        """Logs rounds x conditions of each summary metric (mIoU first)."""
        if not totals:
            return
        rounds = sorted({r for r, _ in totals})
        conditions = list(OrderedDict.fromkeys(c for _, c in totals))
        names = sorted((k for k in metrics if '/' not in k), key=lambda k: k != 'mIoU')
        for name in names:
            table = PrettyTable(['round'] + conditions + ['mean'])
            for r in rounds:
                table.add_row([r] + [metrics.get(f'round{r}/{c}/{name}', '-')
                                     for c in conditions] + [metrics[f'round{r}/{name}']])
            table.add_row(['mean'] + [metrics[f'{c}/{name}'] for c in conditions] + [metrics[name]])
            print_log(
                f'continual {name} per round and condition:\n' + table.get_string(),
                logger='current')
