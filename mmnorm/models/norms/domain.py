"""Explicit [source | target] batch-split declaration for domain-aware norm layers.

Domain-adaptive training feeds one concatenated batch ``cat([x_source, x_target])`` through the
backbone. Layers that normalise each domain separately (RN, the AdaBN layer) must know where the
source part ends; the training wrapper declares it with :func:`domain_split` instead of the layers
guessing (e.g. "first half is source").
"""
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple, Union

import torch.nn as nn

from .layer_names import layer_label

__all__ = ['DomainAwareMixin', 'domain_split', 'set_domain_split', 'check_domain_split']


class DomainAwareMixin:
    """Marks a module whose train-mode forward depends on the [source | target] split of its batch.

    ``self.domain_split`` is ``None`` (no declaration) or ``(num_source, num_target)`` in samples.
    """

    domain_split: Optional[Tuple[int, int]] = None


def set_domain_split(model: nn.Module, split: Optional[Tuple[int, int]]) -> int:
    """Sets ``domain_split`` on every :class:`DomainAwareMixin` module of ``model``; returns how
    many.

    Args:
        model (nn.Module): Any module (model wrappers included: their children are visited).
        split (tuple[int, int] | None): ``(num_source, num_target)``, or None to clear.
    """
    if split is not None:
        if (not isinstance(split, (tuple, list)) or len(split) != 2
                or not all(isinstance(n, int) and n >= 0 for n in split)):
            raise ValueError('split must be a pair of non-negative ints (num_source, num_target), '
                             f'got {split!r}')
        split = (int(split[0]), int(split[1]))
    count = 0
    for module in model.modules():
        if isinstance(module, DomainAwareMixin):
            module.domain_split = split
            count += 1
    return count


@contextmanager
def domain_split(model: nn.Module, split: Tuple[int, int]) -> Iterator[int]:
    """Declares ``split = (num_source, num_target)`` to every domain-aware layer inside the block.

    The previous declarations are restored on exit, also when the block raises. Yields the number of
    layers told.
    """
    previous = [(m, m.domain_split) for m in model.modules() if isinstance(m, DomainAwareMixin)]
    try:
        yield set_domain_split(model, split)
    finally:
        for module, old in previous:
            module.domain_split = old


def check_domain_split(split: Optional[Tuple[int, int]], batch_size: int,
                       layer: Union[str, nn.Module]) -> None:
    """Raises ValueError unless ``split`` describes a batch of ``batch_size`` samples.

    Args:
        split: The declared ``(num_source, num_target)`` or None.
        batch_size (int): ``x.shape[0]`` seen by the layer.
        layer (str | nn.Module): The layer (named with its module path when known) or its
            description.
    """
    if split is None:
        return
    if sum(split) != batch_size:
        if isinstance(layer, nn.Module):
            layer = layer_label(layer)
        raise ValueError(
            f'{layer}: declared domain split {tuple(split)} (source, target) sums to {sum(split)} '
            f'but the batch holds {batch_size} samples. Either its rows are not the images of the '
            "batch (a head that reshapes the map into rows of patches or regions, e.g. ISANet's "
            "self-attention): use norm_cfg=dict(type='BN') there and keep RN / split AdaBN in the "
            'layers that see whole images; or the split does not describe this batch: declare '
            'domain_split(model, (num_source, num_target)) around its forward')
