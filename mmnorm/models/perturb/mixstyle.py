"""MixStyle: mixing instance-level feature statistics of two samples.

Zhou et al., "Domain Generalization with MixStyle", ICLR 2021 (arXiv 2104.02008); authors' code
KaiyangZhou/mixstyle-release (also Dassl ``dassl/modeling/ops/mixstyle.py``).

With probability ``p`` per training forward, for ``x`` of shape ``(N, C, H, W)``::

    mu, sig = mean_{H,W}(x), sqrt(var_{H,W}(x) + eps)          # per sample and channel, detached
    lam ~ Beta(alpha, alpha)                                   # one per sample
    y = (x - mu) / sig * (lam * sig + (1 - lam) * sig[perm]) + (lam * mu + (1 - lam) * mu[perm])

``perm``: a random permutation (``mix='random'``) or partners from the other domain
(``'crossdomain'``: the declared [source | target] split, else the two halves). Paper defaults: p
0.5, alpha 0.1, eps 1e-6, after ResNet res1-res3 (``after_stages=(0, 1, 2)`` of
:class:`~mmnorm.models.backbones.PerturbResNetMixin`).
"""
from typing import Optional

import torch
from mmengine.registry import MODELS

from ...validation import check_eps
from .base import StatMixing, instance_stats

__all__ = ['MixStyle', 'mixstyle']


def mixstyle(x: torch.Tensor,
             lam: torch.Tensor,
             partners: torch.Tensor,
             eps: float = 1e-6) -> torch.Tensor:
    """The MixStyle formula.

    Args:
        x (Tensor): ``(N, C, H, W)``, ``H * W > 1``.
        lam (Tensor): ``(N,)`` mixing weights (weight of the sample's own statistics).
        partners (Tensor): ``(N,)`` long, the sample whose statistics are mixed in.
        eps (float): Added to the variance. Defaults to 1e-6.

    Returns:
        Tensor: ``(N, C, H, W)``; gradients flow through ``x`` only (the statistics are detached).
    """
    mu, sig = instance_stats(x, eps)
    mu, sig = mu.detach(), sig.detach()
    lam = lam.view(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[partners]
    sig_mix = lam * sig + (1 - lam) * sig[partners]
    # (x - mu) / sig * sig_mix + mu_mix as one per-(N, C) affine pass over the map
    scale = sig_mix / sig
    return torch.addcmul(mu_mix - mu * scale, x, scale)


@MODELS.register_module()
class MixStyle(StatMixing):
    """MixStyle layer (registered as ``'MixStyle'``).

    Args:
        p (float): Probability of perturbing a training forward, in [0, 1]. Defaults to 0.5.
        alpha (float): ``lam ~ Beta(alpha, alpha)``, > 0. Defaults to 0.1.
        eps (float): Added to the per-instance variance, > 0. Defaults to 1e-6.
        mix (str): ``'random'`` or ``'crossdomain'``. Defaults to ``'random'``.
        generator (torch.Generator, optional): CPU generator of the draws. Defaults to None (torch's
            default CPU generator).

    Shape:
        ``(N, C, H, W)`` -> same. Identity in eval mode, when not ``active``, for ``N == 1`` and for
        ``H * W == 1``.
    """

    def __init__(self,
                 p: float = 0.5,
                 alpha: float = 0.1,
                 eps: float = 1e-6,
                 mix: str = 'random',
                 generator: Optional[torch.Generator] = None):
        super().__init__(p=p, alpha=alpha, mix=mix, generator=generator)
        self.eps = check_eps(eps, 'MixStyle')

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        lam, partners = self.draw_mixing(x)
        return mixstyle(x, lam, partners, self.eps)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, eps={self.eps}'
