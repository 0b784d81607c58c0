"""IBN-Net backbones on the toolboxes' own ResNets (mmseg and mmdet registries, both named ``IBNResNet`` ...)."""
from . import mmdet_ibn_resnet, mmseg_ibn_resnet  # noqa: F401  (registration)
from .ibn_resnet import IBNResNetMixin, PostResidualIN, add_ibn, residual_sum

__all__ = ['add_ibn', 'residual_sum', 'PostResidualIN', 'IBNResNetMixin', 'mmseg_ibn_resnet', 'mmdet_ibn_resnet']
