"""RobustNet's training photometric augmentation: the blur against scipy's Gaussian filter (what
the authors' scikit-image call runs), the jitter applied to about half of the images, bad input."""
import numpy as np
import pytest
from scipy import ndimage

from mmnorm.datasets.robustnet_photometric import RobustNetPhotometric
from mmnorm.validation import ArgumentError


def image(seed=0, hw=(24, 32)):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, hw + (3, )).astype(np.uint8)


def test_blur_matches_the_authors_gaussian():
    img = image()
    t = RobustNetPhotometric(jitter_prob=0.0, blur_sigma=(0.9, 0.9))
    out = t(dict(img=img.copy()))['img']
    # skimage.filters.gaussian(img, sigma, multichannel=True): per channel, truncate 4, 'nearest'
    ref = np.stack([
        ndimage.gaussian_filter(img[..., c].astype(np.float64), 0.9, mode='nearest', truncate=4.0)
        for c in range(3)
    ], -1)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - ref.astype(np.uint8).astype(int)).max() <= 1


def test_jitter_on_about_half_of_the_images():
    img = image(1)
    blur_only = RobustNetPhotometric(jitter_prob=0.0, blur_sigma=(0.5, 0.5))
    t = RobustNetPhotometric(jitter_prob=0.5, blur_sigma=(0.5, 0.5))
    plain = blur_only(dict(img=img.copy()))['img']
    np.random.seed(0)
    n = 300
    jittered = sum(not np.array_equal(t(dict(img=img.copy()))['img'], plain) for _ in range(n))
    assert abs(jittered - n / 2) <= 4 * np.sqrt(n / 4)


def test_bad_input():
    with pytest.raises(ArgumentError, match='jitter_prob must be in'):
        RobustNetPhotometric(jitter_prob=1.5)
    with pytest.raises(ArgumentError, match='hue must be in'):
        RobustNetPhotometric(hue=0.7)
