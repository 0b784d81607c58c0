"""Semantic-aware whitening (SAW).

Peng et al., "Semantic-Aware Domain Generalized Segmentation", CVPR 2022 (arXiv 2204.00822);
formulas and defaults from the authors' code (leolyj/SAN-SAW ``graphs/models/SAW.py``,
``graphs/models/deeplab50_ClassINW.py``, ``tools/train.py``).

A 1x1 classifier at the position (``C -> K`` classes, trained by its own cross-entropy on the
detached features) ranks the channels for each class by ``|w_k,c|``. For ``K'`` selected classes
the channels are regrouped into ``G = C // K'`` groups of ``K'``: group ``g`` holds, for each
selected class ``j``, the channel ranked ``g``-th for ``j``, scaled by ``sigmoid(|w_j,c|)``. Each
group is whitened on its own (IRW's loss on a ``K' x K'`` covariance)::

    X_g   = [ sigmoid(|w_j, c_gj|) x[c_gj] ]_j                      (K' x HW, one instance)
    L_g   = mean_b max( sum_{i<j} |Sigma(X_g)[i, j]| - margin, 0 ) / (K' (K' - 1) / 2)
    L     = sum_g L_g,     margin = floor(K' (K' - 1) / 2 / relax_denom)

so the channels most telling for different classes are decorrelated, while channels of one class
are left free. The classifier weights enter the loss detached (the authors read them from the
state dict). The authors' settings: classes road, sky, building, sidewalk, vegetation (train IDs
0, 10, 2, 1, 8: ``K' = 5``), ``relax_denom`` 2 (margin 5 of 10 elements), loss weight 0.1 per
position, summed over positions (stages 1 and 2), classifier cross-entropy 0.1 per position.

Departures, documented in docs/whitening.md: the authors apply SAW to the output of SAN, their
class-aware normalisation, which mmnorm does not implement; here it acts, as IW / ISW do, on the
instance-standardised map at the position (a stage's residual sum, before the ReLU), and the
classifier reads that map too (theirs: the stage output after its ReLU). On standardised maps an
element of a group's covariance is a correlation times ``sigmoid(|w_i|) sigmoid(|w_j|)``, about
0.25 at the classifier's init, so the authors' margin (5 of 10 elements) keeps the loss at zero
whatever the correlations: the default here is no margin (``relax_denom=0``);
``relax_denom=2`` gives the authors'. The released code constructs its SAW modules with
``work=False``, which makes the loss zero; the paper's loss (on) is what is implemented.
"""
from numbers import Real
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from ...validation import ArgumentError, check_positive_int
from .instance_whitening import (EPS, InstanceWhitening, instance_covariance, relaxed_margin,
                                 strict_upper_mask, whitening_loss)

__all__ = ['saw_groups', 'saw_loss', 'SAW', 'saw_classifier_loss']

#: road, sky, building, sidewalk, vegetation (Cityscapes train IDs): the authors' default
DEFAULT_CLASSES = (0, 10, 2, 1, 8)


def saw_groups(class_weights: torch.Tensor,
               selected_classes: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The channel groups of SAW from a classifier's weights.

    Args:
        class_weights (Tensor): ``(K, C)`` classifier weights (their magnitude ranks the
            channels).
        selected_classes (Sequence[int]): The ``K'`` classes that make a group, in order.

    Returns:
        tuple[Tensor, Tensor]: ``index`` ``(G, K')`` long: group ``g``, class ``j`` -> the channel
        ranked ``g``-th (largest ``|w|`` first) for class ``j``; ``scale`` ``(G, K')``:
        ``sigmoid(|w_j, index[g, j]|)``. ``G = C // K'``.
    """
    magnitude = class_weights.detach().abs()[list(selected_classes)]  # (K', C)
    num_groups = magnitude.shape[1] // magnitude.shape[0]
    order = torch.sort(magnitude, dim=1, descending=True, stable=True).indices[:, :num_groups]
    scale = torch.sigmoid(magnitude.gather(1, order))
    return order.t(), scale.t()


def saw_loss(x: torch.Tensor,
             index: torch.Tensor,
             scale: torch.Tensor,
             margin: float,
             eps: float = EPS) -> torch.Tensor:
    """SAW's loss of ``x`` ``(B, C, H, W)`` for the groups of :func:`saw_groups` (scalar): the sum
    over groups of the batch mean of ``max(sum_{i<j} |Sigma_g[i, j]| - margin, 0) / N``, with
    ``N = K' (K' - 1) / 2``."""
    b, _, h, w = x.shape
    num_groups, group_size = index.shape
    grouped = x[:, index.reshape(-1)] * scale.reshape(1, -1, 1, 1).to(x.dtype)
    cov = instance_covariance(grouped.reshape(b * num_groups, group_size, h, w), eps)
    num_off = group_size * (group_size - 1) // 2
    # the mean over the B * G (instance, group) covariances, times G: per group the batch mean,
    # summed over the groups
    mask = strict_upper_mask(group_size, x.device)
    return whitening_loss(cov, mask, margin, num_off) * num_groups


@MODELS.register_module()
class SAW(InstanceWhitening):
    """Semantic-aware whitening at one backbone position: instance standardisation of the
    features (as IW / ISW), SAW's grouped whitening loss on them, and the classifier that ranks
    the channels.

    The loss of the positions is summed (not averaged as RobustNet's) and scaled by
    ``loss_weight``; the classifier's cross-entropy (:meth:`classifier_logits`, upsampled to the
    labels) is added by ``WhiteningEncoderDecoder`` as ``loss_saw_classifier`` with
    ``classifier_weight``.

    Args:
        num_features (int): Channels ``C`` at the position (at least ``len(selected_classes)``).
        num_classes (int): Classes of the classifier. Defaults to 19.
        selected_classes (Sequence[int]): The classes whose channels make the groups (>= 2,
            distinct, each < ``num_classes``). Defaults to the authors' (0, 10, 2, 1, 8).
        relax_denom (float): Margin ``floor(K' (K' - 1) / 2 / relax_denom)``, 0: none. Defaults
            to 0 (the authors' 2 gives a margin of 5 of 10 elements, which on standardised
            features holds the loss at zero: see the module docstring).
        loss_weight (float): Defaults to 0.1 (the authors', per position).
        classifier_weight (float): Weight of the classifier's cross-entropy. Defaults to 0.1.
        eps (float): Standardisation and covariance eps. Defaults to 1e-5.

    Shape:
        - Input: ``(B, C, H, W)``; output: same shape (standardised).
    """

    sum_positions = True

    def __init__(self,
                 num_features: int,
                 num_classes: int = 19,
                 selected_classes: Sequence[int] = DEFAULT_CLASSES,
                 relax_denom: float = 0.0,
                 loss_weight: float = 0.1,
                 classifier_weight: float = 0.1,
                 eps: float = EPS):
        super().__init__(num_features, loss_weight, eps)
        self.num_classes = check_positive_int(num_classes, 'num_classes', minimum=2)
        self.selected_classes = self._check_classes(selected_classes)
        for name, value in (('relax_denom', relax_denom), ('classifier_weight', classifier_weight)):
            if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
                raise ArgumentError(f'SAW {name} must be a number >= 0, got {name}={value!r}')
        self.relax_denom = float(relax_denom)
        self.classifier_weight = float(classifier_weight)
        self.margin = relaxed_margin(len(self.selected_classes), self.relax_denom)
        self.classifier = nn.Conv2d(num_features, num_classes, kernel_size=1)
        self.init_weights()

    def init_weights(self) -> None:
        """The classifier's weights ~ N(0, 0.01) (the authors' init of their convs), bias 0.

        mmengine calls it after the backbone's own ``init_cfg`` (e.g. Kaiming on every Conv2d),
        so that init does not stand in for this one.
        """
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def _check_classes(self, classes) -> Tuple[int, ...]:
        ok = isinstance(classes, Sequence) and not isinstance(classes, str) and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < self.num_classes
            for c in classes)
        if not ok or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ArgumentError('SAW selected_classes must be >= 2 distinct class indices in '
                                f'0..{self.num_classes - 1}, got selected_classes={classes!r}')
        if len(classes) > self.num_features:
            raise ArgumentError(
                f'SAW needs at least len(selected_classes)={len(classes)} channels to form a '
                f'group, got num_features={self.num_features}')
        return tuple(classes)

    def groups(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(index, scale)`` of :func:`saw_groups` from the classifier's current weights."""
        return saw_groups(self.classifier.weight.flatten(1), self.selected_classes)

    def loss(self, standardized: torch.Tensor) -> torch.Tensor:
        """SAW's (unweighted) loss of this position's output (scalar)."""
        index, scale = self.groups()
        return saw_loss(standardized, index, scale, self.margin, self.eps)

    def classifier_logits(self, standardized: torch.Tensor) -> torch.Tensor:
        """The classifier on the detached output: ``(B, C, H, W) -> (B, num_classes, H, W)``
        (its loss trains the classifier only)."""
        return self.classifier(standardized.detach())

    def extra_repr(self) -> str:
        return (super().extra_repr() + f', num_classes={self.num_classes}, selected_classes='
                f'{self.selected_classes}, relax_denom={self.relax_denom}, classifier_weight='
                f'{self.classifier_weight}')


def saw_classifier_loss(records: Sequence[Tuple[nn.Module, torch.Tensor]], labels: torch.Tensor,
                        ignore_index: int) -> torch.Tensor:
    """Sum over the SAW positions of ``classifier_weight`` x the cross-entropy of the classifier's
    logits, upsampled bilinearly (``align_corners=True``, the authors') to ``labels``
    ``(B, H, W)``; pixels at ``ignore_index`` are left out (scalar)."""
    # the mean over the labelled pixels, 0 when there is none (no host sync to find out)
    num_labelled = (labels != ignore_index).sum().clamp(min=1)
    losses = []
    for module, standardized in records:
        logits = F.interpolate(
            module.classifier_logits(standardized),
            size=labels.shape[-2:],
            mode='bilinear',
            align_corners=True)
        total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction='sum')
        losses.append(module.classifier_weight * total / num_labelled)
    return torch.stack(losses).sum()
