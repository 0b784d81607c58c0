"""Instance whitening losses: IW, IRW and ISW (RobustNet).

Choi et al., "RobustNet: Improving Domain Generalization in Urban-Scene Segmentation via Instance
Selective Whitening", CVPR 2021 (arXiv 2103.15597); formulas and defaults from the authors' code
(shachoi/RobustNet ``network/instance_whitening.py``, ``network/cov_settings.py``, ``train.py``).

At each chosen position the features are instance-standardised (instance norm without affine,
``eps = 1e-5``) and the loss acts on the covariance of each instance's standardised map
``X`` (``C x HW``)::

    Sigma = X X^T / (HW - 1) + eps I                                  (eps = 1e-5)
    L     = mean_b  max( sum_{i<j} |Sigma_b[i, j]| M[i, j] - margin, 0 ) / N_M

with ``M`` a 0/1 mask on the strict upper triangle and ``N_M`` the number the authors divide by:

- IW: ``M`` = the whole strict upper triangle, ``margin = 0``, ``N_M = C (C - 1) / 2``;
- IRW: the same ``M`` and ``N_M``, ``margin = floor(N_M / relax_denom)`` (authors: 64);
- ISW: ``margin = 0``, ``M`` = the elements whose covariance varies most between an image and its
  photometric twin, ``N_M = sum(M)``. Selection (:func:`select_sensitive`): the variance of each
  element over the pair (:func:`pair_variance`, the authors' ``torch.var`` over a batch of one
  image and its twin) averaged over the images; the ``C x C`` variance matrix (zero on and below
  the diagonal, as the authors' code clusters it) grouped by 1-D k-means into ``clusters`` groups;
  every element outside the lowest-variance group is selected. Masks of several passes
  (``trials``) are intersected, then frozen.

The backbone positions average their losses; ``loss_weight`` (the authors' ``wt_reg_weight``: IW
0.8, IRW 0.6, ISW 0.6) scales the mean. The modules here have no parameters; ISW's mask is a buffer
saved with the model, which plain ResNet checkpoints need not contain.
"""
from numbers import Real
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from ...validation import ArgumentError, ArgumentTypeError, check_positive_int
from .kmeans1d import kmeans_1d

__all__ = [
    'instance_standardize', 'instance_covariance', 'whitening_loss', 'strict_upper_mask',
    'relaxed_margin', 'pair_variance', 'select_sensitive', 'InstanceWhitening', 'IW', 'IRW', 'ISW',
    'build_whitening', 'WHITENING_TYPES'
]

#: eps of the instance standardisation and of the covariance diagonal (the authors' values)
EPS = 1e-5


def instance_standardize(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Instance norm without affine (biased variance), float32 or wider; ``(B, C, H, W)``."""
    dtype = x.dtype
    y = F.instance_norm(x.float() if dtype in (torch.float16, torch.bfloat16) else x, eps=eps)
    return y.to(dtype)


def instance_covariance(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``X X^T / (HW - 1) + eps I`` of each instance: ``(B, C, H, W) -> (B, C, C)``, float32 for
    half-precision inputs.

    ``x`` is the standardised map (zero mean per channel), so this is its covariance.
    """
    b, c, h, w = x.shape
    if h * w < 2:
        raise ArgumentError(f'instance_covariance needs H * W >= 2, got a {h}x{w} map')
    flat = x.reshape(b, c, h * w)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    # float32 or wider even under autocast: the sums run over H * W products
    with torch.autocast(flat.device.type, enabled=False):
        cov = torch.bmm(flat, flat.transpose(1, 2)) / (h * w - 1)
    return cov + eps * torch.eye(c, dtype=cov.dtype, device=cov.device)


def strict_upper_mask(num_features: int, device=None) -> torch.Tensor:
    """The strict upper triangle of a ``C x C`` matrix as a bool mask."""
    return torch.ones(num_features, num_features, dtype=torch.bool, device=device).triu(1)


def relaxed_margin(num_features: int, relax_denom: float) -> float:
    """IRW's margin: ``floor(C (C - 1) / 2 / relax_denom)``; 0 for ``relax_denom == 0``."""
    num_off = num_features * (num_features - 1) // 2
    return 0.0 if relax_denom == 0 else float(num_off // relax_denom)


def whitening_loss(cov: torch.Tensor, mask: torch.Tensor, margin: float,
                   num_selected: float) -> torch.Tensor:
    """``mean_b max(sum |cov_b * mask| - margin, 0) / num_selected`` (scalar).

    Args:
        cov (Tensor): ``(B, C, C)`` instance covariances.
        mask (Tensor): ``(C, C)`` bool, the elements the loss acts on.
        margin (float): Subtracted from each instance's sum (IRW).
        num_selected (float): The divisor (> 0).
    """
    off = (cov.abs() * mask.to(cov.dtype)).sum(dim=(1, 2))
    return ((off - margin) / num_selected).clamp(min=0).mean()


def pair_variance(cov_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of each covariance element over an image and its twin, strict upper
    triangle only (zero elsewhere): ``(B, C, C)`` twice -> ``(B, C, C)``, ``(a - b)^2 / 2``."""
    mask = strict_upper_mask(cov_a.shape[-1], cov_a.device)
    return (cov_a - cov_b).pow(2).div(2) * mask


def select_sensitive(var_matrix: torch.Tensor, clusters: int) -> torch.Tensor:
    """ISW's selection: the elements outside the lowest of ``clusters`` 1-D k-means groups.

    As the authors' ``set_mask_matrix``: the whole ``C x C`` variance matrix is clustered (its
    zeros on and below the diagonal included) and the ``n - |group 0|`` largest elements are
    selected (ties broken by position, so every rank selects the same).

    Args:
        var_matrix (Tensor): ``(C, C)`` mean pair variance (:func:`pair_variance` over images).
        clusters (int): Number of k-means groups, >= 2.

    Returns:
        Tensor: ``(C, C)`` bool mask on ``var_matrix``'s device.
    """
    values = var_matrix.detach().double().cpu().reshape(-1).numpy()
    labels = kmeans_1d(values, clusters)
    num_sensitive = int((labels != 0).sum())
    order = np.argsort(-values, kind='stable')[:num_sensitive]
    mask = np.zeros(values.shape, dtype=bool)
    mask[order] = True
    return torch.from_numpy(mask).reshape(var_matrix.shape).to(var_matrix.device)


def _check_weight(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise ArgumentError(f'{name} must be a number >= 0, got {name}={value!r}')
    return float(value)


class InstanceWhitening(nn.Module):
    """Instance standardisation at one backbone position, and the whitening loss of its output.

    ``forward(x)`` returns the standardised ``x`` (the features that continue into the network);
    :meth:`loss` takes that output. Subclasses set the mask, margin and divisor.

    Args:
        num_features (int): Channels ``C`` at the position.
        loss_weight (float): The weight of the loss (>= 0).
        eps (float): Standardisation and covariance eps. Defaults to 1e-5 (the authors').

    Shape:
        - Input: ``(B, C, H, W)``; output: same shape.
    """

    #: the backbone sums the losses of its positions (True) or averages them (RobustNet's)
    sum_positions = False

    def __init__(self, num_features: int, loss_weight: float = 0.6, eps: float = EPS):
        super().__init__()
        self.num_features = check_positive_int(num_features, 'num_features')
        self.loss_weight = _check_weight(loss_weight, 'loss_weight')
        self.eps = eps
        self.register_buffer('mask', strict_upper_mask(num_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_standardize(x, self.eps)

    def mask_margin_divisor(self) -> Optional[Tuple[torch.Tensor, float, float]]:
        """``(mask, margin, num_selected)``, or None where the loss is not yet defined."""
        return self.mask, 0.0, float(self.num_features * (self.num_features - 1) // 2)

    def loss(self, standardized: torch.Tensor) -> torch.Tensor:
        """The (unweighted) whitening loss of this position's output (scalar)."""
        terms = self.mask_margin_divisor()
        if terms is None:
            return standardized.new_zeros(())
        mask, margin, divisor = terms
        return whitening_loss(instance_covariance(standardized, self.eps), mask, margin, divisor)

    def extra_repr(self) -> str:
        return f'{self.num_features}, loss_weight={self.loss_weight}, eps={self.eps}'


@MODELS.register_module()
class IW(InstanceWhitening):
    """Instance whitening: every off-diagonal covariance element. Authors' weight 0.8."""

    def __init__(self, num_features: int, loss_weight: float = 0.8, eps: float = EPS):
        super().__init__(num_features, loss_weight, eps)


@MODELS.register_module()
class IRW(InstanceWhitening):
    """Instance relaxed whitening: IW with a margin of ``C (C - 1) / 2 // relax_denom``.

    Args:
        relax_denom (float): >= 0 (0: no margin, i.e. IW). Defaults to 64 (the authors').
    """

    def __init__(self,
                 num_features: int,
                 loss_weight: float = 0.6,
                 relax_denom: float = 64.0,
                 eps: float = EPS):
        super().__init__(num_features, loss_weight, eps)
        self.relax_denom = _check_weight(relax_denom, 'relax_denom')
        self.margin = relaxed_margin(num_features, self.relax_denom)

    def mask_margin_divisor(self):
        _, _, divisor = super().mask_margin_divisor()
        return self.mask, self.margin, divisor

    def extra_repr(self) -> str:
        return super().extra_repr() + f', relax_denom={self.relax_denom}'


@MODELS.register_module()
class ISW(InstanceWhitening):
    """Instance selective whitening: only the covariance elements most sensitive to photometric
    change, selected once (:meth:`select`) and frozen.

    Until :meth:`select` runs the loss is zero (the authors train without it for their first
    ``cov_stat_epoch`` epochs). The selected mask is a persistent buffer (``selected_mask``,
    ``is_selected``): checkpoints keep it; state dicts without it (a plain ResNet) load and leave
    it unselected.

    Args:
        clusters (int): k-means groups of the variance matrix, >= 2. Defaults to 3 (the authors').
    """

    def __init__(self,
                 num_features: int,
                 loss_weight: float = 0.6,
                 clusters: int = 3,
                 eps: float = EPS):
        super().__init__(num_features, loss_weight, eps)
        if isinstance(clusters, bool) or not isinstance(clusters, int) or clusters < 2:
            raise ArgumentError(f'ISW clusters must be an int >= 2 (k-means groups of the '
                                f'covariance variances), got clusters={clusters!r}')
        self.clusters = clusters
        self.register_buffer('selected_mask',
                             torch.zeros(num_features, num_features, dtype=torch.bool))
        self.register_buffer('is_selected', torch.zeros((), dtype=torch.bool))

    def select(self, var_matrix: torch.Tensor, intersect: bool = False) -> torch.Tensor:
        """Sets the mask from a ``(C, C)`` variance matrix; ``intersect`` keeps only the elements
        that the current mask also holds (the authors' trials). Returns the new mask."""
        if var_matrix.shape != (self.num_features, self.num_features):
            raise ArgumentError(f'ISW.select expects a ({self.num_features}, '
                                f'{self.num_features}) variance matrix, got '
                                f'{tuple(var_matrix.shape)}')
        mask = select_sensitive(var_matrix, self.clusters).to(self.selected_mask.device)
        if intersect and bool(self.is_selected):
            mask = mask & self.selected_mask
        self.selected_mask.copy_(mask)
        self.is_selected.fill_(True)
        return mask

    def reset_selection(self) -> None:
        """Forgets the mask (the loss is zero again until :meth:`select`)."""
        self.selected_mask.zero_()
        self.is_selected.fill_(False)

    def mask_margin_divisor(self):
        if not bool(self.is_selected):
            return None
        return self.selected_mask, 0.0, float(max(int(self.selected_mask.sum()), 1))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = [prefix + 'selected_mask', prefix + 'is_selected']
        absent = [key for key in own if key not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if len(absent) == len(own):  # a state dict without ISW (plain ResNet): keep unselected
            for key in absent:
                missing_keys.remove(key)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', clusters={self.clusters}'


#: the whitening modules a backbone position can hold (SAW: semantic_whitening.py)
WHITENING_TYPES = ('IW', 'IRW', 'ISW', 'SAW')


def build_whitening(cfg: dict, num_features: int) -> InstanceWhitening:
    """Builds an IW / IRW / ISW / SAW module from its config for ``num_features`` channels."""
    if not isinstance(cfg, dict) or cfg.get('type') not in WHITENING_TYPES:
        raise ArgumentTypeError(
            "whitening must be dict(type='IW' | 'IRW' | 'ISW' | 'SAW', ...), got whitening="
            f'{cfg!r}')
    return MODELS.build(dict(cfg, num_features=num_features))
