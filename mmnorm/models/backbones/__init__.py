"""IBN-Net backbones on the toolboxes' own ResNets (mmseg and mmdet registries, both named
``IBNResNet`` ...); each toolbox's module imports only when that toolbox is installed."""
from ...toolboxes import toolbox_installed
from .ibn_resnet import IBNResNetMixin, PostResidualIN, add_ibn, residual_sum
from .perturb_resnet import PerturbResNetMixin, add_perturbation, perturb_positions
from .whitening_resnet import WhiteningResNetMixin, standardized_outputs, whitening_positions

__all__ = [
    'add_ibn', 'residual_sum', 'PostResidualIN', 'IBNResNetMixin', 'PerturbResNetMixin',
    'add_perturbation', 'perturb_positions', 'WhiteningResNetMixin', 'standardized_outputs',
    'whitening_positions'
]

if toolbox_installed('mmseg'):
    from . import mmseg_ibn_resnet  # noqa: F401  (registration)
    from . import mmseg_perturb_resnet  # noqa: F401  (registration)
    from . import mmseg_whitening_resnet  # noqa: F401  (registration)
    __all__ += ['mmseg_ibn_resnet', 'mmseg_perturb_resnet', 'mmseg_whitening_resnet']

if toolbox_installed('mmdet'):
    from . import mmdet_ibn_resnet  # noqa: F401  (registration)
    from . import mmdet_perturb_resnet  # noqa: F401  (registration)
    __all__ += ['mmdet_ibn_resnet', 'mmdet_perturb_resnet']
