"""Perturbation ResNets in the mmdet ``MODELS`` registry: ``PerturbResNet``, ``PerturbResNetV1d``.

Each is the mmdet class with ``perturb``, ``after_stages`` and ``ibn`` (see
:class:`~mmnorm.models.backbones.perturb_resnet.PerturbResNetMixin`)::

    backbone=dict(type='PerturbResNet', depth=50, perturb=dict(type='MixStyle'),
                  after_stages=(0, 1, 2))
"""
from mmdet.models.backbones import ResNet, ResNetV1d
from mmdet.registry import MODELS

from .perturb_resnet import PerturbResNetMixin

__all__ = ['PerturbResNet', 'PerturbResNetV1d']


@MODELS.register_module()
class PerturbResNet(PerturbResNetMixin, ResNet):
    """mmdet ``ResNet`` with statistics-perturbation layers after the stages in ``after_stages``."""


@MODELS.register_module()
class PerturbResNetV1d(PerturbResNetMixin, ResNetV1d):
    """mmdet ``ResNetV1d`` (deep stem, average-pool downsampling) with perturbation layers after
    ``after_stages``."""
