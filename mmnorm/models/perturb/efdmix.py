"""EFDMix: exact feature distribution mixing.

Zhang et al., "Exact Feature Distribution Matching for Arbitrary Style Transfer and Domain
Generalization", CVPR 2022 (arXiv 2203.07740); authors' code YBZh/EFDM (also Dassl
``dassl/modeling/ops/efdmix.py``).

With probability ``p`` per training forward, per sample and channel of ``x`` (``(N, C, H, W)``,
flattened to ``(N, C, H*W)``): sort the values, give every position the value of the same rank in
the partner sample, and mix::

    values, index = sort(x)                       # along H*W
    # the partner's k-th smallest value at x's k-th smallest position:
    copy[n, c, index[n, c, k]] = values[perm[n], c, k]
    lam ~ Beta(alpha, alpha)                      # one per sample
    y = x + (copy - x.detach()) * (1 - lam)

The forward value is ``lam * x + (1 - lam) * copy``; the gradient reaches ``x`` with weight 1 (the
authors' ``x.detach()``) and the partner through the sorted values. Defaults as MixStyle: p 0.5,
alpha 0.1, ``'random'``; placed like MixStyle (after res1-res3).

No variance is involved, so unlike MixStyle and DSU a map with one spatial position (``H * W = 1``,
e.g. an image-pooling branch) is mixed too, as in the authors' code: its single value is its own
sorted row, and the output is ``lam * x + (1 - lam) * x[perm]``.
"""
from typing import Optional

import torch
from mmengine.registry import MODELS

from .base import StatMixing

__all__ = ['EFDMix', 'efdmix']


def efdmix(x: torch.Tensor, lam: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """The EFDMix formula.

    Args:
        x (Tensor): ``(N, C, H, W)``.
        lam (Tensor): ``(N,)`` mixing weights (weight of the sample's own values).
        partners (Tensor): ``(N,)`` long, the sample whose sorted values are mixed in.

    Returns:
        Tensor: ``(N, C, H, W)``.
    """
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    values, index = flat.sort(dim=-1)
    # Scattering the partner's sorted values to x's sorted positions equals gathering them with
    # argsort(index).
    copy = torch.empty_like(flat).scatter(-1, index, values[partners])
    y = flat + (copy - flat.detach()) * (1 - lam.view(-1, 1, 1))
    return y.reshape(n, c, h, w)


@MODELS.register_module()
class EFDMix(StatMixing):
    """EFDMix layer (registered as ``'EFDMix'``).

    Args:
        p (float): Probability of perturbing a training forward, in [0, 1]. Defaults to 0.5.
        alpha (float): ``lam ~ Beta(alpha, alpha)``, > 0. Defaults to 0.1.
        mix (str): ``'random'`` or ``'crossdomain'``. Defaults to ``'random'``.
        generator (torch.Generator, optional): CPU generator of the draws. Defaults to None (torch's
            default CPU generator).

    Shape:
        ``(N, C, H, W)`` -> same. Identity in eval mode, when not ``active`` and for ``N == 1``;
        maps with ``H * W == 1`` are mixed (the authors' behaviour).
    """

    spatial_variance = False

    def __init__(self,
                 p: float = 0.5,
                 alpha: float = 0.1,
                 mix: str = 'random',
                 generator: Optional[torch.Generator] = None):
        super().__init__(p=p, alpha=alpha, mix=mix, generator=generator)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        lam, partners = self.draw_mixing(x)
        return efdmix(x, lam, partners)
