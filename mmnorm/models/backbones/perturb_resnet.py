"""Statistics-perturbation layers (MixStyle, EFDMix, DSU) at chosen positions of the toolboxes' own
ResNets.

The papers insert their layer between ResNet stages: MixStyle / EFDMix after res1-res3, DSU after
the first conv (before its norm), after the stem and after every stage. :class:`PerturbResNetMixin`
is that placement as one backbone option::

    backbone=dict(type='PerturbResNetV1c', perturb=dict(type='MixStyle', p=0.5, alpha=0.1),
                  after_stages=(0, 1, 2))

Positions, in forward order:

- ``'conv1'``: the output of the first stem conv, before its norm (the authors' DSU ResNet perturbs
  there, ``pertubration0`` between ``conv1`` and ``bn1``); in a deep stem (V1c / V1d) its first
  conv;
- ``'stem'``: the stem's output, after the max-pool;
- the stage indices ``0 .. num_stages - 1`` (as in ``out_indices``): the stage's output.

Every position gets its own layer, named ``perturb_conv1`` / ``perturb_stem`` /
``perturb_layer{i+1}``, applied by a forward hook on the module that produces that output
(``conv1``, ``maxpool``, ``layer{i+1}``): the toolbox's own ``ResNet.forward`` runs unchanged, the
perturbed features continue into the next module and are the ones returned for that stage. The
layers have no parameters or buffers, so checkpoints of the plain ResNet load unchanged (strictly),
and they follow the backbone's train/eval mode: ``frozen_stages`` and ``norm_eval`` freeze weights
and BN statistics, the perturbation still acts in training (the authors' behaviour). ``norm_cfg``
(PBN, AdaBN, ...) and the IBN-Net placement (``ibn=dict(type='a' | 'b')``) compose with it.

This module imports no toolbox; the registered classes live in ``mmseg_perturb_resnet`` /
``mmdet_perturb_resnet``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ...validation import ArgumentError, ArgumentTypeError
from ..perturb import StatPerturbation
from .ibn_resnet import IBNResNetMixin

__all__ = ['PerturbResNetMixin', 'PerturbationHook', 'add_perturbation', 'perturb_positions']

Position = Union[str, int]
#: Named positions before the stages, in forward order.
NAMED_POSITIONS = ('conv1', 'stem')


def perturb_positions(after_stages: Sequence[Position], num_stages: int) -> Tuple[Position, ...]:
    """Validated positions in forward order (``'conv1'``, ``'stem'``, then stage indices ascending).

    Raises:
        ValueError: a position that is neither ``'conv1'``, ``'stem'`` nor a stage index of the
            backbone, duplicates, or none.
    """
    if isinstance(after_stages,
                  (str, int)) or not isinstance(after_stages, Sequence) or not after_stages:
        raise ArgumentError(
            "after_stages must be a non-empty list of positions ('conv1', 'stem' and/or stage "
            f'indices 0..{num_stages - 1}), got after_stages={after_stages!r}')
    for pos in after_stages:
        is_stage = isinstance(pos, int) and not isinstance(pos, bool) and 0 <= pos < num_stages
        if pos not in NAMED_POSITIONS and not is_stage:
            raise ArgumentError(
                f"after_stages: {pos!r} is not a position of this backbone; use 'conv1', 'stem' "
                f'or a stage index 0..{num_stages - 1} (num_stages={num_stages})')
    if len(set(after_stages)) != len(after_stages):
        raise ArgumentError(
            f'after_stages lists a position twice, got after_stages={after_stages!r}')
    named = tuple(p for p in NAMED_POSITIONS if p in after_stages)
    return named + tuple(sorted(p for p in after_stages if p not in NAMED_POSITIONS))


def _position_name(pos: Position) -> str:
    return f'perturb_{pos}' if pos in NAMED_POSITIONS else f'perturb_layer{pos + 1}'


def _hooked_module(resnet: nn.Module, pos: Position) -> nn.Module:
    """The module whose output position ``pos`` perturbs."""
    if pos == 'conv1':
        return resnet.stem[0] if resnet.deep_stem else resnet.conv1
    if pos == 'stem':
        return resnet.maxpool
    return getattr(resnet, resnet.res_layers[pos])


class PerturbationHook:
    """Forward hook: the hooked module's output through the ResNet's perturbation layer at ``pos``.

    It looks the layer up on the ResNet at every call, so a position that is no longer listed in
    ``resnet.perturb_positions`` (or whose layer was removed) passes its output unchanged.
    """

    def __init__(self, resnet: nn.Module, pos: Position):
        self.resnet = resnet
        self.pos = pos

    def __call__(self, module: nn.Module, args: tuple,
                 output: torch.Tensor) -> Optional[torch.Tensor]:
        if self.pos not in self.resnet.perturb_positions:
            return None
        layer = getattr(self.resnet, _position_name(self.pos), None)
        return None if layer is None else layer(output)


def add_perturbation(resnet: nn.Module, perturb: dict,
                     after_stages: Sequence[Position]) -> nn.Module:
    """Adds one perturbation layer built from ``perturb`` at every position of ``after_stages``, in
    place.

    Each layer is a child of ``resnet`` and acts through a :class:`PerturbationHook` on the module
    producing that position's output. Called again, it replaces the layers (those of positions no
    longer listed are removed) and reuses the hooks.

    Args:
        resnet (nn.Module): A built mmseg/mmdet ``ResNet`` (any subclass).
        perturb (dict): Config of the layer, e.g. ``dict(type='DSU', p=0.5)`` (root ``MODELS``).
        after_stages (Sequence): ``'conv1'``, ``'stem'`` and/or stage indices.

    Returns:
        nn.Module: ``resnet``, with ``perturb_positions`` recording the positions.
    """
    if not isinstance(perturb, dict) or 'type' not in perturb:
        raise ArgumentTypeError(
            f"perturb must be a layer config like dict(type='MixStyle'), got {perturb!r}")
    positions = perturb_positions(after_stages, len(resnet.res_layers))
    for pos in getattr(resnet, 'perturb_positions', ()):
        if pos not in positions and hasattr(resnet, _position_name(pos)):
            delattr(resnet, _position_name(pos))
    for pos in positions:
        layer = MODELS.build(dict(perturb))
        if not isinstance(layer, StatPerturbation):
            raise ArgumentTypeError(f"perturb type {perturb['type']!r} is not a perturbation "
                                    'layer (MixStyle, EFDMix, DSU)')
        resnet.add_module(_position_name(pos), layer)
    hooked = set(getattr(resnet, 'perturbation_hooks', ()))
    for pos in positions:
        if pos not in hooked:
            _hooked_module(resnet, pos).register_forward_hook(PerturbationHook(resnet, pos))
            hooked.add(pos)
    resnet.perturbation_hooks = frozenset(hooked)
    resnet.perturb_positions = positions
    return resnet


class PerturbResNetMixin(IBNResNetMixin):
    """The toolbox ResNet with perturbation layers (and optionally the IBN-Net placement).

    ``__init__(..., perturb=dict(type='MixStyle'), after_stages=(0, 1, 2), ibn=None, **kwargs)``.

    Builds the toolbox ResNet with the IBN-Net placement when ``ibn`` is given
    (:class:`IBNResNetMixin`), then :func:`add_perturbation`. The forward is the toolbox's own.
    """

    def __init__(self,
                 *args,
                 perturb: dict = dict(type='MixStyle'),
                 after_stages: Sequence[Position] = (0, 1, 2),
                 ibn: Optional[dict] = None,
                 **kwargs):
        super().__init__(*args, ibn=ibn, **kwargs)
        add_perturbation(self, perturb, after_stages)
