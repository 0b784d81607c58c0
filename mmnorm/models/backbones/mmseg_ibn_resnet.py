"""IBN-Net ResNets in the mmseg ``MODELS`` registry: ``IBNResNet``, ``IBNResNetV1c``,
``IBNResNetV1d``.

Each is the mmseg class with one more argument, ``ibn`` (see
:func:`mmnorm.models.backbones.add_ibn`)::

    # any other mmseg ResNet option too
    backbone=dict(type='IBNResNet', depth=50, ibn=dict(type='a'), ...)
"""
from mmseg.models.backbones import ResNet, ResNetV1c, ResNetV1d
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from mmseg.registry import MODELS

from .ibn_resnet import IBNResNetMixin, PostResidualIN, register_ibn_b_blocks

__all__ = ['IBNResNet', 'IBNResNetV1c', 'IBNResNetV1d']


class SegBasicBlockIBNb(PostResidualIN, BasicBlock):
    """mmseg ``BasicBlock`` with InstanceNorm after the residual sum (IBN-b)."""


class SegBottleneckIBNb(PostResidualIN, Bottleneck):
    """mmseg ``Bottleneck`` with InstanceNorm after the residual sum (IBN-b)."""


register_ibn_b_blocks(SegBasicBlockIBNb, SegBottleneckIBNb)


@MODELS.register_module()
class IBNResNet(IBNResNetMixin, ResNet):
    """mmseg ``ResNet`` with IBN-Net-a/-b placement given by ``ibn``."""


@MODELS.register_module()
class IBNResNetV1c(IBNResNetMixin, ResNetV1c):
    """mmseg ``ResNetV1c`` (deep stem) with IBN-Net-a/-b placement given by ``ibn``."""


@MODELS.register_module()
class IBNResNetV1d(IBNResNetMixin, ResNetV1d):
    """mmseg ``ResNetV1d`` (deep stem, average-pool downsampling) with IBN-Net-a/-b placement given
    by ``ibn``."""
