"""Whitening ResNets in the mmseg ``MODELS`` registry: ``WhiteningResNet``,
``WhiteningResNetV1c``, ``WhiteningResNetV1d``.

Each is the mmseg class with ``whitening``, ``after_stages`` and ``ibn`` (see
:class:`~mmnorm.models.backbones.whitening_resnet.WhiteningResNetMixin`)::

    backbone=dict(type='WhiteningResNetV1c', depth=50, whitening=dict(type='ISW'),
                  after_stages=('stem', 0, 1))
"""
from mmseg.models.backbones import ResNet, ResNetV1c, ResNetV1d
from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
from mmseg.registry import MODELS

from .whitening_resnet import PostResidualWhitening, WhiteningResNetMixin, register_whitening_blocks

__all__ = ['WhiteningResNet', 'WhiteningResNetV1c', 'WhiteningResNetV1d']


class SegBasicBlockWhitening(PostResidualWhitening, BasicBlock):
    """mmseg ``BasicBlock`` with instance standardisation after the residual sum."""


class SegBottleneckWhitening(PostResidualWhitening, Bottleneck):
    """mmseg ``Bottleneck`` with instance standardisation after the residual sum."""


register_whitening_blocks(SegBasicBlockWhitening, SegBottleneckWhitening)


@MODELS.register_module()
class WhiteningResNet(WhiteningResNetMixin, ResNet):
    """mmseg ``ResNet`` with instance whitening at ``after_stages``."""


@MODELS.register_module()
class WhiteningResNetV1c(WhiteningResNetMixin, ResNetV1c):
    """mmseg ``ResNetV1c`` (deep stem) with instance whitening at ``after_stages``."""


@MODELS.register_module()
class WhiteningResNetV1d(WhiteningResNetMixin, ResNetV1d):
    """mmseg ``ResNetV1d`` (deep stem, average-pool downsampling) with instance whitening at
    ``after_stages``."""
