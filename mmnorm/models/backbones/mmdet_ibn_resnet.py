"""IBN-Net ResNets in the mmdet ``MODELS`` registry: ``IBNResNet``, ``IBNResNetV1d``.

Each is the mmdet class with one more argument, ``ibn`` (see
:func:`mmnorm.models.backbones.add_ibn`)::

    # any other mmdet ResNet option too
    backbone=dict(type='IBNResNet', depth=50, ibn=dict(type='a'), ...)
"""
from mmdet.models.backbones import ResNet, ResNetV1d
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck
from mmdet.registry import MODELS

from .ibn_resnet import IBNResNetMixin, PostResidualIN, register_ibn_b_blocks

__all__ = ['IBNResNet', 'IBNResNetV1d']


class DetBasicBlockIBNb(PostResidualIN, BasicBlock):
    """mmdet ``BasicBlock`` with InstanceNorm after the residual sum (IBN-b)."""


class DetBottleneckIBNb(PostResidualIN, Bottleneck):
    """mmdet ``Bottleneck`` with InstanceNorm after the residual sum (IBN-b)."""


register_ibn_b_blocks(DetBasicBlockIBNb, DetBottleneckIBNb)


@MODELS.register_module()
class IBNResNet(IBNResNetMixin, ResNet):
    """mmdet ``ResNet`` with IBN-Net-a/-b placement given by ``ibn``."""


@MODELS.register_module()
class IBNResNetV1d(IBNResNetMixin, ResNetV1d):
    """mmdet ``ResNetV1d`` (deep stem, average-pool downsampling) with IBN-Net-a/-b placement given
    by ``ibn``."""
