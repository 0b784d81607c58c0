"""Shared pieces of the statistics-perturbation layers (MixStyle, EFDMix, DSU).

Each layer perturbs the per-instance channel statistics of a feature map ``x`` of shape
``(N, C, H, W)`` during training, with probability ``p`` per forward, and is the identity in eval
mode, when deactivated (:func:`set_perturbation_active`) and for a batch of one sample. MixStyle and
DSU normalise with the spatial variance, so they are also the identity on maps with a single spatial
position (the unbiased variance is undefined there); EFDMix matches sorted values, which a 1x1 map
still has, and mixes them as the authors' code does (:attr:`StatPerturbation.spatial_variance`).

Randomness: the few random numbers of a forward (the coin, mixing weights, the permutation, DSU's
noise, all of size ``N`` or ``N x C``) are drawn on the CPU from the layer's ``generator`` (torch's
default CPU generator when None, so ``torch.manual_seed`` and mmengine's ``randomness`` config
control it) and moved to the input's device, so a seed gives the same draws on CPU and GPU.
Statistics and the perturbed output are computed in float32 for half-precision inputs (autocast) and
cast back; the memory format of the input is kept.
"""
import math
from numbers import Real
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ...stats import channel_moments
from ...validation import ArgumentError, ArgumentTypeError
from ..norms.domain import DomainAwareMixin, check_domain_split

__all__ = [
    'StatPerturbation', 'StatMixing', 'instance_stats', 'sample_beta', 'mixing_partners',
    'crossdomain_split', 'set_perturbation_active', 'MIX_MODES'
]

MIX_MODES = ('random', 'crossdomain')


def instance_stats(x: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-instance channel mean and standard deviation over the spatial dimensions.

    ``sig = sqrt(var + eps)`` with torch's unbiased variance, as the authors' code of MixStyle and
    DSU does (:func:`mmnorm.stats.channel_moments` over ``(H, W)``).

    Args:
        x (Tensor): float32 or float64 ``(N, C, H, W)`` with ``H * W > 1``.
        eps (float): Added to the variance.

    Returns:
        tuple[Tensor, Tensor]: ``mu``, ``sig``, each ``(N, C, 1, 1)`` in ``x``'s dtype.
    """
    mu, var = channel_moments(x, dims=(2, 3), correction=1, keepdim=True)
    return mu, (var + eps).sqrt()


def _log_gamma_sample(shape: float, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``log`` of ``n`` Gamma(shape, 1) draws in float64.

    Marsaglia-Tsang; shape < 1 boosted by ``U ** (1/shape)``.
    """
    boost = shape < 1
    a = shape + 1 if boost else shape
    d = a - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while pending.numel():
        z = torch.randn(pending.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64)
        v = (1 + c * z)**3
        ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[pending[ok]] = math.log(d) + torch.log(v[ok])
        pending = pending[~ok]
    if boost:
        u = torch.rand(n, generator=generator, dtype=torch.float64).clamp_min(1e-300)
        out = out + torch.log(u) / shape
    return out


def sample_beta(alpha: float, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) from ``generator`` (CPU), float64, computed in log space.

    ``torch.distributions.Beta`` takes no generator; this is ``X / (X + Y)`` with
    ``X, Y ~ Gamma(alpha)``, as a sigmoid of ``log X - log Y`` so tiny ``alpha`` (0.1: most mass
    near 0 and 1) does not underflow.
    """
    return torch.sigmoid(
        _log_gamma_sample(alpha, n, generator) - _log_gamma_sample(alpha, n, generator))


def mixing_partners(batch_size: int,
                    mix: str,
                    split: Optional[Tuple[int, int]],
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Index of the sample each sample borrows its statistics from, ``(N,)`` long on the CPU.

    - ``'random'``: a random permutation of the batch.
    - ``'crossdomain'``: every sample of one domain borrows from the other. The domains are the
      declared ``split = (n_a, n_b)`` ([source | target], :func:`mmnorm.models.norms.domain_split`),
      else the two halves. Equal sizes: each half gets a shuffled copy of the other half (the
      authors' swap); unequal sizes: every sample draws a partner of the other domain uniformly.

    Raises:
        ValueError: 'crossdomain' on an odd batch without a declared split, or a split with an empty
            domain.
    """
    if mix == 'random':
        return torch.randperm(batch_size, generator=generator)
    n_a, n_b = crossdomain_split(batch_size, split)
    if n_a == n_b:
        return torch.cat([
            n_a + torch.randperm(n_b, generator=generator),
            torch.randperm(n_a, generator=generator)
        ])
    return torch.cat([
        n_a + torch.randint(n_b, (n_a, ), generator=generator),
        torch.randint(n_a, (n_b, ), generator=generator)
    ])


def crossdomain_split(batch_size: int, split: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """The two domains' sizes for ``mix='crossdomain'``: the declared split, else the two halves.

    Raises:
        ValueError: an odd batch without a declared split, or a split with an empty domain.
    """
    if split is None:
        if batch_size % 2:
            raise ValueError(
                f"mix='crossdomain' splits the batch into two halves, got an odd batch of "
                f'{batch_size} samples; declare the [source | target] split with '
                "mmnorm.domain_split(model, (n_source, n_target)) or use mix='random'")
        return batch_size // 2, batch_size // 2
    if split[0] == 0 or split[1] == 0:
        raise ValueError(
            f"mix='crossdomain' needs samples of both domains, got the split {tuple(split)} "
            '(source, target)')
    return int(split[0]), int(split[1])


def check_probability(p) -> float:
    if isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p <= 1:
        raise ArgumentError(
            f'p (probability of perturbing a training forward) must be in [0, 1], got p={p!r}')
    return float(p)


def check_positive(name: str, value) -> float:
    if isinstance(value,
                  bool) or not isinstance(value, Real) or not (value > 0 and math.isfinite(value)):
        raise ArgumentError(f'{name} must be a finite number > 0, got {name}={value!r}')
    return float(value)


def check_mix(mix) -> str:
    if mix not in MIX_MODES:
        raise ArgumentError(f"mix must be one of {MIX_MODES}, got mix={mix!r}")
    return mix


def check_generator(generator) -> Optional[torch.Generator]:
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise ArgumentTypeError(
            f'generator must be a torch.Generator or None, got {type(generator).__name__}')
    if generator.device.type != 'cpu':
        raise ArgumentError(
            'generator must be a CPU torch.Generator (the layer draws its few random numbers on '
            f'the CPU and moves them to the input device), got one on {generator.device}')
    return generator


class StatPerturbation(DomainAwareMixin, nn.Module):
    """Base of the perturbation layers: validation, the train/eval/active gate and the per-forward
    coin.

    Subclasses implement ``perturb(x) -> y`` on a float32/float64 ``(N, C, H, W)`` tensor with
    ``N > 1`` (and ``H * W > 1`` when :attr:`spatial_variance`); the base handles dtype, memory
    format and when to call it. No parameters, no buffers: adding a layer to a model leaves its
    state dict unchanged.

    Attributes:
        active (bool): False turns the layer into the identity also in training (see
            :func:`set_perturbation_active`).
        spatial_variance (bool): Class attribute: ``perturb`` divides by the per-instance spatial
            standard deviation (MixStyle, DSU), so a map with one spatial position passes unchanged.
            False for EFDMix, which needs no variance.
    """

    spatial_variance = True

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.p = check_probability(p)
        self.generator = check_generator(generator)
        self.active = True

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_batch(self, x: torch.Tensor) -> None:
        """Raises ValueError for inputs the layer cannot perturb (called in training before the
        coin)."""
        check_domain_split(self.domain_split, x.shape[0], type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: ``(N, C, H, W)`` in, same shape, dtype and memory format out."""
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} expects an (N, C, H, W) feature map, '
                             f'got shape {tuple(x.shape)}')
        if not (self.training and self.active):
            return x
        self.check_batch(x)
        if x.shape[0] < 2 or (self.spatial_variance and x.shape[2] * x.shape[3] < 2):
            return x
        if not torch.rand((), generator=self.generator).item() < self.p:
            return x
        compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        y = self.perturb(x.to(compute_dtype)).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def extra_repr(self) -> str:
        return f'p={self.p}'


class StatMixing(StatPerturbation):
    """Base of the layers that mix a sample with a partner (MixStyle, EFDMix): ``alpha``, ``mix``
    and the draws.

    Args:
        p (float): Probability of perturbing a training forward. Defaults to 0.5.
        alpha (float): Mixing weights ``lam ~ Beta(alpha, alpha)``, one per sample. Defaults to 0.1.
        mix (str): ``'random'`` or ``'crossdomain'`` (see :func:`mixing_partners`). Defaults to
            ``'random'``.
        generator (torch.Generator, optional): CPU generator of the draws. Defaults to None (torch's
            default).
    """

    def __init__(self,
                 p: float = 0.5,
                 alpha: float = 0.1,
                 mix: str = 'random',
                 generator: Optional[torch.Generator] = None):
        super().__init__(p=p, generator=generator)
        self.alpha = check_positive('alpha', alpha)
        self.mix = check_mix(mix)

    def check_batch(self, x: torch.Tensor) -> None:
        super().check_batch(x)
        if self.mix == 'crossdomain':
            crossdomain_split(x.shape[0], self.domain_split)

    def draw_mixing(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``lam`` ``(N,)`` in ``x``'s dtype and device, and the partner index ``(N,)`` long on
        ``x``'s device.

        Drawn in this order from the generator: ``lam``, then the partners.
        """
        lam = sample_beta(self.alpha, x.shape[0], self.generator).to(device=x.device, dtype=x.dtype)
        partners = mixing_partners(x.shape[0], self.mix, self.domain_split,
                                   self.generator).to(x.device)
        return lam, partners

    def extra_repr(self) -> str:
        return f'p={self.p}, alpha={self.alpha}, mix={self.mix!r}'


def set_perturbation_active(model: nn.Module, active: bool) -> int:
    """Turns every :class:`StatPerturbation` layer of ``model`` on or off; returns how many layers
    it set."""
    if not isinstance(active, bool):
        raise TypeError(f'active must be a bool, got {active!r}')
    count = 0
    for module in model.modules():
        if isinstance(module, StatPerturbation):
            module.active = active
            count += 1
    return count
