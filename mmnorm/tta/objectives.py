"""Entropy objectives of test-time adaptation (TENT: Wang et al., "Tent: Fully Test-Time Adaptation
by Entropy Minimization", ICLR 2021, arXiv 2006.10726).

Every objective returns *sums* and counts rather than a mean, so that ranks (and the safeguards) can
combine them exactly: the loss of a step is ``sum of selected entropies / number selected``, summed
over ranks first.
"""
from typing import Optional, Sequence, Tuple

import torch

from ..stats import compute_dtype

__all__ = [
    'softmax_entropy', 'valid_pixel_mask', 'EntropyTerms', 'entropy_terms', 'marginal_entropy',
    'check_class_logits'
]


def softmax_entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``H = -sum_k p_k log p_k`` of ``softmax(logits)`` along ``dim`` (nats), computed in >= fp32.

    Args:
        logits (Tensor): e.g. (N, K, H, W) segmentation logits or (R, K) class scores.

    Returns:
        Tensor: ``logits`` without ``dim``, e.g. (N, H, W) or (R,).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_p = torch.log_softmax(logits, dim=dim)
    return -(log_p.exp() * log_p).sum(dim)


def valid_pixel_mask(shape: Sequence[int],
                     metas: Optional[Sequence[dict]],
                     device=None) -> torch.Tensor:
    """(N, H, W) bool: the pixels of the segmentation logits that are not padding.

    mmseg records the padding of each image in its meta as ``img_padding_size`` (else
    ``padding_size``) ``= [left, right, top, bottom]``, what ``EncoderDecoder.postprocess_result``
    crops; images without it are valid everywhere.
    """
    n, h, w = shape
    mask = torch.ones(n, h, w, dtype=torch.bool, device=device)
    for i, meta in enumerate(metas or []):
        padding = meta['img_padding_size'] if 'img_padding_size' in meta else meta.get(
            'padding_size')
        left, right, top, bottom = (int(v) for v in (padding or (0, 0, 0, 0)))
        if left or right or top or bottom:
            mask[i] = False
            mask[i, top:h - bottom, left:w - right] = True
    return mask


class EntropyTerms:
    """What one forward contributes to a TENT step (all detached except ``loss_sum``).

    Attributes:
        loss_sum (Tensor): Sum of the selected elements' entropies (scalar, differentiable).
        selected (Tensor): Number of selected elements (scalar float64).
        valid (Tensor): Number of valid elements (scalar float64).
        prob_sum (Tensor): (K,) float64 sum of the valid elements' class probabilities (the
            predicted-class marginal before normalisation, for the collapse monitor).
        entropy_sum (Tensor): Sum of the valid elements' entropies (scalar float64).
    """

    def __init__(self, loss_sum, selected, valid, prob_sum, entropy_sum):
        self.loss_sum = loss_sum
        self.selected = selected
        self.valid = valid
        self.prob_sum = prob_sum
        self.entropy_sum = entropy_sum


def entropy_terms(logits: torch.Tensor,
                  valid: Optional[torch.Tensor] = None,
                  margin: Optional[float] = None) -> EntropyTerms:
    """Entropy terms of class logits ``(N, K, *)``; ``valid`` (N, *) bool masks padding; elements
    whose entropy is ``>= margin`` (nats) are left out of the loss (EATA's reliable-sample
    selection, :mod:`.safeguards`).

    Returns:
        EntropyTerms: sums over the valid (and, for the loss, selected) elements.
    """
    ent = softmax_entropy(logits, dim=1)
    if valid is None:
        valid = torch.ones_like(ent, dtype=torch.bool)
    selected = valid if margin is None else valid & (ent.detach() < margin)
    loss_sum = (ent * selected).sum()
    with torch.no_grad():
        k = logits.shape[1]
        probs = torch.softmax(logits.detach().to(compute_dtype(logits)), dim=1)
        probs = probs.movedim(1, -1).reshape(-1, k)
        prob_sum = probs[valid.reshape(-1)].sum(0).double()
        entropy_sum = ent.detach()[valid].sum().double()
    return EntropyTerms(loss_sum,
                        selected.sum().double(),
                        valid.sum().double(), prob_sum, entropy_sum)


def marginal_entropy(prob_sum: torch.Tensor, count: float) -> float:
    """Entropy (nats) of the predicted-class marginal ``prob_sum / count``; 0 when ``count`` is
    0."""
    if count <= 0:
        return 0.0
    p = (prob_sum / count).clamp_min(1e-12)
    return float(-(p * p.log()).sum())


def check_class_logits(logits, what: str) -> Tuple[int, int]:
    """``(N, K)`` of class logits (N, K, *); ValueError naming ``what`` and the shape without a
    class dimension."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"method='tent' minimises the entropy over a class dimension (dim 1, >= 2 classes); "
            f'{what} gave {shape}; use a statistics method (\'bn\' or \'prior\') for this model')
    return logits.shape[0], logits.shape[1]
