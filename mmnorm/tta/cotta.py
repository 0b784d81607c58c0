"""CoTTA: continual test-time adaptation (Wang et al., "Continual Test-Time Domain Adaptation",
CVPR 2022, arXiv 2203.13591; authors' code qinenergy/cotta and its mmseg-0.x ACDC code).

Three copies of the model: the *student* (the model itself, all parameters tuned by default), the
*teacher* (an exponential moving average of the student) and the *anchor* (the frozen source
model). One step on a batch ``x``:

1. teacher prediction ``q = softmax(teacher(x))``; where the anchor's confidence
   ``max_k softmax(anchor(x))_k`` is below ``threshold`` (per pixel; per sample for ``(N, K)``
   logits) ``q`` is replaced by the mean of the teacher's softmax over the augmented views —
   every scale of ``scales`` × (no flip, horizontal flip), each view's logits resized back to the
   input's size (bilinear) and flipped back before the softmax;
2. student loss: cross-entropy with the soft pseudo-labels, ``L = mean over valid elements of
   −Σ_k q_k log softmax(student(x))_k``; one optimizer step;
3. teacher ``θ_T ← α θ_T + (1 − α) θ_S`` (α 0.999, parameters only);
4. stochastic restore: every element of every tuned student parameter returns to its source value
   with probability ``p`` (0.01), drawn from the adapter's own generator (one seed, so every rank
   draws the same masks).

The predictions are the teacher's ``q`` of step 1. Defaults from the authors' segmentation code:
scales 0.5–2.0 in steps of 0.25 with flips (14 views), threshold 0.69 (their note: 0.74 is the 5 %
quantile of the source model's confidence on Cityscapes), Adam lr 6e-5 / 8 (their batch of 1),
norm layers on their source statistics (the model in eval mode). Their segmentation code trains on
the *hard* argmax of ``q`` through mmseg's decode loss; mmnorm uses the paper's soft cross-entropy
(their CIFAR / ImageNet code). ``augment=False`` drops the anchor and the views (``q`` = the
teacher's plain prediction), the authors' cheaper variant.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..stats import compute_dtype
from .distributed import backward_global_mean, sum_over_ranks

__all__ = [
    'DEFAULT_SCALES', 'soft_cross_entropy', 'ema_update', 'stochastic_restore',
    'augmented_probabilities', 'pseudo_labels', 'CoTTAStep'
]

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``−Σ_k q_k log softmax(logits)_k`` along dim 1: (N, K, *) -> (N, *)."""
    return -(target_probs * torch.log_softmax(logits.to(compute_dtype(logits)), dim=1)).sum(1)


@torch.no_grad()
def ema_update(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
               momentum: float) -> None:
    """``t ← momentum · t + (1 − momentum) · s`` in place, pairwise."""
    for t, s in zip(teacher, student):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


@torch.no_grad()
def stochastic_restore(params: Sequence[torch.Tensor], source: Sequence[torch.Tensor], p: float,
                       generator: torch.Generator) -> None:
    """Every element of ``params`` returns to its ``source`` value with probability ``p``; masks
    ``torch.rand(shape, generator=generator) < p`` drawn on the generator's device (CPU), one per
    parameter in order."""
    for param, src in zip(params, source):
        mask = torch.rand(param.shape, generator=generator) < p
        param.copy_(torch.where(mask.to(param.device), src, param))


def augmented_probabilities(predict: Callable[[torch.Tensor], torch.Tensor],
                            inputs: torch.Tensor,
                            scales: Sequence[float],
                            flip: bool = True,
                            size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Mean softmax of ``predict`` over the views of ``inputs`` (N, C, H, W): every scale (bilinear
    resize of the inputs) × (as is, flipped along W when ``flip``); each view's logits
    (N, K, h, w) are flipped back and resized to ``size`` (the plain view's logits' (H, W));
    (N, K) logits are averaged as they are.

    Returns:
        Tensor: (N, K, *size) probabilities.
    """
    height, width = inputs.shape[-2:]
    total, count = None, 0
    for scale in scales:
        view = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        scaled = inputs if view == (height, width) else F.interpolate(
            inputs, size=view, mode='bilinear', align_corners=False)
        for flipped in ((False, True) if flip else (False, )):
            logits = predict(scaled.flip(-1) if flipped else scaled)
            logits = logits.to(compute_dtype(logits))
            if logits.dim() > 2:
                if flipped:
                    logits = logits.flip(-1)
                if tuple(logits.shape[2:]) != tuple(size):
                    logits = F.interpolate(
                        logits, size=tuple(size), mode='bilinear', align_corners=False)
            probs = torch.softmax(logits, dim=1)
            total = probs if total is None else total + probs
            count += 1
    return total / count


def pseudo_labels(teacher_probs: torch.Tensor, augmented: Optional[torch.Tensor],
                  anchor_probs: Optional[torch.Tensor], threshold: float) -> torch.Tensor:
    """CoTTA's pseudo-labels: ``augmented`` where the anchor's confidence (max over dim 1 of
    ``anchor_probs``) is below ``threshold``, else ``teacher_probs``; ``teacher_probs`` without
    augmentation. All (N, K, *)."""
    if augmented is None:
        return teacher_probs
    low = (anchor_probs.max(1, keepdim=True).values < threshold)
    return torch.where(low, augmented, teacher_probs)


class CoTTAStep:
    """One CoTTA step (module docstring).

    Args:
        params (list[Parameter]): The tuned student parameters.
        optimizer (torch.optim.Optimizer): Over ``params``.
        teacher (list[Tensor]): The teacher's parameters matching ``params`` (updated in place).
        source (list[Tensor]): The source values of ``params``.
        momentum (float): Teacher EMA ``α``.
        restore (float): Stochastic-restore probability ``p``.
        threshold (float): Anchor-confidence threshold.
        scales (tuple[float]): View scales; ``flip``: add flipped views; ``augment``: use the views
            at all (else the teacher's plain prediction).
        seed (int): Seed of the restore generator (:meth:`restart` re-seeds it).
    """

    def __init__(self, params, optimizer, teacher, source, *, momentum: float, restore: float,
                 threshold: float, scales: Sequence[float], flip: bool, augment: bool, seed: int):
        self.params = list(params)
        self.optimizer = optimizer
        self.teacher = list(teacher)
        self.source = list(source)
        self.momentum = momentum
        self.restore = restore
        self.threshold = threshold
        self.scales = tuple(scales)
        self.flip = flip
        self.augment = augment
        self.seed = seed
        self.generator = torch.Generator()
        self.restart()

    def restart(self) -> None:
        self.generator.manual_seed(self.seed)

    def __call__(
        self, views: Optional[Tuple[Callable, Callable, Optional[Callable], torch.Tensor]]
    ) -> Tuple[Optional[torch.Tensor], dict]:
        """Runs the step (collective: every rank calls).

        Args:
            views: ``(student, teacher, anchor, inputs)``: ``student()`` gives ``(logits (N, K, *),
                valid (N, *) or None)`` with grad; ``teacher(x)`` / ``anchor(x)`` the logits of an
                input tensor like ``inputs`` (N, C, H, W) (``anchor`` None without
                augmentation); None on a rank without a batch.

        Returns:
            tuple: ``(pseudo-labels q (N, K, *) or None, record)``.
        """
        q, loss_sum = None, None
        local = torch.zeros(3, dtype=torch.float64)
        if views is not None:
            student, teacher, anchor, inputs = views
            with torch.no_grad():
                plain = teacher(inputs)
                plain = plain.to(compute_dtype(plain))
                q = torch.softmax(plain, dim=1)
                low = torch.zeros_like(q[:, 0], dtype=torch.bool)
                if self.augment:
                    anchor_probs = anchor(inputs)
                    anchor_probs = torch.softmax(
                        anchor_probs.to(compute_dtype(anchor_probs)), dim=1)
                    augmented = augmented_probabilities(teacher, inputs, self.scales, self.flip,
                                                        plain.shape[2:])
                    low = anchor_probs.max(1).values < self.threshold
                    q = pseudo_labels(q, augmented, anchor_probs, self.threshold)
            logits, valid = student()
            ce = soft_cross_entropy(logits, q)
            valid = torch.ones_like(ce, dtype=torch.bool) if valid is None else valid
            loss_sum = (ce * valid).sum()
            local = torch.stack([valid.sum(), ce.detach()[valid].sum(), low[valid].sum()]).double()
        total = sum_over_ranks(local.to(self.params[0].device)).cpu()
        count = float(total[0])
        if count > 0:
            backward_global_mean(self.params, loss_sum, count)
            self.optimizer.step()
        ema_update(self.teacher, self.params, self.momentum)
        stochastic_restore(self.params, self.source, self.restore, self.generator)
        count = max(count, 1.0)
        return q, dict(loss=float(total[1]) / count, augmented=float(total[2]) / count)
