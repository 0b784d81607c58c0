"""Cross-rank reductions of test-time adaptation: one model on every rank.

Every rank adapts on its own batches; per TENT step the ranks exchange exactly two all-reduces
(no-ops in one process): the step's counts and monitor sums (one float64 vector), then the gradients
of the tuned parameters (coalesced, one per dtype). The loss of a step is
``sum of the selected entropies on all ranks / number selected on all ranks``, so the summed
gradients are those of one process forwarding every rank's batch separately (each with its own batch
statistics) and averaging over all their selected elements; every rank then applies the same update.
A rank without a batch takes part with zeros (:meth:`mmnorm.tta.TestTimeAdapter.idle_step`), so none
waits forever.
"""
from typing import Optional, Sequence

import torch
from mmengine.dist import all_reduce, all_reduce_params, get_world_size

__all__ = [
    'is_distributed', 'sum_over_ranks', 'sum_gradients_over_ranks', 'max_over_ranks',
    'backward_global_mean'
]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return get_world_size() > 1


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over the ranks (float64; one all-reduce, a copy in one
    process)."""
    total = values.detach().double().clone()
    all_reduce(total, op='sum')  # a no-op in one process
    return total


def sum_gradients_over_ranks(params: Sequence[torch.nn.Parameter]) -> None:
    """Replaces every ``param.grad`` with its sum over the ranks (None counts as zeros); one
    coalesced all-reduce per dtype (mmengine's ``all_reduce_params``)."""
    if not is_distributed() or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_params([p.grad for p in params], op='sum')


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest ``value`` over the ranks (e.g. the number of test batches; one all-reduce)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    all_reduce(t, op='max')  # a no-op in one process
    return int(t.item())


def backward_global_mean(params: Sequence[torch.nn.Parameter], loss_sum: Optional[torch.Tensor],
                         count: float) -> None:
    """Gradients of ``Σ_ranks loss_sum / count`` (``count`` already summed over the ranks) in
    every ``param.grad``, identical on every rank: this rank's share back-propagated (None: an idle
    rank), then summed over the ranks; parameters the loss does not reach get zeros."""
    for p in params:
        p.grad = None
    if loss_sum is not None and count > 0 and loss_sum.requires_grad:
        (loss_sum / count).backward()
    sum_gradients_over_ranks(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
