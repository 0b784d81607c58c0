"""Statistics-perturbation layers (MixStyle, EFDMix, DSU) after chosen stages of the toolboxes' own ResNets.

The papers insert their layer between ResNet stages: MixStyle / EFDMix after res1-res3, DSU after the stem and
after every stage. :class:`PerturbResNetMixin` is that placement as one backbone option::

    backbone=dict(type='PerturbResNetV1c', perturb=dict(type='MixStyle', p=0.5, alpha=0.1),
                  after_stages=(0, 1, 2))

Positions: ``'stem'`` (the stem's output, after the max-pool) and the stage indices ``0 .. num_stages - 1`` (as
in ``out_indices``); every position gets its own layer, named ``perturb_stem`` / ``perturb_layer{i+1}``. The
perturbed features continue into the next stage and are the ones returned for that stage. The layers have no
parameters or buffers, so checkpoints of the plain ResNet load unchanged (strictly), and they follow the
backbone's train/eval mode: ``frozen_stages`` and ``norm_eval`` freeze weights and BN statistics, the
perturbation still acts in training (the authors' behaviour). ``norm_cfg`` (PBN, AdaBN, ...) and the IBN-Net
placement (``ibn=dict(type='a' | 'b')``) compose with it.

This module imports no toolbox; the registered classes live in ``mmseg_perturb_resnet`` / ``mmdet_perturb_resnet``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ..perturb import StatPerturbation
from .ibn_resnet import add_ibn

__all__ = ['PerturbResNetMixin', 'add_perturbation', 'perturb_positions']

Position = Union[str, int]


def perturb_positions(after_stages: Sequence[Position], num_stages: int) -> Tuple[Position, ...]:
    """Validated positions in forward order (``'stem'`` first, then stage indices ascending).

    Raises:
        ValueError: a position that is neither ``'stem'`` nor a stage index of the backbone, duplicates, or none.
    """
    if isinstance(after_stages, (str, int)) or not isinstance(after_stages, Sequence) or not after_stages:
        raise ValueError("after_stages must be a non-empty list of positions ('stem' and/or stage indices "
                         f'0..{num_stages - 1}), got after_stages={after_stages!r}')
    for pos in after_stages:
        is_stage = isinstance(pos, int) and not isinstance(pos, bool) and 0 <= pos < num_stages
        if pos != 'stem' and not is_stage:
            raise ValueError(f"after_stages: {pos!r} is not a position of this backbone; use 'stem' or a stage "
                             f'index 0..{num_stages - 1} (num_stages={num_stages})')
    if len(set(after_stages)) != len(after_stages):
        raise ValueError(f'after_stages lists a position twice, got after_stages={after_stages!r}')
    stages = sorted(p for p in after_stages if p != 'stem')
    return (('stem', ) if 'stem' in after_stages else ()) + tuple(stages)


def _position_name(pos: Position) -> str:
    return 'perturb_stem' if pos == 'stem' else f'perturb_layer{pos + 1}'


def add_perturbation(resnet: nn.Module, perturb: dict, after_stages: Sequence[Position]) -> nn.Module:
    """Adds one perturbation layer built from ``perturb`` at every position of ``after_stages``, in place.

    Args:
        resnet (nn.Module): A built mmseg/mmdet ``ResNet`` whose class uses :class:`PerturbResNetMixin`'s forward.
        perturb (dict): Config of the layer, e.g. ``dict(type='DSU', p=0.5)`` (root ``MODELS``).
        after_stages (Sequence): ``'stem'`` and/or stage indices.

    Returns:
        nn.Module: ``resnet``, with ``perturb_positions`` recording the positions.
    """
    if not isinstance(perturb, dict) or 'type' not in perturb:
        raise TypeError(f"perturb must be a layer config like dict(type='MixStyle'), got {perturb!r}")
    positions = perturb_positions(after_stages, len(resnet.res_layers))
    for pos in positions:
        layer = MODELS.build(dict(perturb))
        if not isinstance(layer, StatPerturbation):
            raise TypeError(f"perturb type {perturb['type']!r} is not a perturbation layer (MixStyle, EFDMix, DSU)")
        resnet.add_module(_position_name(pos), layer)
    resnet.perturb_positions = positions
    return resnet


class PerturbResNetMixin:
    """``__init__(..., perturb=dict(type='MixStyle'), after_stages=(0, 1, 2), ibn=None, **resnet_kwargs)``.

    Builds the toolbox ResNet, applies the IBN-Net placement when ``ibn`` is given
    (:func:`~mmnorm.models.backbones.add_ibn`), then :func:`add_perturbation`.
    """

    def __init__(self, *args, perturb: dict = dict(type='MixStyle'), after_stages: Sequence[Position] = (0, 1, 2),
                 ibn: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if ibn is not None:
            if not isinstance(ibn, dict):
                raise TypeError(f'ibn must be a dict like dict(type="a") or None, got {ibn!r}')
            add_ibn(self, **ibn)
        add_perturbation(self, perturb, after_stages)

    def _perturb_at(self, pos: Position, x: torch.Tensor) -> torch.Tensor:
        name = _position_name(pos)
        return getattr(self, name)(x) if pos in self.perturb_positions else x

    def forward(self, x: torch.Tensor) -> tuple:
        """The toolbox ResNet forward with the perturbation layers at their positions.

        Shape: ``(N, 3, H, W)`` in; a tuple of the ``out_indices`` stage outputs.
        """
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.norm1(self.conv1(x)))
        x = self._perturb_at('stem', self.maxpool(x))
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = self._perturb_at(i, getattr(self, layer_name)(x))
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
