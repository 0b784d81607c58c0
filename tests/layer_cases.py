"""Every mmnorm layer (and BN, the reference) at 8 channels, by name: the cases the AMP /
channels_last and the torch.compile tests run. ``SPLIT_LAYERS`` are called inside a declared
[source | target] split."""
import torch.nn as nn

from mmnorm.models.norms import IBN, PBN, RN, AdaBN
from mmnorm.models.perturb import DSU, EFDMix, MixStyle

LAYERS = {
    'BN': lambda: nn.BatchNorm2d(8),  # the reference behaviour
    'IBN': lambda: IBN(8),
    'IBN-0.25': lambda: IBN(8, ratio=0.25),
    'RN': lambda: RN(8),
    'PBN': lambda: PBN(8),
    'PBN-fixed': lambda: PBN(8, mode='fixed'),
    'AdaBN': lambda: AdaBN(8),
    'AdaBN-split': lambda: AdaBN(8),
    'MixStyle': lambda: MixStyle(p=1.0),
    'EFDMix': lambda: EFDMix(p=1.0),
    'DSU': lambda: DSU(p=1.0),
}
SPLIT_LAYERS = ('RN', 'AdaBN-split')
