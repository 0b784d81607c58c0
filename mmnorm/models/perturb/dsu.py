"""DSU: domain shifts with uncertainty (resampled feature statistics).

Li et al., "Uncertainty Modeling for Out-of-Distribution Generalization", ICLR 2022 (arXiv
2202.03958); authors' code lixiaotong97/DSU.

With probability ``p`` per training forward, for ``x`` of shape ``(N, C, H, W)``::

    mu, sig = mean_{H,W}(x), sqrt(var_{H,W}(x) + eps)    # per sample and channel (not detached)
    Sigma_mu  = sqrt(var_N(mu)  + eps)                   # batch uncertainty per channel (unbiased)
    Sigma_sig = sqrt(var_N(sig) + eps)
    beta  = mu  + e1 * factor * Sigma_mu,   e1 ~ N(0, 1) per sample and channel
    gamma = sig + e2 * factor * Sigma_sig,  e2 ~ N(0, 1)
    y = gamma * (x - mu) / sig + beta

Defaults (authors' code): p 0.5, factor 1.0, eps 1e-6; placed after the first conv (before its BN),
after the stem and after every ResNet stage (``after_stages=('conv1', 'stem', 0, 1, 2, 3)``). A
batch of one sample has no batch variance: the layer is the identity.
"""
from numbers import Real
from typing import Optional

import torch
from mmengine.registry import MODELS

from ...validation import ArgumentError, check_eps
from .base import StatPerturbation, instance_stats

__all__ = ['DSU', 'dsu']


def dsu(x: torch.Tensor,
        noise: torch.Tensor,
        factor: float = 1.0,
        eps: float = 1e-6) -> torch.Tensor:
    """The DSU formula.

    Args:
        x (Tensor): ``(N, C, H, W)``, ``N > 1``, ``H * W > 1``.
        noise (Tensor): ``(2, N, C)`` standard normal draws ``(e1, e2)``.
        factor (float): Scale of the resampling noise. Defaults to 1.0.
        eps (float): Added to the variances. Defaults to 1e-6.

    Returns:
        Tensor: ``(N, C, H, W)``.
    """
    mu, sig = instance_stats(x, eps)
    sigma_mu = (mu.var(dim=0, keepdim=True) + eps).sqrt()
    sigma_sig = (sig.var(dim=0, keepdim=True) + eps).sqrt()
    e1, e2 = noise[..., None, None]
    beta = mu + e1 * factor * sigma_mu
    gamma = sig + e2 * factor * sigma_sig
    # (x - mu) / sig * gamma + beta as one per-(N, C) affine pass (gradients through mu, sig)
    scale = gamma / sig
    return torch.addcmul(beta - mu * scale, x, scale)


@MODELS.register_module()
class DSU(StatPerturbation):
    """DSU layer (registered as ``'DSU'``).

    Args:
        p (float): Probability of perturbing a training forward, in [0, 1]. Defaults to 0.5.
        factor (float): Scale of the resampling noise, >= 0. Defaults to 1.0.
        eps (float): Added to the variances, > 0. Defaults to 1e-6.
        generator (torch.Generator, optional): CPU generator of the noise. Defaults to None (torch's
            default CPU generator).

    Shape:
        ``(N, C, H, W)`` -> same. Identity in eval mode, when not ``active``, for ``N == 1`` and for
        ``H * W == 1``.
    """

    def __init__(self,
                 p: float = 0.5,
                 factor: float = 1.0,
                 eps: float = 1e-6,
                 generator: Optional[torch.Generator] = None):
        super().__init__(p=p, generator=generator)
        if isinstance(factor,
                      bool) or not isinstance(factor, Real) or not 0 <= factor < float('inf'):
            raise ArgumentError(f'factor must be a finite number >= 0, got factor={factor!r}')
        self.factor = float(factor)
        self.eps = check_eps(eps, 'DSU')

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(
            2, x.shape[0], x.shape[1], generator=self.generator, dtype=torch.float64)
        return dsu(x, noise.to(device=x.device, dtype=x.dtype), self.factor, self.eps)

    def extra_repr(self) -> str:
        return f'p={self.p}, factor={self.factor}, eps={self.eps}'
