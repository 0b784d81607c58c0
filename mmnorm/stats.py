"""Per-channel statistics: moments of a batch, exact merging (Chan et al.) and float64 accumulation.

Every statistic mmnorm computes goes through this module: layers and perturbations
(:func:`channel_moments`, differentiable), recalibration, ``bn_shift`` and test-time adaptation
(:func:`batch_moments`, no gradient, accumulated with :class:`MomentAccumulator`).

A per-channel summary is ``(count, mean, M2)``: ``count`` elements per channel, their mean and
``M2``, the sum of squared deviations from the mean (biased variance = ``M2 / count``). Summaries
merge exactly, so a merged result equals the statistics of ``torch.cat`` of all batches whatever the
batch sizes.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

__all__ = [
    'compute_dtype', 'channel_moments', 'batch_moments', 'chan_merge', 'merge_moments',
    'in_process_group', 'all_reduce_moments', 'MomentAccumulator'
]

Summary = Tuple[float, torch.Tensor, torch.Tensor]
Dims = Union[int, Sequence[int], None]

# The one-pass variance ``E[x^2] - mean^2`` loses about log10(E[x^2] / var) digits; above this ratio
# :func:`batch_moments` recomputes the variance in two passes (float32 keeps ~5 digits at the
# limit).
ONE_PASS_MAX_RATIO = 100.0


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics of ``x`` are computed in: float64 for float64 input, float32
    otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def channel_moments(x: torch.Tensor,
                    dims: Dims = None,
                    correction: int = 0,
                    keepdim: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``x`` over ``dims``, differentiable, in :func:`compute_dtype` with
    autocast off.

    Args:
        x (Tensor): ``(N, C, *)``.
        dims (int | Sequence[int], optional): Dimensions to reduce. Defaults to None: every
            dimension but the channels (1), i.e. BN's statistics.
        correction (int): 0 for the biased variance (what BN normalises with), 1 for the unbiased
            one. Defaults to 0.
        keepdim (bool): Keep the reduced dimensions. Defaults to False.

    Returns:
        tuple[Tensor, Tensor]: ``mean``, ``var``.
    """
    if dims is None:
        dims = [0] + list(range(2, x.dim()))
    with torch.autocast(device_type=x.device.type, enabled=False):
        var, mean = torch.var_mean(
            x.to(compute_dtype(x)), dim=dims, correction=correction, keepdim=keepdim)
    return mean, var


@torch.no_grad()
def batch_moments(x: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, mean, biased variance)`` of ``x`` ``(N, C, *)``, without gradient.

    ``count = N * prod(*)``. Per-(sample, channel) rows are reduced in one pass (sum and sum of
    squares) and merged per channel; where the one-pass variance would lose digits (a large mean, a
    constant row) the rows' variances are recomputed in two passes. Computed in
    :func:`compute_dtype`.

    Returns:
        tuple: ``count`` (int), ``mean`` (C,), ``var`` (C,).
    """
    num_channels = x.shape[1]
    count = x.numel() // max(num_channels, 1)
    rows = x.to(compute_dtype(x)).reshape(x.shape[0], num_channels, -1)  # (N, C, L)
    if count == 0:
        return 0, rows.new_zeros(num_channels), rows.new_zeros(num_channels)
    length = rows.shape[2]
    row_mean = rows.sum(2) / length
    row_mean_sq = torch.linalg.vector_norm(rows, dim=2).square() / length
    row_var = row_mean_sq - row_mean.square()
    well_conditioned = row_var * ONE_PASS_MAX_RATIO >= row_mean_sq
    if not bool(well_conditioned.all()):  # a large mean, a constant row or a non-finite value
        row_var = (rows - row_mean[..., None]).square().mean(2)
    mean = row_mean.mean(0)
    var = row_var.mean(0) + (row_mean - mean).square().mean(0)  # rows of equal size: Chan merge
    return count, mean, var


def chan_merge(count_a: float, mean_a: torch.Tensor, m2_a: torch.Tensor, count_b: float,
               mean_b: torch.Tensor, m2_b: torch.Tensor) -> Summary:
    """Merges two per-channel ``(count, mean, M2)`` summaries (Chan et al.'s parallel variance
    formula).

    With ``d = mean_b - mean_a`` and ``n = count_a + count_b``: ``mean = mean_a + d * count_b / n``
    and ``M2 = M2_a + M2_b + d^2 * count_a * count_b / n``. Means and ``M2`` have shape (C,); counts
    may be 0.
    """
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    count, delta = count_a + count_b, mean_b - mean_a
    merged_mean = mean_a + delta * (count_b / count)
    return count, merged_mean, m2_a + m2_b + delta.square() * (count_a * count_b / count)


def merge_moments(
        counts: torch.Tensor,
        mean: torch.Tensor,
        m2: torch.Tensor,
        members: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merges ``K`` summaries into ``G`` groups at once (Chan et al.), differentiable.

    Args:
        counts (Tensor): ``(K,)`` elements of each summary.
        mean (Tensor): ``(..., K)`` means.
        m2 (Tensor): ``(..., K)`` sums of squared deviations.
        members (Tensor, optional): ``(K, G)`` 0/1 matrix, ``members[k, g] = 1`` when summary ``k``
            belongs to group ``g`` (each summary in one group). Defaults to None: one group of all
            ``K``.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``counts (G,)``, ``mean (..., G)``, ``M2 (..., G)``.
    """
    counts = counts.to(mean.dtype)
    if members is None:
        members = counts.new_ones(counts.shape[0], 1)
    members = members.to(mean.dtype)
    group_counts = counts @ members
    group_mean = (mean * counts) @ members / group_counts
    spread = m2 + counts * (
        mean - group_mean @ members.t()).square()  # each summary against its group's mean
    return group_counts, group_mean, spread @ members


def in_process_group() -> bool:
    """Whether a process group of more than one rank is initialised (where
    :func:`all_reduce_moments` reduces)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) of a tensor every rank then uses: the backward sums the gradients over the
    ranks too (SyncBN's rule for its reduced sums)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


def all_reduce_moments(counts: torch.Tensor, mean: torch.Tensor,
                       m2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each of ``K`` summaries merged with the same summary of every other rank: ONE all-reduce of
    ``[counts, sums, sums of squares]`` in float64, differentiable (the backward sums the gradients
    over the ranks, as SyncBN's does). A no-op without a process group of more than one rank.

    The merged ``M2 = sum of squares - count * mean^2`` loses about ``log10(E[x^2] / var)`` of
    float64's 16 digits. A summary with ``count = 0`` on a rank contributes nothing (its NaN mean is
    ignored); one with ``count = 0`` on every rank comes back with a NaN mean and ``M2``.

    Args:
        counts (Tensor): ``(K,)`` elements of each summary on this rank.
        mean (Tensor): ``(..., K)`` means.
        m2 (Tensor): ``(..., K)`` sums of squared deviations.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``counts (K,)``, ``mean (..., K)``, ``M2 (..., K)`` over all
        ranks; float64 counts, the statistics in the dtype of ``mean``.
    """
    if not in_process_group():
        return counts.to(torch.float64), mean, m2
    counts64 = counts.to(torch.float64)
    present = counts64 > 0
    mean64 = torch.where(present, mean.to(torch.float64), 0)
    sums = mean64 * counts64
    squares = torch.where(present, m2.to(torch.float64), 0) + sums * mean64
    shape = sums.shape
    total = _SumOverRanks.apply(torch.cat([counts64, sums.flatten(), squares.flatten()]))
    k, size = counts64.numel(), sums.numel()
    counts64 = total[:k]
    merged_mean = total[k:k + size].view(shape) / counts64
    merged_m2 = total[k + size:].view(shape) - merged_mean * total[k:k + size].view(shape)
    return counts64, merged_mean.to(mean.dtype), merged_m2.clamp(min=0).to(m2.dtype)


class MomentAccumulator:
    """float64 ``(count, mean, M2)`` of one layer's input (C channels), fed batch by batch.

    Per batch only its (count, mean, biased variance) are copied; every ``CHUNK`` batches they are
    merged into the running summary (:func:`merge_moments`, then :func:`chan_merge`).
    """
    CHUNK = 32

    def __init__(self, num_channels: int, device: Optional[torch.device] = None):
        self.num_channels = num_channels
        zeros = torch.zeros(num_channels, dtype=torch.float64, device=device)
        self._summary: Summary = (0, zeros, zeros.clone())
        self._counts: List[int] = []
        self._means = torch.empty(self.CHUNK, num_channels, dtype=torch.float64, device=device)
        self._vars = torch.empty_like(self._means)

    def add(self, count: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Adds a batch given its element count per channel, mean (C,) and *biased* variance
        (C,)."""
        if count == 0:
            return
        k = len(self._counts)
        self._means[k].copy_(mean.detach())
        self._vars[k].copy_(var.detach())
        self._counts.append(count)
        if k + 1 == self.CHUNK:
            self._flush()

    def add_input(self, x: torch.Tensor) -> None:
        """Adds the moments of a layer input of shape (N, C, *)."""
        self.add(*batch_moments(x))

    def _flush(self) -> None:
        k = len(self._counts)
        if k == 0:
            return
        counts = self._means.new_tensor(self._counts)
        means = self._means[:k].t()  # (C, k)
        m2 = self._vars[:k].t() * counts
        total, mean, m2 = merge_moments(counts, means, m2)
        self._summary = chan_merge(*self._summary, float(total[0]), mean[:, 0], m2[:, 0])
        self._counts = []

    def summary(self) -> Summary:
        """``(count, mean (C,), M2 (C,))`` of everything added, float64."""
        self._flush()
        return self._summary

    def pack(self) -> torch.Tensor:
        """``[count, mean..., M2...]`` as one float64 vector of length ``1 + 2 C`` (for an
        all-gather)."""
        count, mean, m2 = self.summary()
        return torch.cat([mean.new_tensor([float(count)]), mean, m2])

    @staticmethod
    def merge_packed(packed: Sequence[torch.Tensor], num_channels: int) -> Summary:
        """Chan-merges packed accumulators (see :meth:`pack`) in the given (rank) order."""
        count, mean, m2 = 0, None, None
        for vec in packed:
            c = float(vec[0])
            mu = vec[1:1 + num_channels]
            m = vec[1 + num_channels:1 + 2 * num_channels]
            count, mean, m2 = (c, mu, m) if mean is None else chan_merge(count, mean, m2, c, mu, m)
        return count, mean, m2
