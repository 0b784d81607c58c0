"""IBN-Net-a / IBN-Net-b placement on the toolboxes' own ResNets.

Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net", ECCV 2018
(arXiv 1807.09441). A global ``norm_cfg=dict(type='IBN')`` is not IBN-Net; the architectures are:

- IBN-a: in every block of stages 1-3 the first norm (``bn1``: after the 1x1 conv of a Bottleneck,
  after the first 3x3 conv of a BasicBlock) becomes :class:`~mmnorm.models.norms.IBN`; the stem and
  stage 4 stay BN.
- IBN-b: the stem norm becomes ``InstanceNorm2d(affine=True)`` and the last block of stages 1-2
  applies an ``InstanceNorm2d(affine=True)`` to the residual sum, before the block's final ReLU.

The registered backbones (``IBNResNet`` ...) are the toolbox classes with one extra argument ``ibn``
(:class:`IBNResNetMixin`, any depth and option). IBN-a only replaces norm layers, which
:func:`add_ibn` also does on an already built ResNet; IBN-b's blocks differ in their forward and are
built as the IBN-b subclass of the toolbox block (``SegBottleneckIBNb`` ...) when the backbone is
constructed -- no module changes its class after construction.
Module names follow the official checkpoints: ``layerK.i.bn1.IN`` / ``layerK.i.bn1.BN`` (IBN-a),
stem ``bn1`` and ``layerK.i.IN`` (IBN-b).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer

from ...validation import ArgumentError, ArgumentTypeError

__all__ = [
    'add_ibn', 'residual_sum', 'PostResidualIN', 'IBNResNetMixin', 'IBN_B_BLOCKS',
    'register_ibn_b_blocks'
]

#: Default stages per type (stage 1 first); shortened to ``num_stages``.
DEFAULT_STAGES = {'a': (True, True, True, False), 'b': (True, True, False, False)}


def residual_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A toolbox ResNet block's output *before* its final ReLU: ``residual(x) + shortcut(x)``.

    Follows the forward of mmseg's / mmdet's ``BasicBlock`` and ``Bottleneck`` (same module names in
    both, plugins included); ``tests/test_ibn_resnet.py`` checks that
    ``relu(residual_sum(block, x))`` equals the toolbox forward.
    """
    plugins = getattr(block, 'with_plugins', False)
    out = block.relu(block.norm1(block.conv1(x)))
    if plugins:
        out = block.forward_plugin(out, block.after_conv1_plugin_names)
    out = block.norm2(block.conv2(out))
    if hasattr(block, 'conv3'):  # Bottleneck
        out = block.relu(out)
        if plugins:
            out = block.forward_plugin(out, block.after_conv2_plugin_names)
        out = block.norm3(block.conv3(out))
        if plugins:
            out = block.forward_plugin(out, block.after_conv3_plugin_names)
    identity = x if block.downsample is None else block.downsample(x)
    return out + identity


class PostResidualIN:
    """Mixin for a toolbox ResNet block: ``relu(IN(residual_sum(x)))`` (the IBN-b block).

    ``class SegBottleneckIBNb(PostResidualIN, Bottleneck)`` takes the block's own arguments and adds
    ``IN = InstanceNorm2d(planes * expansion, affine=True)`` (``eps`` and ``requires_grad`` from
    ``norm_cfg``). The toolbox block applies its final ReLU right after the residual sum, with the
    same ``relu`` module as its inner ReLUs, so neither a hook nor a wrapper can put IN between the
    two: this forward is the one place that restates the block (:func:`residual_sum`, tested against
    the toolbox forward).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        out_channels = (self.conv3 if hasattr(self, 'conv3') else self.conv2).out_channels
        self.IN = _instance_norm(out_channels, kwargs.get('norm_cfg') or dict(type='BN'))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(residual_sum, self, x, use_reentrant=False)
        else:
            out = residual_sum(self, x)
        return self.relu(self.IN(out))


# toolbox block class -> its IBN-b subclass; filled by the toolbox modules (mmseg_ibn_resnet,
# mmdet_ibn_resnet)
IBN_B_BLOCKS = {}


def register_ibn_b_blocks(*blocks: type) -> None:
    """Records IBN-b subclasses (``PostResidualIN`` + a toolbox block class) for
    :class:`IBNResNetMixin`."""
    for block in blocks:
        base = next(b for b in block.__bases__ if b is not PostResidualIN)
        IBN_B_BLOCKS[base] = block


class _LastBlockIBNb:
    """The ``block`` a toolbox ``ResLayer`` builds a stage with: the stage's last block as the IBN-b
    subclass.

    ``ResLayer`` calls ``block(**kwargs)`` once per block, in order, and reads ``block.expansion``.
    """

    def __init__(self, block: type, num_blocks: int):
        if block not in IBN_B_BLOCKS:
            raise TypeError('IBN-b supports the mmseg/mmdet BasicBlock and Bottleneck, '
                            f'got {block.__name__}')
        self.block = block
        self.expansion = block.expansion
        self.num_blocks = num_blocks
        self.built = 0

    def __call__(self, **kwargs) -> nn.Module:
        self.built += 1
        last = self.built == self.num_blocks
        return (IBN_B_BLOCKS[self.block] if last else self.block)(**kwargs)


def _check_stages(stages: Optional[Sequence[bool]], ibn_type: str, num_stages: int) -> tuple:
    if stages is None:
        return DEFAULT_STAGES[ibn_type][:num_stages]
    if (not isinstance(stages, (tuple, list)) or len(stages) != num_stages
            or not all(isinstance(s, bool) for s in stages)):
        raise ArgumentError(
            f'ibn stages must be {num_stages} bools (one per ResNet stage), got stages={stages!r}')
    return tuple(stages)


def _check_ibn(ibn: Optional[dict]) -> Optional[dict]:
    """Validates the ``ibn`` backbone argument (None: no IBN-Net placement)."""
    if ibn is None:
        return None
    if not isinstance(ibn, dict):
        raise ArgumentTypeError(f'ibn must be a dict like dict(type="a") or None, got {ibn!r}')
    unknown = sorted(set(ibn) - {'type', 'stages', 'ratio', 'stem'})
    if unknown:
        raise ArgumentError(
            f'unknown ibn keys {unknown}; allowed: type, stages, ratio (a), stem (b)')
    ibn_type = ibn.get('type', 'a')
    if ibn_type not in DEFAULT_STAGES:
        raise ArgumentError(f"ibn type must be 'a' or 'b', got type={ibn_type!r}")
    if ibn_type == 'a' and ibn.get('stem') is not None:
        raise ArgumentError(f'ibn stem is an IBN-b option, got stem={ibn["stem"]!r} with type=a')
    if ibn_type == 'b' and ibn.get('ratio') is not None:
        raise ArgumentError(f'ibn ratio is an IBN-a option, got ratio={ibn["ratio"]!r} with type=b')
    return dict(ibn)


def _instance_norm(num_features: int, norm_cfg: dict) -> nn.InstanceNorm2d:
    norm = nn.InstanceNorm2d(num_features, eps=norm_cfg.get('eps', 1e-5), affine=True)
    norm.requires_grad_(norm_cfg.get('requires_grad', True))
    return norm


def add_ibn(resnet: nn.Module,
            type: str = 'a',
            stages: Optional[Sequence[bool]] = None,
            ratio: Optional[float] = None,
            stem: Optional[bool] = None) -> nn.Module:
    """Applies the IBN-Net-a or IBN-Net-b placement to a built mmseg/mmdet ``ResNet``, in place.

    IBN-a replaces norm layers only, so any built toolbox ResNet takes it. IBN-b also changes the
    forward of the last block of its stages (IN between the residual sum and the ReLU): those blocks
    are built as IBN-b blocks when the backbone is constructed (:class:`IBNResNetMixin`, e.g.
    ``IBNResNet(..., ibn=dict(type='b'))``); here IBN-b replaces the stem norm and checks that the
    blocks are in place.

    The BN half of every IBN layer is built from the backbone's ``norm_cfg`` (so ``SyncBN`` configs
    give SyncBN halves); ``requires_grad`` of ``norm_cfg`` and ``frozen_stages`` apply to the new
    layers too.

    Args:
        resnet (nn.Module): The backbone, already built.
        type (str): ``'a'`` (IBN in the first norm of every block of the chosen stages) or ``'b'``
            (IN after the residual sum of the last block of the chosen stages, and at the stem).
            Defaults to ``'a'``.
        stages (Sequence[bool], optional): One flag per stage. Defaults to (True, True, True, False)
            for ``'a'`` and (True, True, False, False) for ``'b'`` (cut to ``num_stages``).
        ratio (float, optional): IBN-a only: fraction of instance-normalised channels. Defaults to
            0.5.
        stem (bool, optional): IBN-b only: replace the stem norm (the last one of a deep stem) by
            IN. Defaults to True.

    Returns:
        nn.Module: ``resnet``, with the attribute ``ibn`` recording the placement.
    """
    if not hasattr(resnet, 'res_layers') or not hasattr(resnet, 'norm_cfg'):
        raise TypeError(f'add_ibn expects an mmseg/mmdet ResNet, got {resnet.__class__.__name__}')
    if getattr(resnet, 'ibn', None) is not None:
        raise ValueError(
            f'{resnet.__class__.__name__} already holds IBN-{resnet.ibn["type"]} layers')
    _check_ibn(dict(type=type, stages=stages, ratio=ratio, stem=stem))
    stages = _check_stages(stages, type, len(resnet.res_layers))
    norm_cfg = dict(resnet.norm_cfg)
    if type == 'a':
        ratio = 0.5 if ratio is None else ratio
        _add_ibn_a(resnet, stages, ratio, norm_cfg)
        resnet.ibn = dict(type='a', stages=stages, ratio=ratio)
    else:
        stem = True if stem is None else stem
        _add_ibn_b(resnet, stages, stem, norm_cfg)
        resnet.ibn = dict(type='b', stages=stages, stem=stem)
    # New layers start trainable and in train mode: apply frozen_stages again.
    resnet._freeze_stages()
    return resnet


def _add_ibn_a(resnet: nn.Module, stages: tuple, ratio: float, norm_cfg: dict) -> None:
    requires_grad = norm_cfg.pop('requires_grad', True)
    ibn_cfg = dict(
        type='IBN',
        ratio=ratio,
        requires_grad=requires_grad,
        eps=norm_cfg.pop('eps', 1e-5),
        momentum=norm_cfg.pop('momentum', 0.1),
        bn_cfg=norm_cfg)
    for layer_name, use in zip(resnet.res_layers, stages):
        if not use:
            continue
        for block in getattr(resnet, layer_name):
            name, norm = build_norm_layer(ibn_cfg, block.conv1.out_channels, postfix=1)
            assert name == block.norm1_name, (name, block.norm1_name)
            block.add_module(name, norm)


def _add_ibn_b(resnet: nn.Module, stages: tuple, stem: bool, norm_cfg: dict) -> None:
    for layer_name, use in zip(resnet.res_layers, stages):
        blocks = getattr(resnet, layer_name)
        built = [isinstance(block, PostResidualIN) for block in blocks]
        if built != [False] * (len(blocks) - 1) + [use]:
            raise TypeError(
                f'IBN-b with stages={stages}: {layer_name} of {type(resnet).__name__} was not '
                'built with IBN-b blocks where the placement needs them; IBN-b changes the block '
                "forward, so build the backbone with it: type='IBNResNet' (or 'PerturbResNet', "
                "...) and ibn=dict(type='b')")
    if stem:
        if resnet.deep_stem:
            # conv-norm-ReLU x3: the stem's last norm sits right before its last ReLU.
            assert isinstance(resnet.stem[-1], nn.ReLU), resnet.stem
            resnet.stem[-2] = _instance_norm(resnet.stem_channels, norm_cfg)
        else:
            resnet.add_module(resnet.norm1_name, _instance_norm(resnet.stem_channels, norm_cfg))


class IBNResNetMixin:
    """``__init__(..., ibn=dict(type='a'), **resnet_kwargs)``: the toolbox ResNet with the IBN-Net
    placement.

    IBN-b blocks are built as such (:meth:`make_res_layer`); then :func:`add_ibn` places the IBN-a
    layers or the IBN-b stem. ``ibn=None`` builds the plain toolbox ResNet.
    """

    _ibn_b: Optional[dict] = None

    def __init__(self, *args, ibn: Optional[dict] = dict(type='a'), **kwargs):
        ibn = _check_ibn(ibn)
        # read by make_res_layer while the toolbox __init__ builds the stages
        self._ibn_b = ibn if ibn is not None and ibn.get('type') == 'b' else None
        super().__init__(*args, **kwargs)
        del self._ibn_b
        if ibn is not None:
            add_ibn(self, **ibn)

    def make_res_layer(self, **kwargs) -> nn.Module:
        """The toolbox's ``make_res_layer``; in an IBN-b stage the last block is the IBN-b
        subclass."""
        if self._ibn_b is not None:
            stage = len(self.res_layers)  # the toolbox builds stage i when i stages are listed
            stages = _check_stages(self._ibn_b.get('stages'), 'b', self.num_stages)
            if stages[stage]:
                kwargs['block'] = _LastBlockIBNb(kwargs['block'], kwargs['num_blocks'])
        return super().make_res_layer(**kwargs)
