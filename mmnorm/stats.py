"""BN-like layers and exact per-channel statistics of their inputs (used by recalibration and analysis).

A per-channel summary is ``(count, mean, M2)``: ``count`` elements per channel, their mean and ``M2``, the sum of
squared deviations from the mean (biased variance = ``M2 / count``). Summaries merge exactly (Chan et al.), so the
result equals the statistics of ``torch.cat`` of all batches whatever the batch sizes.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

try:  # mmcv's own SyncBN (CUDA kernels; not a torch _BatchNorm subclass)
    from mmcv.ops import SyncBatchNorm as MMSyncBN
except ImportError:  # pragma: no cover - mmcv without ops
    MMSyncBN = None

__all__ = ['batch_moments', 'chan_merge', 'MomentAccumulator', 'norm_buffers', 'find_bn_layers']

Summary = Tuple[float, torch.Tensor, torch.Tensor]


def batch_moments(x: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count = N * prod(*), mean (C,), biased variance (C,))`` of ``x`` (N, C, *), fp16 / bf16 in fp32.
    BN's own statistics kernel (``torch.batch_norm_update_stats``, no running buffers): ~9x faster on CPU than
    ``torch.var_mean`` over ``(0, 2, 3)`` (1.5 vs 12.6 ms at 6x64x48x48, one thread); relative error ~1e-7."""
    count = x.numel() // max(x.shape[1], 1)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if count == 0:
        return 0, x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1])
    mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    return count, mean, var


def chan_merge(count_a: float, mean_a: torch.Tensor, m2_a: torch.Tensor, count_b: float, mean_b: torch.Tensor,
               m2_b: torch.Tensor) -> Summary:
    """Merges two per-channel ``(count, mean, M2)`` summaries (Chan et al.'s parallel variance formula).

    With ``d = mean_b - mean_a`` and ``n = count_a + count_b``: ``mean = mean_a + d * count_b / n`` and
    ``M2 = M2_a + M2_b + d^2 * count_a * count_b / n``. Means and ``M2`` have shape (C,); counts may be 0.
    """
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    count, delta = count_a + count_b, mean_b - mean_a
    return count, mean_a + delta * (count_b / count), m2_a + m2_b + delta.square() * (count_a * count_b / count)


class MomentAccumulator:
    """float64 ``(count, mean, M2)`` of one layer's input (C channels), fed batch by batch.

    Per batch only its (count, mean, biased variance) are copied (cheap inside a data loop); every ``CHUNK`` batches
    they are combined by the law of total variance and Chan-merged into the running summary.
    """
    CHUNK = 32

    def __init__(self, num_channels: int, device: Optional[torch.device] = None):
        self.num_channels = num_channels
        self._summary: Summary = (0, torch.zeros(num_channels, dtype=torch.float64, device=device),
                                  torch.zeros(num_channels, dtype=torch.float64, device=device))
        self._counts: List[int] = []
        self._means = torch.empty(self.CHUNK, num_channels, dtype=torch.float64, device=device)
        self._vars = torch.empty_like(self._means)

    def add(self, count: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Adds a batch given its element count per channel, mean (C,) and *biased* variance (C,)."""
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
        n = self._means.new_tensor(self._counts)[:, None]
        total = float(sum(self._counts))
        means, variances = self._means[:k], self._vars[:k]
        mean = (n * means).sum(0) / total
        m2 = (n * variances).sum(0) + (n * (means - mean).square()).sum(0)
        self._summary = chan_merge(*self._summary, total, mean, m2)
        self._counts = []

    def summary(self) -> Summary:
        """``(count, mean (C,), M2 (C,))`` of everything added, float64."""
        self._flush()
        return self._summary

    def pack(self) -> torch.Tensor:
        """``[count, mean..., M2...]`` as one float64 vector of length ``1 + 2 C`` (for an all-gather)."""
        count, mean, m2 = self.summary()
        return torch.cat([mean.new_tensor([float(count)]), mean, m2])

    @staticmethod
    def merge_packed(packed: Sequence[torch.Tensor], num_channels: int) -> Summary:
        """Chan-merges packed accumulators (see :meth:`pack`) in the given (rank) order."""
        count, mean, m2 = 0, None, None
        for vec in packed:
            c, mu, m = float(vec[0]), vec[1:1 + num_channels], vec[1 + num_channels:1 + 2 * num_channels]
            count, mean, m2 = (c, mu, m) if mean is None else chan_merge(count, mean, m2, c, mu, m)
        return count, mean, m2


def norm_buffers(module: nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The ``(running_mean, running_var)`` a BN-like layer normalises with in eval mode (shapes (C,)).

    A composite mmnorm layer names them with ``recalibration_buffers()`` (AdaBN: the selected domain's; RN: the
    target's; PBN: its own); a torch ``_BatchNorm`` / mmcv ``MMSyncBN`` uses its running buffers. These are the
    buffers :func:`mmnorm.recalibrate_bn` writes the target statistics into.
    """
    if callable(getattr(module, 'recalibration_buffers', None)):
        return module.recalibration_buffers()
    return getattr(module, 'running_mean', None), getattr(module, 'running_var', None)


def find_bn_layers(model: nn.Module) -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """The BN-like layers of ``model`` (``{name: module}``, registration order) and ``{name: reason}`` for the norm
    layers without batch statistics to recalibrate (IN / GN / LN, BN with ``track_running_stats=False``).

    BN-like: a module with ``recalibration_buffers()`` (its descendants are not visited: a composite layer's BN
    children are not counted twice), a torch ``_BatchNorm`` or an mmcv ``MMSyncBN`` with running statistics.
    """
    layers: Dict[str, nn.Module] = {}
    left_alone: Dict[str, str] = {}
    owners: List[str] = []  # composite BN-like layers: their descendants are skipped
    for name, module in model.named_modules():
        if any(name.startswith(owner + '.' if owner else '') for owner in owners):
            continue
        composite = callable(getattr(module, 'recalibration_buffers', None))
        if composite or isinstance(module, _BatchNorm) or (MMSyncBN is not None and isinstance(module, MMSyncBN)):
            if any(b is None for b in norm_buffers(module)):
                left_alone[name] = f'{type(module).__name__}: no running statistics'
            else:
                layers[name] = module
            if composite:
                owners.append(name)
        elif isinstance(module, (_InstanceNorm, nn.GroupNorm, nn.LayerNorm)):
            left_alone[name] = f'{type(module).__name__}: no batch statistics to recalibrate'
    return layers, left_alone
