"""One value per channel in training: the mmnorm error shared by AdaBN, RN and PBN.

A layer that normalises a training batch with that batch's own statistics needs at least two values
per channel (``N * H * W >= 2``, in each domain part for a split AdaBN or RN): with one value the
variance is 0 (biased) or undefined (unbiased), and torch's BN refuses the input with "Expected more
than 1 value per channel when training". Such batches come from 1x1 maps (ASPP / PSP / UPerNet image
pooling, global-context branches) with one image per GPU, or one image per domain in a [source |
target] batch. :func:`check_batch_statistics` turns them into a ``ValueError`` that names the layer
(its module path when :func:`~mmnorm.models.norms.layer_names.name_layers` has run, as in the UDA
wrappers and :func:`mmnorm.recalibrate_bn`), the shape, and the fix.

Not an error: eval mode and ``norm_eval`` (running statistics), one spatial position with several
images, and PBN's patches (an axis shorter than 4 is never cut, so a small map is one patch: plain
BN over the whole map).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .layer_names import layer_label

__all__ = ['check_batch_statistics', 'values_per_channel']


def values_per_channel(shape: Sequence[int], samples: Optional[int] = None) -> int:
    """``N * prod(spatial)`` of an ``(N, C, *)`` shape; ``samples`` replaces ``N`` (a domain part
    of the batch)."""
    return (shape[0] if samples is None else samples) * math.prod(shape[2:])


def _synchronised(bn: Optional[nn.Module]) -> bool:
    """True when ``bn`` is a SyncBN that reduces over more than one process (its statistics span
    every GPU)."""
    return (isinstance(bn, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def _training_fix(kind: str, per_domain: bool) -> str:
    if per_domain:
        return ('Use at least 2 images per domain per GPU (source and target batch each), or keep '
                f'{kind} out of 1x1 pooling branches (ASPP / PSP / UPerNet image pooling): '
                "norm_cfg=dict(type='BN') there normalises the images of both domains together")
    return (
        f'Use at least 2 images per GPU (train_dataloader batch_size), or keep {kind} out of 1x1 '
        "pooling branches (ASPP / PSP / UPerNet image pooling): norm_cfg=dict(type='GN', "
        'num_groups=...) there needs no batch statistics')


def check_batch_statistics(layer: nn.Module,
                           x: torch.Tensor,
                           split: Optional[Tuple[int, int]] = None,
                           part: Optional[str] = None,
                           bn: Optional[nn.Module] = None,
                           fix: Optional[str] = None) -> None:
    """Raises ValueError when ``x`` (or a domain part of it) has a single value per channel for
    batch statistics.

    Args:
        layer (nn.Module): The mmnorm layer (named in the message, with its ``layer_path`` if set).
        x (Tensor): The input ``(N, C, *)`` normalised with its own batch statistics.
        split (tuple[int, int], optional): ``(num_source, num_target)``: each non-empty domain part
            of ``x`` is checked on its own (RN). None: ``x`` as a whole.
        part (str, optional): What ``x`` is, for the message (e.g. ``"the 'target' domain part"`` of
            a split AdaBN); a ``part`` or ``split`` makes the remedy "images per domain".
        bn (nn.Module, optional): The BN computing the statistics; a SyncBN across several processes
            is not checked (its statistics pool every GPU's values).
        fix (str, optional): The remedy to print instead of the training one (e.g. for a test-time
            mode).

    Raises:
        ValueError: ``N * H * W == 1`` (for ``x`` or a domain part), naming the layer, the shape and
            the remedy.
    """
    if _synchronised(bn):
        return
    parts = [(part or 'input', None)] if split is None else [
        (f'the {name} part ({count} of split {tuple(split)}) of input', count)
        for name, count in zip(('source', 'target'), split) if count > 0
    ]
    for what, samples in parts:
        if values_per_channel(x.shape, samples) == 1:
            kind = type(layer).__name__
            remedy = fix or _training_fix(kind, split is not None or part is not None)
            raise ValueError(
                f'{layer_label(layer)}: {what} {tuple(x.shape)} has one value per channel (N x H x '
                f'W = 1) for the batch statistics {kind} normalises with. {remedy}')
