"""EATA: efficient anti-forgetting test-time adaptation (Niu et al., "Efficient Test-Time Model
Adaptation without Forgetting", ICML 2022, arXiv 2204.02610; authors' code mr-eggplant/EATA,
``eata.py``, ``main.py``).

One EATA step on a batch, with ``E`` the prediction entropy of an element, ``E_0 = margin · ln K``:

1. reliable elements ``E < E_0``;
2. redundancy: the prediction of a *sample* is compared with the running mean prediction ``m`` by
   cosine similarity; samples with ``|cos| ≥ ε`` (0.05) are dropped (none on the first batch);
3. the kept elements' entropies, weighted ``1 / exp(E − E_0)`` (weights detached), averaged over the
   kept elements: ``L = Σ w E / n_kept``; plus the Fisher anti-forgetting term
   ``α Σ_i F_i (θ_i − θ_i⁰)²`` (α 2000) when Fisher information ``F`` is given; one optimizer step
   when anything was kept;
4. ``m ← 0.9 m + 0.1 · mean of the kept samples' predictions`` (the first: their mean).

Without ``F`` the method is ETA (the paper's name for EATA without the regulariser).

Segmentation (mmnorm's choice): an element is a pixel (entropy filter, weights, loss mean); a
*sample* for the redundancy filter is an image, its prediction the mean softmax over its reliable
pixels; an image without reliable pixels, or a redundant one, contributes no pixel. For ``(N, K)``
class logits this is EATA exactly. The margin ``ε = 0.05`` is an ImageNet (K = 1000) setting:
with few classes the mean predictions of two images are nearly parallel (cosine near 1), so 0.05
drops almost every image after the first batch; ``redundancy=None`` switches the filter off.

Fisher information (:func:`fisher_information`): on a small in-distribution loader, per batch the
gradient ``g`` of the mean cross-entropy against the model's own argmax predictions;
``F = mean over batches of g²`` (the authors' ``main.py``); ``θ⁰`` the source values.
"""
import math
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..stats import compute_dtype
from .distributed import backward_global_mean, sum_over_ranks
from .objectives import softmax_entropy

__all__ = [
    'sample_weights', 'sample_predictions', 'non_redundant', 'running_prediction',
    'fisher_information', 'fisher_penalty', 'EATAStep'
]


def sample_weights(entropy: torch.Tensor, margin: float) -> torch.Tensor:
    """EATA's weights ``1 / exp(E − E_0)`` of entropies ``E`` (any shape; detached)."""
    return torch.exp(margin - entropy.detach())


def sample_predictions(probs: torch.Tensor,
                       reliable: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each sample's prediction: the mean of ``probs`` (N, K, *) over its ``reliable`` (N, *)
    elements.

    Returns:
        tuple: ``(predictions (N, K), has_reliable (N,) bool)``; rows without reliable elements
        are 0.
    """
    n, k = probs.shape[:2]
    mask = reliable.reshape(n, 1, -1).to(probs.dtype)
    sums = (probs.reshape(n, k, -1) * mask).sum(-1)
    counts = mask.sum(-1)
    return sums / counts.clamp_min(1), counts.reshape(n) > 0


def non_redundant(predictions: torch.Tensor, running: Optional[torch.Tensor],
                  margin: Optional[float]) -> torch.Tensor:
    """(N,) bool: samples whose prediction (N, K) has ``|cos| < margin`` to the running mean
    prediction ``running`` (K,); all when there is none yet or ``margin`` is None."""
    if running is None or margin is None:
        return torch.ones(predictions.shape[0], dtype=torch.bool, device=predictions.device)
    cos = F.cosine_similarity(running.to(predictions).unsqueeze(0), predictions, dim=1)
    return cos.abs() < margin


def running_prediction(running: Optional[torch.Tensor], kept_sum: torch.Tensor, kept: float,
                       momentum: float) -> Optional[torch.Tensor]:
    """The running mean prediction after a step: ``kept_sum`` (K,) is the sum of the kept samples'
    predictions, ``kept`` their number; ``momentum`` weighs the old value (EATA: 0.9)."""
    if kept <= 0:
        return running
    mean = kept_sum / kept
    return mean if running is None else momentum * running + (1 - momentum) * mean


def fisher_penalty(params: Sequence[nn.Parameter], fisher: Sequence[torch.Tensor],
                   source: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """``α Σ_i F_i (θ_i − θ_i⁰)²`` (a differentiable scalar)."""
    total = params[0].new_zeros(())
    for p, f, s in zip(params, fisher, source):
        total = total + (f * (p - s)**2).sum()
    return alpha * total


def fisher_information(
    params: Sequence[nn.Parameter], batches: Iterable,
    logits_of: Callable[[object], Tuple[torch.Tensor,
                                        Optional[torch.Tensor]]]) -> List[torch.Tensor]:
    """EATA's diagonal Fisher information of ``params`` on ``batches``.

    Args:
        params: The tuned parameters.
        batches: Batches of a small in-distribution loader (this rank's share).
        logits_of: ``batch -> (logits (N, K, *), valid (N, *) bool or None)``, differentiable.

    Returns:
        list: ``F_i`` per parameter: the mean over all ranks' batches of the squared gradient of
        the mean cross-entropy against the argmax predictions (valid elements).
    """
    sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    count = 0
    for batch in batches:
        logits, valid = logits_of(batch)
        target = logits.detach().argmax(1)
        if valid is not None:
            target = target.masked_fill(~valid, -1)
        loss = F.cross_entropy(logits.to(compute_dtype(logits)), target, ignore_index=-1)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        for s, g in zip(sums, grads):
            if g is not None:
                s += g.detach().double()**2
        count += 1
    flat = torch.cat([s.reshape(-1) for s in sums] +
                     [torch.tensor([float(count)], dtype=torch.float64, device=sums[0].device)])
    flat = sum_over_ranks(flat)
    total = float(flat[-1])
    if total <= 0:
        raise ValueError('EATA fisher_loader gave no batch; give it in-distribution batches or '
                         'leave fisher_loader out (ETA)')
    fisher, offset = [], 0
    for p in params:
        fisher.append((flat[offset:offset + p.numel()] / total).reshape(p.shape).to(p.dtype))
        offset += p.numel()
    return fisher


class EATAStep:
    """One EATA step (module docstring) over ``params``.

    Args:
        params (list[Parameter]): The tuned parameters.
        optimizer (torch.optim.Optimizer): Over ``params``.
        margin (float): ``E_0 / ln K`` (EATA: 0.4).
        num_classes (int): ``K`` (the size of the running mean prediction).
        redundancy (float, optional): The cosine margin ``ε``; None: no redundancy filter.
        momentum (float): Weight of the old running mean prediction (EATA: 0.9).
        fisher (list[Tensor], optional): ``F`` per parameter; None: ETA.
        source (list[Tensor]): ``θ⁰`` per parameter (the source values).
        alpha (float): ``α`` of the Fisher term.

    Attributes:
        running (Tensor or None): (K,) float64 running mean prediction.
    """

    def __init__(self, params, optimizer, margin: float, num_classes: int,
                 redundancy: Optional[float], momentum: float, fisher: Optional[List[torch.Tensor]],
                 source: Sequence[torch.Tensor], alpha: float):
        self.params = list(params)
        self.optimizer = optimizer
        self.margin = margin
        self.num_classes = num_classes
        self.redundancy = redundancy
        self.momentum = momentum
        self.fisher = fisher
        self.alpha = alpha
        self.source = list(source)
        self.running: Optional[torch.Tensor] = None

    def restart(self) -> None:
        self.running = None

    def __call__(self, forward) -> Tuple[Optional[torch.Tensor], dict]:
        """Runs the step; ``forward()`` gives ``(logits (N, K, *), valid (N, *) or None)``;
        ``forward`` None on a rank without a batch (collective: every rank calls).

        Returns:
            tuple: ``(logits (detached) or None, record)``.
        """
        out = None if forward is None else forward()
        logits, loss_sum = None, None
        local = torch.zeros(6 + self.num_classes, dtype=torch.float64)
        if out is not None:
            logits, valid = out
            if logits.shape[1] != self.num_classes:
                raise ValueError(f'EATA: the logits have {logits.shape[1]} classes, '
                                 f'num_classes={self.num_classes}; pass the right num_classes')
            ent = softmax_entropy(logits, dim=1)
            valid = torch.ones_like(ent, dtype=torch.bool) if valid is None else valid
            margin = self.margin * math.log(self.num_classes)
            reliable = valid & (ent.detach() < margin)
            probs = torch.softmax(logits.detach().to(compute_dtype(logits)), dim=1)
            predictions, has_reliable = sample_predictions(probs, reliable)
            kept_samples = has_reliable & non_redundant(predictions, self.running, self.redundancy)
            kept = reliable & kept_samples.view((-1, ) + (1, ) * (reliable.dim() - 1))
            loss_sum = (sample_weights(ent, margin) * ent * kept).sum()
            local = torch.cat([
                torch.stack([
                    kept.sum(),
                    reliable.sum(),
                    valid.sum(),
                    ent.detach()[valid].sum(),
                    kept_samples.sum(),
                    has_reliable.sum()
                ]).double().cpu(), predictions[kept_samples].sum(0).double().cpu()
            ])
        total = sum_over_ranks(local.to(self.params[0].device)).cpu()
        kept_count, count = float(total[0]), max(float(total[2]), 1.0)
        if kept_count > 0:
            backward_global_mean(self.params, loss_sum, kept_count)
            if self.fisher is not None:  # after the reduction: counted once, equal on all ranks
                fisher_penalty(self.params, self.fisher, self.source, self.alpha).backward()
            self.optimizer.step()
        self.running = running_prediction(self.running, total[6:], float(total[4]), self.momentum)
        record = dict(
            entropy=float(total[3]) / count,
            selected=kept_count / count,
            reliable=float(total[1]) / count,
            samples_kept=float(total[4]),
            samples_reliable=float(total[5]))
        return None if logits is None else logits.detach(), record
