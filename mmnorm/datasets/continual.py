"""A continual test stream: datasets (domains) chained in order, the chain repeated for R rounds.

The protocol of continual test-time adaptation (CoTTA, Wang et al., CVPR 2022, arXiv 2203.13591):
Cityscapes -> ACDC fog, night, rain, snow, the four in this order, ten times, the model adapting
throughout. :class:`ContinualDataset` makes that stream one dataset, so a single ``tools/test.py``
run (one test loop, one model, one adapter) goes through it; every sample's data sample carries
its ``condition`` and ``round`` (1-based) for ``ContinualIoUMetric``.

Order under a distributed sampler: the test loader must not shuffle. mmengine's
``DefaultSampler(shuffle=False)`` deals the stream out round robin (rank ``r`` of ``W`` gets items
``r, r + W, r + 2W, ...``), and ``TestTimeAdaptHook`` keeps one model on all ranks, so step ``t``
adapts on items ``tW .. tW + W - 1`` together: the continual order is that of one process taking
batches of ``W`` consecutive items (``W b`` with ``b`` images per rank and batch). With
``round_up=True`` (mmengine's default) the last step pads the ranks with the first items of the
stream; the model adapts on them once more after the last round, and their predictions are dropped
when the results are collected.
"""
import bisect
from typing import List, Optional, Sequence, Tuple, Union

from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from ..validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = ['ContinualDataset']


@DATASETS.register_module()
class ContinualDataset(Dataset):
    """Datasets chained in the given order, the chain repeated ``rounds`` times.

    Item ``i`` is item ``j`` of dataset ``k`` in round ``r = i // L + 1`` (``L`` the summed length
    of the datasets, ``i mod L`` falling into dataset ``k``'s range), through dataset ``k``'s own
    pipeline. Its data sample's metainfo gets ``condition`` and ``round`` (``r``), whatever the
    pipeline's ``PackSegInputs`` ``meta_keys``.

    Registered in the root mmengine ``DATASETS`` registry; the inner datasets are built in the
    config's own scope.

    Args:
        datasets (dict | Dataset | Sequence[dict | Dataset]): The stream of one round, in order
            (configs or instances): e.g. one ``ACDCDataset`` listing its conditions in order, or
            one dataset per domain.
        rounds (int): How many times the chain is repeated. Defaults to 1.
        names (Sequence[str], optional): The condition name of each dataset. Defaults to None:
            each sample's ``condition`` in its dataset's data info (``ACDCDataset`` sets it).

    Example:
        >>> test_dataloader = dict(
        ...     sampler=dict(type='DefaultSampler', shuffle=False),
        ...     dataset=dict(type='ContinualDataset', rounds=10, datasets=dict(
        ...         type='ACDCDataset', conditions=('fog', 'night', 'rain', 'snow'),
        ...         data_root='data/acdc/', pipeline=test_pipeline)))
    """

    def __init__(self,
                 datasets: Union[dict, Dataset, Sequence[Union[dict, Dataset]]],
                 rounds: int = 1,
                 names: Optional[Sequence[str]] = None) -> None:
        if isinstance(datasets, (dict, Dataset)):
            datasets = [datasets]
        if not isinstance(datasets, Sequence) or isinstance(datasets, str):
            raise ArgumentTypeError('ContinualDataset datasets must be a dataset config or '
                                    f'dataset, or a list of them, got {datasets!r}')
        if not datasets:
            raise ArgumentError('ContinualDataset needs at least one dataset, got datasets=[]')
        self.rounds = check_positive_int(rounds, 'ContinualDataset rounds')
        self.datasets: List[Dataset] = [self._build(d) for d in datasets]
        if names is not None and (isinstance(names, str) or len(names) != len(self.datasets)):
            raise ArgumentError(f'ContinualDataset names must list one name per dataset '
                                f'({len(self.datasets)}), got {names!r}')
        self.names = None if names is None else [str(n) for n in names]
        if self.names is None:
            for k, dataset in enumerate(self.datasets):
                for j in range(len(dataset)):
                    if dataset.get_data_info(j).get('condition') is None:
                        raise ArgumentError(
                            f'ContinualDataset: item {j} of dataset {k} '
                            f'({type(dataset).__name__}) has no condition in its data info; '
                            'pass names=[...], one per dataset')
        self.offsets = [0]  # offsets[k]: index of dataset k's first item within a round
        for dataset in self.datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))

    @staticmethod
    def _build(dataset: Union[dict, Dataset]) -> Dataset:
        built = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        if not isinstance(built, Dataset):
            raise ArgumentTypeError('ContinualDataset datasets must be dataset configs or '
                                    f'datasets, got {type(built).__name__}')
        if len(built) == 0:
            raise ArgumentError(f'ContinualDataset: the dataset {type(built).__name__} is empty')
        return built

    @property
    def metainfo(self) -> dict:
        """The first dataset's meta information (classes, palette), which the runner hands to the
        evaluator and the visualizer."""
        return getattr(self.datasets[0], 'metainfo', {})

    def __len__(self) -> int:
        return self.rounds * self.offsets[-1]

    def locate(self, index: int) -> Tuple[int, int, int]:
        """``(round, dataset index, item index)`` of stream item ``index`` (round 1-based)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f'ContinualDataset index {index} out of range for {len(self)} items')
        round_index, within = divmod(index % len(self), self.offsets[-1])
        k = bisect.bisect_right(self.offsets, within) - 1
        return round_index + 1, k, within - self.offsets[k]

    def get_data_info(self, index: int) -> dict:
        """The data info of stream item ``index`` with its ``condition`` and ``round``."""
        round_, k, j = self.locate(index)
        info = self.datasets[k].get_data_info(j)
        condition = info['condition'] if self.names is None else self.names[k]
        return dict(info, condition=condition, round=round_)

    def __getitem__(self, index: int) -> dict:
        round_, k, j = self.locate(index)
        meta = self.get_data_info(index)
        sample = self.datasets[k][j]
        packed = sample.get('data_samples') if isinstance(sample, dict) else None
        if packed is None:
            raise ArgumentError(
                f'ContinualDataset: dataset {k} ({type(self.datasets[k]).__name__}) returned no '
                "'data_samples'; its pipeline must end with a packing transform (PackSegInputs)")
        for data_sample in packed if isinstance(packed, list) else [packed]:
            data_sample.set_metainfo(dict(condition=meta['condition'], round=round_))
        return sample
