"""SAR: sharpness-aware and reliable entropy minimisation (Niu et al., "Towards Stable Test-Time
Adaptation in Dynamic Wild World", ICLR 2023, arXiv 2302.12400; authors' code mr-eggplant/SAR,
``sar.py`` and ``sam.py``).

One SAR step on a batch (``θ`` the tuned parameters, ``E(x; θ)`` the prediction entropy of an
element — a sample, or a pixel of a segmentation map —, ``E_0 = margin · ln K``):

1. reliable elements ``S_1 = {E(x; θ) < E_0}``; loss ``L_1 = mean_{S_1} E(x; θ)``; gradient ``g``;
2. SAM's perturbation (Foret et al., ``rho``, not adaptive): ``ε = ρ g / (‖g‖₂ + 1e-12)``, ``‖g‖₂``
   over all tuned parameters together; ``θ ← θ + ε``;
3. forward again at ``θ + ε``; ``S_2 = S_1 ∩ {E(x; θ + ε) < E_0}`` (the filter applied again);
   ``L_2 = mean_{S_2} E(x; θ + ε)``; its gradient ``g₂``; ``θ ← θ`` (exact copy back), then the base
   optimizer's step with ``g₂`` (SAR: SGD, momentum 0.9);
4. model recovery: ``ema ← m · ema + (1 − m) · L_2`` (the first value as is; ``m`` 0.9); below
   ``reset`` (0.2) back to the source state.

The predictions are those of the first forward (before the update). BN layers normalise with the
test batch's statistics, LN / GN with their own per-sample statistics. Differences from the
authors' code: a step whose ``S_1`` or ``S_2`` is empty changes nothing (their mean of nothing is
NaN); after a recovery the EMA restarts (their code keeps the value that triggered the reset, so it
resets again on the next batches until the loss rises).

Distributed (:mod:`mmnorm.tta.distributed`): counts and loss sums are summed over the ranks before
each mean, the gradients of both steps summed, so ``‖g‖``, ``ε``, the update and the recovery
decision are the same on every rank.
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .distributed import backward_global_mean, sum_over_ranks
from .objectives import softmax_entropy

__all__ = ['sam_perturbation', 'RecoveryMonitor', 'SARStep']

Forward = Callable[[], Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]]


@torch.no_grad()
def sam_perturbation(params: Sequence[nn.Parameter], rho: float) -> List[torch.Tensor]:
    """SAM's ascent step ``ε = ρ g / (‖g‖₂ + 1e-12)`` of every parameter's ``grad`` (None: 0),
    ``‖g‖₂`` the norm over all of them together.

    Returns:
        list: ``ε`` per parameter (shape of the parameter).
    """
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2) if grads else 0.0
    scale = rho / (norm + 1e-12)
    return [g * scale for g in grads]


class RecoveryMonitor:
    """SAR's model recovery: an EMA of the second-step loss; fires below ``threshold``.

    Args:
        threshold (float): The recovery threshold ``e_m`` (SAR: 0.2).
        momentum (float): Weight of the old value in the EMA (SAR: 0.9).
    """

    def __init__(self, threshold: float = 0.2, momentum: float = 0.9):
        self.threshold = threshold
        self.momentum = momentum
        self.ema: Optional[float] = None

    def restart(self) -> None:
        self.ema = None

    def update(self, loss: float) -> bool:
        """Feeds one second-step loss; True when the model is to be reset."""
        self.ema = loss if self.ema is None else (self.momentum * self.ema +
                                                  (1 - self.momentum) * loss)
        return self.ema < self.threshold


class SARStep:
    """One SAR step (module docstring) over ``params`` with the base ``optimizer``.

    Args:
        params (list[Parameter]): The tuned parameters.
        optimizer (torch.optim.Optimizer): The base optimizer over ``params``.
        rho (float): SAM's radius ``ρ`` (> 0).
        margin (float): ``E_0 / ln K`` (SAR: 0.4).
        recovery (RecoveryMonitor): The model-recovery rule.
    """

    def __init__(self, params, optimizer, rho: float, margin: float, recovery: RecoveryMonitor):
        self.params = list(params)
        self.optimizer = optimizer
        self.rho = rho
        self.margin = margin
        self.recovery = recovery

    def restart(self) -> None:
        """After a reset: the recovery EMA restarts."""
        self.recovery.restart()

    def __call__(self, forward: Forward) -> Tuple[Optional[torch.Tensor], dict]:
        """Runs the step; ``forward()`` gives ``(logits (N, K, *), valid (N, *) or None)`` with the
        current parameters; ``forward`` None on a rank without a batch (collective: every rank
        calls).

        Returns:
            tuple: ``(logits of the first forward (detached) or None, record)``; ``record['reset']``
            says whether the recovery rule fired (the caller resets).
        """
        out = None if forward is None else forward()
        logits = ent = first = None
        local = torch.zeros(3, dtype=torch.float64)
        if out is not None:
            logits, valid = out
            ent = softmax_entropy(logits, dim=1)
            valid = torch.ones_like(ent, dtype=torch.bool) if valid is None else valid
            margin = self.margin * math.log(logits.shape[1])
            first = valid & (ent.detach() < margin)
            local = torch.stack([first.sum(), valid.sum(), ent.detach()[valid].sum()]).double()
        total = sum_over_ranks(local.to(self.params[0].device)).cpu()
        selected, count = float(total[0]), max(float(total[1]), 1.0)
        record = dict(
            entropy=float(total[2]) / count,
            selected=selected / count,
            second=None,
            ema=self.recovery.ema,
            reset=False)
        if selected == 0:  # no reliable element on any rank: no update
            return None if logits is None else logits.detach(), record
        backward_global_mean(self.params, None if ent is None else (ent * first).sum(), selected)
        epsilon = sam_perturbation(self.params, self.rho)
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, e in zip(self.params, epsilon):
                p.add_(e)
        local = torch.zeros(2, dtype=torch.float64)
        loss_sum = None
        if out is not None:
            ent2 = softmax_entropy(forward()[0], dim=1)
            second = first & (ent2.detach() < margin)
            loss_sum = (ent2 * second).sum()
            local = torch.stack([second.sum(), ent2.detach()[second].sum()]).double()
        total = sum_over_ranks(local.to(self.params[0].device)).cpu()
        backward_global_mean(self.params, loss_sum, float(total[0]))
        with torch.no_grad():
            for p, s in zip(self.params, saved):
                p.copy_(s)
        if float(total[0]) > 0:
            self.optimizer.step()
            record['second'] = float(total[1]) / float(total[0])
            record['reset'] = self.recovery.update(record['second'])
            record['ema'] = self.recovery.ema
        return logits.detach() if logits is not None else None, record
