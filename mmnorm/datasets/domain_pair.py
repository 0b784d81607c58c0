"""Paired [source | target] samples for domain-adaptive training.

:class:`DomainPairDataset` wraps two ordinary datasets (a labelled source, e.g. ``GTA5Dataset``, and
an unlabelled target, e.g. ``CityscapesDataset``), each with its own pipeline. Item ``i`` is
``dict(source=<source sample>, target=<target sample>)``; mmengine's default ``pseudo_collate``
turns a list of them into ``dict(source=dict(inputs=[...], data_samples=[...]), target=dict(...))``,
which the mmnorm UDA models (``UDAEncoderDecoder``, ``UDAFasterRCNN``) preprocess as one
concatenated batch.

With a distributed sampler every rank draws its own indices, hence its own source *and* target
samples.
"""
import os
from typing import Optional, Union

import numpy as np
from mmengine.dist import get_rank
from mmengine.registry import DATASETS
from torch.utils.data import Dataset, get_worker_info

__all__ = ['DomainPairDataset']

PAIRINGS = ('random', 'cycle')


@DATASETS.register_module()
class DomainPairDataset(Dataset):
    """Pairs each source sample with a target sample.

    Registered in the root mmengine ``DATASETS`` registry, so ``type='DomainPairDataset'`` builds
    from mmseg and mmdet configs; the inner datasets are built in the config's own scope.

    Args:
        source (dict | Dataset): The labelled source dataset (config or instance), with its training
            pipeline.
        target (dict | Dataset): The target dataset (config or instance); its pipeline need not load
            annotations.
        pairing (str): How item ``i`` picks its target sample.

            - ``'random'`` (default): length ``len(source)``; a uniformly random target sample per
              item, drawn from a generator owned by the (rank, dataloader worker) that loads it,
              seeded from numpy's global RNG (which mmengine's ``randomness.seed`` and worker
              seeding control) and the rank.
            - ``'cycle'``: length ``max(len(source), len(target))``; item ``i`` is ``(source[i %
              len(source)], target[i % len(target)])``, so an epoch visits every sample of both.

    Example:
        >>> train_dataloader = dict(dataset=dict( ...     type='DomainPairDataset', ...
        source=dict(type='GTA5Dataset', data_root='data/gta5', pipeline=train_pipeline, ...), ...
        target=dict(type='CityscapesDataset', data_root='data/cityscapes', pipeline=target_pipeline,
        ...)))
    """

    def __init__(self,
                 source: Union[dict, Dataset],
                 target: Optional[Union[dict, Dataset]],
                 pairing: str = 'random'):
        if source is None:
            raise ValueError(
                'DomainPairDataset needs a source dataset (a dataset config dict or instance), '
                'got source=None')
        if target is None:
            raise ValueError(
                'DomainPairDataset needs a target dataset: domain-adaptive training draws every '
                'batch from the source and the target domain, got target=None')
        if pairing not in PAIRINGS:
            raise ValueError(
                f'DomainPairDataset pairing must be one of {PAIRINGS}, got {pairing!r}')
        self.source = self._build(source, 'source')
        self.target = self._build(target, 'target')
        for name, dataset in (('source', self.source), ('target', self.target)):
            if len(dataset) == 0:
                raise ValueError(
                    f'DomainPairDataset: the {name} dataset {type(dataset).__name__} is empty')
        self.pairing = pairing
        self._rng = None
        self._rng_owner = None

    @staticmethod
    def _build(dataset: Union[dict, Dataset], name: str) -> Dataset:
        if isinstance(dataset, dict):
            return DATASETS.build(dataset)
        if isinstance(dataset, Dataset):
            return dataset
        raise TypeError(f'DomainPairDataset {name} must be a dataset config dict or a Dataset, '
                        f'got {type(dataset).__name__}')

    @property
    def metainfo(self) -> dict:
        """The source dataset's meta information (classes, palette), which the training loop
        hands to the visualizer."""
        return getattr(self.source, 'metainfo', {})

    def __len__(self) -> int:
        if self.pairing == 'cycle':
            return max(len(self.source), len(self.target))
        return len(self.source)

    def get_data_info(self, index: int) -> dict:
        """The source sample's data info (mmdet's ``AspectRatioBatchSampler`` groups by its width
        / height)."""
        return self.source.get_data_info(index % len(self.source))

    def target_index(self, index: int) -> int:
        """The target sample paired with item ``index``."""
        if self.pairing == 'cycle':
            return index % len(self.target)
        worker = get_worker_info()
        owner = (os.getpid(), get_rank(), worker.id if worker is not None else -1)
        # a fresh stream per process / worker, never one copied from the parent
        if self._rng_owner != owner:
            self._rng = np.random.default_rng(
                [int(np.random.randint(2**31)), owner[1] + 1, owner[2] + 1])
            self._rng_owner = owner
        return int(self._rng.integers(len(self.target)))

    def __getitem__(self, index: int) -> dict:
        return dict(
            source=self.source[index % len(self.source)],
            target=self.target[self.target_index(index)])
