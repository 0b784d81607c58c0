"""``PhotometricTwin``: adds the photometrically transformed copy of a packed sample (RobustNet's
ISW statistics input).

RobustNet (arXiv 2103.15597; ``datasets/__init__.py`` ``get_color_geometric_transforms``) measures
how much each feature covariance changes between an image and its twin: torchvision's
``ColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.3)`` (factors drawn uniformly
from ``[max(0, 1 - v), 1 + v]``, hue from ``[-0.3, 0.3]``, the four in random order), then a
Gaussian blur with ``sigma ~ U[0.15, 1.3]`` (the authors' ``RandomGaussianBlur``: scikit-image,
truncated at 4 sigma, edge pixels repeated, result truncated to uint8). The colour operations are
PIL's, as torchvision's on PIL images; random numbers come from numpy's global generator, as
mmseg's transforms.

Place it after ``PackSegInputs``: it reads ``results['inputs']`` (``(3, H, W)`` uint8 BGR) and
stores the twin, same shape and dtype, as the data sample's field ``twin_inputs``. Only ISW's
statistics pass (``ISWStatisticsHook``) reads it: the pass forwards ``[originals | twins]``.
"""
import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS
from PIL import Image, ImageEnhance

from ..models.whitening.isw_statistics import TWIN_FIELD
from ..validation import ArgumentError

__all__ = ['PhotometricTwin', 'shift_hue']


def shift_hue(img: Image.Image, hue: float) -> Image.Image:
    """Cyclic shift of the HSV hue of an RGB PIL image by ``hue`` (in [-0.5, 0.5]) turns."""
    h, s, v = img.convert('HSV').split()
    shifted = (np.asarray(h, dtype=np.int64) + int(hue * 255)) % 256
    h = Image.fromarray(shifted.astype(np.uint8), 'L')
    return Image.merge('HSV', (h, s, v)).convert('RGB')


@TRANSFORMS.register_module()
class PhotometricTwin(BaseTransform):
    """Adds ``data_samples.twin_inputs``: the packed image after colour jitter and Gaussian blur.

    Args:
        brightness, contrast, saturation (float): Jitter strengths ``v >= 0``. Defaults to 0.8.
        hue (float): Hue jitter in [0, 0.5]. Defaults to 0.3.
        blur_sigma (tuple[float, float]): Range of the blur sigma. Defaults to (0.15, 1.3).
    """

    def __init__(self,
                 brightness: float = 0.8,
                 contrast: float = 0.8,
                 saturation: float = 0.8,
                 hue: float = 0.3,
                 blur_sigma: tuple = (0.15, 1.3)):
        strengths = dict(brightness=brightness, contrast=contrast, saturation=saturation)
        for name, value in strengths.items():
            if not value >= 0:
                raise ArgumentError(f'PhotometricTwin {name} must be >= 0, got {value!r}')
        if not 0 <= hue <= 0.5:
            raise ArgumentError(f'PhotometricTwin hue must be in [0, 0.5], got hue={hue!r}')
        if len(blur_sigma) != 2 or not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ArgumentError('PhotometricTwin blur_sigma must be (low, high) with '
                                f'0 < low <= high, got blur_sigma={blur_sigma!r}')
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.blur_sigma = tuple(blur_sigma)

    def jitter(self, img: np.ndarray) -> np.ndarray:
        """Colour jitter of an ``(H, W, 3)`` uint8 BGR image (torchvision's PIL operations; a
        strength of 0 skips its operation, as torchvision does)."""
        ops = [(self.brightness, ImageEnhance.Brightness), (self.contrast, ImageEnhance.Contrast),
               (self.saturation, ImageEnhance.Color), (self.hue, None)]
        pil = Image.fromarray(np.ascontiguousarray(img[..., ::-1]), mode='RGB')
        for i in np.random.permutation(4):
            strength, enhancer = ops[i]
            if strength == 0:
                continue
            if enhancer is None:
                pil = shift_hue(pil, float(np.random.uniform(-strength, strength)))
            else:
                factor = float(np.random.uniform(max(0.0, 1 - strength), 1 + strength))
                pil = enhancer(pil).enhance(factor)
        return np.ascontiguousarray(np.asarray(pil)[..., ::-1])

    def blur(self, img: np.ndarray) -> np.ndarray:
        """Gaussian blur with a random sigma, truncated at 4 sigma, edges repeated."""
        sigma = float(np.random.uniform(*self.blur_sigma))
        radius = int(4.0 * sigma + 0.5)
        out = cv2.GaussianBlur(
            img.astype(np.float32), (2 * radius + 1, 2 * radius + 1),
            sigma,
            borderType=cv2.BORDER_REPLICATE)
        return out.astype(np.uint8)

    def transform(self, results: dict) -> dict:
        if 'inputs' not in results or 'data_samples' not in results:
            raise ArgumentError('PhotometricTwin works on packed samples: put it after '
                                "dict(type='PackSegInputs') in the pipeline")
        inputs = results['inputs']
        img = np.ascontiguousarray(inputs.permute(1, 2, 0).numpy())
        twin = self.blur(self.jitter(img))
        results['data_samples'].set_data(
            {TWIN_FIELD: torch.from_numpy(twin).permute(2, 0, 1).contiguous().to(inputs.dtype)})
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(brightness={self.brightness}, '
                f'contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}, '
                f'blur_sigma={self.blur_sigma})')
