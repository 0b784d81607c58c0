"""RobustNet's photometric augmentation of the training input (arXiv 2103.15597; shachoi/RobustNet
``datasets/__init__.py`` ``get_input_transforms`` with ``--color_aug 0.5 --gblur``): torchvision's
``ColorJitter(0.4, 0.4, 0.4, 0.1)`` applied with probability 0.5, then a Gaussian blur with
``sigma ~ U[0.15, 1.3]`` on every image. Every method of the protocol (BN, IBN, IW, IRW, ISW)
trains with it.

The colour and blur operations are :class:`~mmnorm.datasets.PhotometricTwin`'s (the same
torchvision-on-PIL jitter and truncated Gaussian blur, at ISW's stronger twin settings there);
random numbers come from numpy's global generator, as mmseg's transforms.
"""
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ..validation import ArgumentError
from .photometric_twin import PhotometricTwin

__all__ = ['RobustNetPhotometric']


@TRANSFORMS.register_module()
class RobustNetPhotometric(BaseTransform):
    """Colour jitter with probability ``jitter_prob``, then Gaussian blur, of ``results['img']``
    (``(H, W, 3)`` uint8 BGR, before ``PackSegInputs``).

    Args:
        jitter_prob (float): Probability of the colour jitter, in [0, 1]. Defaults to 0.5.
        brightness, contrast, saturation (float): Jitter strengths. Defaults to 0.4.
        hue (float): Hue jitter in [0, 0.5]. Defaults to 0.1.
        blur_sigma (tuple[float, float]): Range of the blur sigma. Defaults to (0.15, 1.3).
    """

    def __init__(self,
                 jitter_prob: float = 0.5,
                 brightness: float = 0.4,
                 contrast: float = 0.4,
                 saturation: float = 0.4,
                 hue: float = 0.1,
                 blur_sigma: tuple = (0.15, 1.3)) -> None:
        if isinstance(jitter_prob, bool) or not 0 <= jitter_prob <= 1:
            raise ArgumentError(
                f'RobustNetPhotometric jitter_prob must be in [0, 1], got {jitter_prob!r}')
        self.jitter_prob = float(jitter_prob)
        self.ops = PhotometricTwin(brightness, contrast, saturation, hue, blur_sigma)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if np.random.rand() < self.jitter_prob:
            img = self.ops.jitter(img)
        results['img'] = self.ops.blur(img)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(jitter_prob={self.jitter_prob}, ops={self.ops!r})'
