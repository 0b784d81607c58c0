"""Perturbation ResNets in the mmseg ``MODELS`` registry: ``PerturbResNet``, ``PerturbResNetV1c``,
``PerturbResNetV1d``.

Each is the mmseg class with ``perturb``, ``after_stages`` and ``ibn`` (see
:class:`~mmnorm.models.backbones.perturb_resnet.PerturbResNetMixin`)::

    backbone=dict(type='PerturbResNetV1c', depth=50, perturb=dict(type='MixStyle'),
                  after_stages=(0, 1, 2))
"""
from mmseg.models.backbones import ResNet, ResNetV1c, ResNetV1d
from mmseg.registry import MODELS

from .perturb_resnet import PerturbResNetMixin

__all__ = ['PerturbResNet', 'PerturbResNetV1c', 'PerturbResNetV1d']


@MODELS.register_module()
class PerturbResNet(PerturbResNetMixin, ResNet):
    """mmseg ``ResNet`` with statistics-perturbation layers after the stages in ``after_stages``."""


@MODELS.register_module()
class PerturbResNetV1c(PerturbResNetMixin, ResNetV1c):
    """mmseg ``ResNetV1c`` (deep stem) with statistics-perturbation layers after the stages in
    ``after_stages``."""


@MODELS.register_module()
class PerturbResNetV1d(PerturbResNetMixin, ResNetV1d):
    """mmseg ``ResNetV1d`` (deep stem, average-pool downsampling) with perturbation layers after
    ``after_stages``."""
