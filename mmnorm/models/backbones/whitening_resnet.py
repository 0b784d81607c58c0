"""Instance whitening (IW / IRW / ISW, RobustNet) at RobustNet's positions of the toolboxes' own
ResNets.

RobustNet (arXiv 2103.15597) standardises the features at three places of its ResNet-50
(``wt_layer 0 0 2 2 2 0 0``) and puts its whitening loss on them::

    backbone=dict(type='WhiteningResNetV1c', depth=50, whitening=dict(type='ISW'),
                  after_stages=('stem', 0, 1))

Positions, in forward order:

- ``'stem'``: the stem's last norm output, before its ReLU (the authors replace that BN by the
  standardisation; here it standardises the BN's output, which for each channel is the same map up
  to the sign of the BN weight and eps, and keeps the BN's keys so plain checkpoints load);
- stage index ``i`` (as in ``out_indices``): the residual sum of stage ``i``'s last block, before
  its final ReLU (the authors' place; IBN-Net-b puts its IN there).

The stem position is a forward pre-hook on the ReLU that follows that norm (not a hook on the
norm: mmengine's SyncBN -> BN revert replaces norm modules, and their hooks with them); a stage
position is built into the stage's last block when the backbone is constructed (the toolbox block
applies its final ReLU with the same module as its inner ReLUs, so no hook can reach between the
sum and that ReLU; see :class:`~mmnorm.models.backbones.ibn_resnet.PostResidualIN`). The
standardisation modules are named ``whitening_stem`` (a child of the ResNet) and
``layer{i+1}.{last}.whitening``. IW / IRW / ISW have no parameters, so plain ResNet checkpoints
load strictly; ISW adds a mask buffer that such checkpoints may lack; SAW adds its classifiers
(parameters: pretrained backbones load through mmengine's non-strict ``Pretrained`` init).
``norm_cfg`` and IBN-Net-a (``ibn=dict(type='a')``) compose; IBN-b occupies the same positions and
is refused.

The loss: :func:`standardized_outputs` records the standardised maps of a forward;
:meth:`WhiteningResNetMixin.whitening_loss` is ``loss_weight`` times their mean loss (their sum
for SAW; the segmentor ``WhiteningEncoderDecoder`` adds it as ``loss_whitening``). This module
imports no toolbox; the registered classes live in ``mmseg_whitening_resnet``.
"""
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ...validation import ArgumentError, ArgumentTypeError
from ..whitening.instance_whitening import ISW, InstanceWhitening, build_whitening
from .ibn_resnet import IBNResNetMixin, residual_sum

__all__ = [
    'WhiteningResNetMixin', 'PostResidualWhitening', 'whitening_positions', 'standardized_outputs',
    'WHITENING_BLOCKS', 'register_whitening_blocks'
]

Position = Union[str, int]
#: RobustNet's ResNet-50 placement (``wt_layer 0 0 x x x 0 0``: stem, layer1, layer2)
DEFAULT_POSITIONS = ('stem', 0, 1)


def whitening_positions(after_stages: Sequence[Position], num_stages: int) -> Tuple[Position, ...]:
    """Validated positions in forward order (``'stem'``, then stage indices ascending).

    Raises:
        ArgumentError: a position that is neither ``'stem'`` nor a stage index of the backbone,
            duplicates, or none.
    """
    if isinstance(after_stages,
                  (str, int)) or not isinstance(after_stages, Sequence) or not after_stages:
        raise ArgumentError(
            "after_stages must be a non-empty list of positions ('stem' and/or stage indices "
            f'0..{num_stages - 1}), got after_stages={after_stages!r}')
    for pos in after_stages:
        is_stage = isinstance(pos, int) and not isinstance(pos, bool) and 0 <= pos < num_stages
        if pos != 'stem' and not is_stage:
            raise ArgumentError(
                f"after_stages: {pos!r} is not a whitening position of this backbone; use 'stem' "
                f'or a stage index 0..{num_stages - 1} (num_stages={num_stages})')
    if len(set(after_stages)) != len(after_stages):
        raise ArgumentError(
            f'after_stages lists a position twice, got after_stages={after_stages!r}')
    stem = ('stem', ) if 'stem' in after_stages else ()
    return stem + tuple(sorted(p for p in after_stages if p != 'stem'))


class PostResidualWhitening:
    """Mixin for a toolbox ResNet block: ``relu(whitening(residual_sum(x)))``.

    ``class SegBottleneckWhitening(PostResidualWhitening, Bottleneck)`` takes the block's own
    arguments plus ``whitening`` (an IW / IRW / ISW config) and builds ``self.whitening`` for the
    block's output channels.
    """

    def __init__(self, *args, whitening: dict, **kwargs):
        super().__init__(*args, **kwargs)
        out_channels = (self.conv3 if hasattr(self, 'conv3') else self.conv2).out_channels
        self.whitening = build_whitening(whitening, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(residual_sum, self, x, use_reentrant=False)
        else:
            out = residual_sum(self, x)
        # not the block's in-place ReLU: the standardised map is kept for the loss
        return F.relu(self.whitening(out))


# toolbox block class -> its whitening subclass; filled by mmseg_whitening_resnet
WHITENING_BLOCKS = {}


def register_whitening_blocks(*blocks: type) -> None:
    """Records whitening subclasses (``PostResidualWhitening`` + a toolbox block class)."""
    for block in blocks:
        base = next(b for b in block.__bases__ if b is not PostResidualWhitening)
        WHITENING_BLOCKS[base] = block


class _LastBlockWhitening:
    """The ``block`` a toolbox ``ResLayer`` builds a stage with: the last block as the whitening
    subclass (``ResLayer`` calls ``block(**kwargs)`` once per block, in order)."""

    def __init__(self, block: type, num_blocks: int, whitening: dict):
        if block not in WHITENING_BLOCKS:
            raise ArgumentTypeError('whitening supports the mmseg BasicBlock and Bottleneck, '
                                    f'got {block.__name__}')
        self.block = block
        self.expansion = block.expansion
        self.num_blocks = num_blocks
        self.whitening = whitening
        self.built = 0

    def __call__(self, **kwargs) -> nn.Module:
        self.built += 1
        if self.built < self.num_blocks:
            return self.block(**kwargs)
        return WHITENING_BLOCKS[self.block](whitening=self.whitening, **kwargs)


class _StemWhiteningHook:
    """Forward pre-hook on the stem's last ReLU: its input (the stem's last norm output) through
    ``resnet.whitening_stem``."""

    def __init__(self, resnet: nn.Module):
        self.resnet = resnet

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.resnet.whitening_stem(args[0]), ) + tuple(args[1:])


@contextmanager
def standardized_outputs(
        backbone: nn.Module) -> Iterator[List[Tuple[InstanceWhitening, torch.Tensor]]]:
    """Records ``(module, standardised map)`` of every whitening position during the forwards run
    inside the context (forward hooks, removed on exit)."""
    records = []
    handles = [
        module.register_forward_hook(lambda m, args, out: records.append((m, out)))
        for module in backbone.whitening_modules().values()
    ]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


class WhiteningResNetMixin(IBNResNetMixin):
    """``__init__(..., whitening=dict(type='ISW'), after_stages=('stem', 0, 1), ibn=None,
    **resnet_kwargs)``: the toolbox ResNet with instance standardisation and a whitening loss at
    ``after_stages``.

    Args:
        whitening (dict): ``dict(type='IW' | 'IRW' | 'ISW' | 'SAW', loss_weight=..., ...)`` (see
            :mod:`mmnorm.models.whitening.instance_whitening`, ``.semantic_whitening``).
        after_stages (Sequence): ``'stem'`` and/or stage indices. Defaults to RobustNet's
            ``('stem', 0, 1)``.
        ibn (dict, optional): IBN-Net-a placement (``dict(type='a')``); IBN-b is refused.
    """

    _whitening_stages: Optional[Tuple[int, ...]] = None

    def __init__(self,
                 *args,
                 whitening: dict = dict(type='ISW'),
                 after_stages: Sequence[Position] = DEFAULT_POSITIONS,
                 ibn: Optional[dict] = None,
                 **kwargs):
        # validates the config before the ResNet is built, for a width of 64 channels; each
        # position's own width is checked when its module is built
        build_whitening(whitening, 64)
        if isinstance(ibn, dict) and ibn.get('type') == 'b':
            raise ArgumentError(
                "whitening and ibn=dict(type='b') use the same positions (IN after the residual "
                "sum, stem norm); use ibn=dict(type='a') or None, got ibn=" + repr(ibn))
        num_stages = kwargs.get('num_stages', 4)
        positions = whitening_positions(after_stages, num_stages)
        # read by make_res_layer while the toolbox __init__ builds the stages
        self._whitening_cfg = dict(whitening)
        self._whitening_stages = tuple(p for p in positions if p != 'stem')
        super().__init__(*args, ibn=ibn, **kwargs)
        del self._whitening_stages
        self.whitening_cfg = self._whitening_cfg
        del self._whitening_cfg
        self.whitening_after = positions
        if 'stem' in positions:
            self.whitening_stem = build_whitening(self.whitening_cfg, self.stem_channels)
            stem_relu = self._stem_relu()
            stem_relu.register_forward_pre_hook(_StemWhiteningHook(self))
            # the ReLU must not overwrite the standardised map the loss reads (the authors' stem
            # ReLU is not in place either)
            stem_relu.inplace = False

    def _stem_relu(self) -> nn.ReLU:
        """The ReLU right after the stem's last norm (deep stem: conv-norm-ReLU x3)."""
        relu = self.stem[-1] if self.deep_stem else self.relu
        assert isinstance(relu, nn.ReLU), relu
        return relu

    def make_res_layer(self, **kwargs) -> nn.Module:
        """The toolbox's ``make_res_layer``; in a whitening stage the last block is the whitening
        subclass."""
        if self._whitening_stages is not None:
            stage = len(self.res_layers)  # the toolbox builds stage i when i stages are listed
            if stage in self._whitening_stages:
                kwargs['block'] = _LastBlockWhitening(kwargs['block'], kwargs['num_blocks'],
                                                      self._whitening_cfg)
        return super().make_res_layer(**kwargs)

    def whitening_modules(self) -> Dict[Position, InstanceWhitening]:
        """Position -> standardisation module, in forward order."""
        modules = OrderedDict()
        for pos in self.whitening_after:
            if pos == 'stem':
                modules[pos] = self.whitening_stem
            else:
                modules[pos] = getattr(self, self.res_layers[pos])[-1].whitening
        return modules

    def isw_modules(self) -> Dict[Position, ISW]:
        """The ISW modules by position (empty for IW / IRW)."""
        return OrderedDict(
            (pos, m) for pos, m in self.whitening_modules().items() if isinstance(m, ISW))

    def whitening_loss(self, records: Sequence[Tuple[InstanceWhitening,
                                                     torch.Tensor]]) -> torch.Tensor:
        """``loss_weight`` x the mean loss over the recorded positions (the sum for SAW, as its
        authors) (scalar)."""
        if not records:
            raise RuntimeError('whitening_loss: no standardised map was recorded; run the '
                               'backbone inside standardized_outputs(backbone)')
        losses = torch.stack([module.loss(out) for module, out in records])
        first = records[0][0]
        return (losses.sum() if first.sum_positions else losses.mean()) * first.loss_weight
