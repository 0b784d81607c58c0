"""RN: Reciprocal Normalization.

Huang et al., "Reciprocal Normalization for Domain Adaptation", Pattern Recognition 2023
(arXiv 2112.10474). In training every batch holds source samples followed by target samples. Each
domain is normalised with its own channel statistics mixed with statistics borrowed from the other
domain:

1. per-domain mean / unbiased variance over (samples x spatial positions):
   ``mu_s, var_s, mu_t, var_t`` (C,);
2. channels are grouped into ``K = C / G`` super-channels (``G = 1 if C < 512 else C // 512``);
3. reciprocal compensation: ``P_st = softmax(-(m_s[k] - m_t[k'])^2, dim=1)`` over the
   super-channel means ``m`` (row means of the ``K x G`` view), ``mu_{s<-t} = P_st @ M_t`` (and
   ``t<-s``, and the same on the variances);
4. reciprocal aggregation with four per-channel gates initialised to 1 and kept in ``gate_range``
   (0.5, 1): ``mu~_s = g * mu_s + (1 - g) * mu_{s<-t}``, likewise for ``var~_s``, ``mu~_t``,
   ``var~_t``;
5. ``y_d = weight * (x_d - mu~_d) / sqrt(var~_d + eps) + bias`` (shared affine),
   ``y = cat(y_s, y_t)``;
6. EMA (``momentum``) of the compensated statistics into ``running_{mean,var}_{source,target}``;
7. eval: batch norm with the *target* running statistics for any input.

Bad values (a NaN, an Inf, or values whose variance overflows, e.g. 1e30 in float32): a
super-channel of a domain whose batch mean or variance is non-finite is excluded from the
compensation. It lends nothing (the other domain's softmax rows skip it) and borrows nothing (its
compensated statistics are its own batch statistics; a channel with a non-finite statistic is
normalised with its own mean and variance, as BN does, so an overflowed variance gives the bias as
BN's output does). The running statistics of a channel whose compensated mean or variance is
non-finite keep their previous values (the update is masked; torch's BN writes the NaN / Inf into
its buffers). Every other channel is normalised and tracked exactly as if the bad statistics were
absent: only the affected channels' outputs can be non-finite, as with BN, and the running
statistics stay finite. The softmax and the mixing run in float64 (a (K, K) graph), so finite but
large means (``(m_s - m_t)^2`` beyond float32) cannot turn a row into NaN. An empty batch (no
values) gives an empty output and changes no statistic.

The training forward is one differentiable formulation (:func:`reciprocal_norm`): the per-domain
moments of :func:`mmnorm.stats.channel_moments`, the (C,)-sized compensation graph, and one affine
map per domain part; autograd derives the backward and ``torch.compile`` fuses the passes.

Multi-process training: with ``sync_stats=True`` the per-domain sums, sums of squares and counts
of every rank are added up by one all-reduce (:func:`mmnorm.stats.all_reduce_moments`,
differentiable) before the compensation, so ``R`` processes of ``n_s + n_t`` samples normalise as
one process with the ``R n_s + R n_t`` samples ``[all sources | all targets]``. The default is per
process (the official code trains on one GPU); mmengine's ``sync_bn`` does not reach RN (below).

The source/target split is never guessed: the training wrapper declares it with
:func:`mmnorm.models.norms.domain.domain_split` (``implicit_split=True`` restores the official
"first half is source" rule). The layer is a plain ``nn.Module`` (not a ``_BatchNorm``), so
mmengine's ``convert_sync_batchnorm`` / ``revert_sync_batchnorm`` leave it alone; see
``docs/rn_uda.md`` for what that means for ``norm_eval``.
"""
from numbers import Real
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from ...stats import all_reduce_moments, channel_moments, compute_dtype, in_process_group
from ...validation import (ArgumentError, ArgumentTypeError, check_eps, check_momentum,
                           check_positive_int)
from .degenerate import check_batch_statistics
from .domain import DomainAwareMixin, check_domain_split
from .layer_names import layer_label

__all__ = ['RN', 'rn_groups', 'reciprocal_compensation', 'reciprocal_statistics', 'reciprocal_norm']

GATE_NAMES = ('gate_mean_source', 'gate_var_source', 'gate_mean_target', 'gate_var_target')


def rn_groups(num_features: int, group_channels: int = 512) -> int:
    """Channels per super-channel: ``G = 1 if C < group_channels else C // group_channels``.

    Raises:
        ValueError: ``C`` is not divisible by ``G`` (e.g. C=1100 -> G=2 is fine, C=1101 is not).
    """
    groups = 1 if num_features < group_channels else num_features // group_channels
    if num_features % groups:
        raise ArgumentError(
            f'RN groups channels into super-channels of G = C // {group_channels} = {groups} '
            f'channels, but C={num_features} is not divisible by {groups}')
    return groups


def reciprocal_compensation(
        stat_source: torch.Tensor,
        stat_target: torch.Tensor,
        groups: int,
        valid: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compensatory statistics of each domain, borrowed from the other one (step 3).

    Args:
        stat_source (Tensor): A source statistic (mean or variance), shape (C,).
        stat_target (Tensor): The same statistic of the target part, shape (C,).
        groups (int): ``G``, channels per super-channel; the (C,) vector is viewed as ``K x G``,
            super-channel ``k`` holding channels ``k*G ... k*G + G - 1``.
        valid (Tensor, optional): (2, C) bool, rows ``[source, target]``: False where a domain's
            batch statistics of a channel are non-finite. A super-channel with an invalid channel
            neither lends (its column is left out of the other domain's softmax) nor borrows (its
            compensation is its own statistic). Defaults to None: ``stat`` is finite.

    Returns:
        tuple[Tensor, Tensor]: ``(source <- target, target <- source)``, each (C,), in the dtype
        of the statistics; the softmax and the mixing run in float64.
    """
    stats = torch.stack([stat_source, stat_target])
    if valid is None:
        valid = torch.isfinite(stats)
    ok = valid.reshape(2, -1, groups).all(2)  # (2, K): super-channels that take part
    rows = torch.where(ok[..., None], stats.reshape(2, -1, groups), 0).to(torch.float64)
    means = rows.mean(2)  # (2, K), finite
    compensated = []
    for own, other in ((0, 1), (1, 0)):
        # P[k, k'] = softmax_k'(-(m_own[k] - m_other[k'])^2) over the valid k' of the other domain;
        # a row that borrows nothing gets finite dummy logits (its result is replaced below).
        logits = -(means[own][:, None] - means[other][None, :]).square()
        logits = torch.where(ok[other][None, :], logits, float('-inf'))
        borrows = ok[own] & ok[other].any()  # (K,)
        logits = torch.where(borrows[:, None], logits, 0.0)
        mixed = (torch.softmax(logits, dim=1) @ rows[other]).to(stats.dtype)  # (K, G)
        own_rows = stats[own].reshape(-1, groups)
        compensated.append(torch.where(borrows[:, None], mixed, own_rows).reshape(-1))
    return compensated[0], compensated[1]


def reciprocal_statistics(mean: torch.Tensor, var: torch.Tensor, gate_mean: torch.Tensor,
                          gate_var: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compensated statistics ``mu~``, ``var~`` of both domains (steps 3 and 4).

    Args:
        mean (Tensor): Batch means, shape (2, C), rows ``[source, target]``.
        var (Tensor): Batch (unbiased) variances, shape (2, C).
        gate_mean (Tensor): Gates of the means, shape (2, C), rows ``[source, target]``.
        gate_var (Tensor): Gates of the variances, shape (2, C).
        groups (int): ``G`` from :func:`rn_groups`.

    Returns:
        tuple[Tensor, Tensor]: ``mean~`` and ``var~``, each (2, C) with rows ``[source, target]``.
    """
    valid = torch.isfinite(mean) & torch.isfinite(var)  # (2, C): bad statistics are left out
    # Zeros in place of the bad statistics, so that no NaN enters the gates' graph (forward or
    # backward); a channel with a non-finite statistic keeps its own mean and variance.
    mean_ok, var_ok = torch.where(valid, mean, 0), torch.where(valid, var, 0)
    comp_mean = torch.stack(reciprocal_compensation(mean_ok[0], mean_ok[1], groups, valid))
    comp_var = torch.stack(reciprocal_compensation(var_ok[0], var_ok[1], groups, valid))
    mean_c = torch.where(valid, gate_mean * mean_ok + (1 - gate_mean) * comp_mean, mean)
    var_c = torch.where(valid, gate_var * var_ok + (1 - gate_var) * comp_var, var)
    return mean_c, var_c


def _normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with (C,) vectors, as ``x * scale + shift``
    (differentiable in the statistics too, unlike eval-mode ``F.batch_norm``)."""
    scale = weight * torch.rsqrt(var + eps)
    shape = (1, -1) + (1, ) * (x.dim() - 2)
    return x * scale.view(shape) + (bias - mean * scale).view(shape)


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the dtype of ``x``, channels_last where ``x`` is (as torch's BN returns it)."""
    y = y.to(x.dtype)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def reciprocal_norm(x: torch.Tensor,
                    num_source: int,
                    weight: torch.Tensor,
                    bias: torch.Tensor,
                    gates: torch.Tensor,
                    eps: float = 1e-5,
                    groups: int = 1,
                    sync: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode RN of a [source | target] batch (steps 1-5), differentiable in ``x``, affine and
    gates.

    Statistics run in float32 (float64 inputs stay float64), the compensation's softmax and mixing
    in float64, with autocast disabled; the output has the input's dtype. Non-finite statistics are
    left out of the compensation (module docstring).

    Args:
        x (Tensor): ``(N, C, *)``; the first ``num_source`` samples are source, the rest target.
        num_source (int): Source samples, ``0 < num_source < N``.
        weight (Tensor): ``gamma``, shape (C,).
        bias (Tensor): ``beta``, shape (C,).
        gates (Tensor): Shape (4, C), rows ``[mean_source, var_source, mean_target, var_target]``.
        eps (float): Added to the compensated variance. Defaults to 1e-5.
        groups (int): ``G`` from :func:`rn_groups`. Defaults to 1.
        sync (bool): Pool each domain's statistics over the ranks of the process group
            (:func:`synced_domain_moments`); a domain part may then be empty on this rank. Defaults
            to False.

    Returns:
        tuple: ``y`` (same shape/dtype as ``x``), ``mean~`` and ``var~`` ((2, C), rows
        ``[source, target]``, detached; what the running statistics average).
    """
    n = x.shape[0]
    if not (0 <= num_source <= n if sync else 0 < num_source < n):
        raise ValueError(f'RN needs source and target samples, got num_source={num_source} of a '
                         f'batch of {n}')
    per_channel = x[0, 0].numel()
    for name, count in () if sync else (('source', num_source), ('target', n - num_source)):
        if count * per_channel < 2:
            raise ValueError(f'RN needs more than one value per channel in each domain part to '
                             f'estimate an unbiased variance; the {name} part of input '
                             f'{tuple(x.shape)} has {count * per_channel}')
    dtype = compute_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        parts = x.to(dtype).split([num_source, n - num_source])
        if sync:
            mean, var = synced_domain_moments(parts)
        else:
            moments = [channel_moments(part, correction=1) for part in parts]
            mean = torch.stack([m for m, _ in moments])  # (2, C), rows [source, target]
            var = torch.stack([v for _, v in moments])
        gates = gates.to(dtype)  # rows as GATE_NAMES: means at 0 and 2, variances at 1 and 3
        mean_c, var_c = reciprocal_statistics(mean, var, gates[0::2], gates[1::2], groups)
        weight, bias = weight.to(dtype), bias.to(dtype)
        y = torch.cat([
            _normalize(part, mean_c[d], var_c[d], weight, bias, eps) for d, part in enumerate(parts)
        ])
    return _like_input(y, x), mean_c.detach(), var_c.detach()


def synced_domain_moments(
        parts: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-domain mean and unbiased variance of the ``[source, target]`` parts pooled over the
    ranks (one :func:`mmnorm.stats.all_reduce_moments`), differentiable.

    A part may be empty on this rank. A domain empty on every rank (or with one value per channel)
    gets NaN statistics, which :func:`reciprocal_statistics` leaves out of the compensation (the
    other domain is normalised with its own statistics) and the running update skips.

    Returns:
        tuple[Tensor, Tensor]: ``mean``, ``var``, each (2, C), rows ``[source, target]``.
    """
    num_channels = parts[0].shape[1]
    counts, means, m2s = [], [], []
    for part in parts:
        count = part.numel() // num_channels
        if count:
            mean, var = channel_moments(part)
        else:
            mean = var = part.new_full((num_channels, ), float('nan'))
        counts.append(count)
        means.append(mean)
        m2s.append(var * count)
    counts_t = torch.tensor(counts, dtype=torch.float64, device=parts[0].device)
    counts_t, mean, m2 = all_reduce_moments(counts_t, torch.stack(means, 1), torch.stack(m2s, 1))
    return mean.t(), (m2 / (counts_t - 1).to(m2.dtype)).t()


@MODELS.register_module()
class RN(DomainAwareMixin, nn.Module):
    """Reciprocal Normalization layer (``type='RN'`` in a ``norm_cfg``).

    Training mode needs the batch's ``(num_source, num_target)`` split, declared by the UDA wrappers
    through :func:`~mmnorm.models.norms.domain.domain_split`. Evaluation normalises any input with
    the target running statistics.

    Args:
        num_features (int): Number of channels ``C``.
        eps (float): Added to the compensated variances, > 0. Defaults to 1e-5.
        momentum (float, optional): EMA momentum of the running statistics, in [0, 1]; None for a
            cumulative average (as ``nn.BatchNorm2d``). Defaults to 0.1.
        gate_range (tuple[float, float]): The aggregation gates are projected into this interval
            before every training forward (the official training loop clamps them to [0.5, 1]
            after each optimizer step, so the forward sees the same values). Defaults to (0.5, 1.0).
        group_channels (int): ``G = 1 if C < group_channels else C // group_channels``.
            Defaults to 512.
        implicit_split (bool): With no declared split, treat the first half of a training batch as
            source and the second as target (the official code's rule; the batch size must be
            even). Defaults to False: an undeclared split is an error.
        allow_single_domain (bool): Accept a declared split with an empty part (a pure source or
            pure target batch) in training: that domain is normalised with its own batch
            statistics (plain BN, nothing to borrow) and only its running statistics are updated.
            Defaults to False: an empty part is an error.
        sync_stats (bool): In a process group of several ranks, pool each domain's batch
            statistics over the ranks (one all-reduce per forward, differentiable) so that the
            ranks normalise as one batch; a no-op in one process. Defaults to False: per process,
            as the official single-GPU code (mmengine's ``sync_bn`` does not convert RN).
        device, dtype: Factory arguments of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, e.g. ``(N, C, H, W)`` or ``(N, C)``
        - Output: same as the input

    Parameters: ``weight``, ``bias`` (C,) shared by both domains; ``gate_mean_source``,
    ``gate_var_source``, ``gate_mean_target``, ``gate_var_target`` (C,). Buffers:
    ``running_mean_source``, ``running_var_source``, ``running_mean_target``,
    ``running_var_target`` (C,), ``num_batches_tracked``. A plain BN state dict (``weight``,
    ``bias``, ``running_mean``, ``running_var``) loads into it: both domains start from the BN
    statistics and the gates keep their values.
    """

    _abbr_ = 'bn'  # backbones name it bn1, bn2, ... so BN checkpoints keep their keys
    layer_path = None  # module path for messages (layer_names.name_layers)

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 *,
                 gate_range: Tuple[float, float] = (0.5, 1.0),
                 group_channels: int = 512,
                 implicit_split: bool = False,
                 allow_single_domain: bool = False,
                 sync_stats: bool = False,
                 device=None,
                 dtype=None):
        super().__init__()
        check_positive_int(num_features, 'RN num_features')
        eps = check_eps(eps, 'RN')
        momentum = check_momentum(momentum, 'RN')
        if (not isinstance(gate_range, (tuple, list)) or len(gate_range) != 2
                or not all(isinstance(g, Real) and not isinstance(g, bool) for g in gate_range)
                or not 0 <= gate_range[0] <= gate_range[1] <= 1):
            raise ArgumentError('RN gate_range must be (low, high) with 0 <= low <= high <= 1, '
                                f'got {gate_range!r}')
        check_positive_int(group_channels, 'RN group_channels')
        if not isinstance(sync_stats, bool):
            raise ArgumentTypeError(f'RN sync_stats must be True or False, got {sync_stats!r}')
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.gate_range = (float(gate_range[0]), float(gate_range[1]))
        self.group_channels = group_channels
        self.groups = rn_groups(num_features, group_channels)
        self.implicit_split = implicit_split
        self.allow_single_domain = allow_single_domain
        self.sync_stats = sync_stats
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        for name in GATE_NAMES:
            self.register_parameter(name, nn.Parameter(torch.empty(num_features, **factory)))
        for domain in ('source', 'target'):
            self.register_buffer(f'running_mean_{domain}', torch.zeros(num_features, **factory))
            self.register_buffer(f'running_var_{domain}', torch.ones(num_features, **factory))
        self.register_buffer('num_batches_tracked',
                             torch.tensor(0, dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        for domain in ('source', 'target'):
            getattr(self, f'running_mean_{domain}').zero_()
            getattr(self, f'running_var_{domain}').fill_(1)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        for name in GATE_NAMES:
            nn.init.ones_(getattr(self, name))

    @property
    def gates(self) -> torch.Tensor:
        """The four gates stacked, shape (4, C), rows in the order of ``GATE_NAMES``."""
        return torch.stack([getattr(self, name) for name in GATE_NAMES])

    def recalibration_buffers(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """AdaBN recalibration target (docs/design.md): the target running statistics used at
        eval."""
        return self.running_mean_target, self.running_var_target

    def _project_gates(self) -> None:
        # Keep every gate in gate_range. Through ``.data`` so that the (only-after-an-optimizer-
        # step) change does not bump autograd version counters; values already in range are left
        # bit-identical.
        low, high = self.gate_range
        for name in GATE_NAMES:
            getattr(self, name).data.clamp_(low, high)

    def _resolve_split(self, batch_size: int) -> Tuple[int, int]:
        split = self.domain_split
        if split is None:
            if not self.implicit_split:
                raise ValueError(
                    f'{layer_label(self)} got a training batch of {batch_size} samples without a '
                    'declared [source | target] split; train through an mmnorm UDA wrapper '
                    '(UDAEncoderDecoder, UDACascadeEncoderDecoder, UDAFasterRCNN, UDARetinaNet, '
                    'UDASingleStageDetector, ...; a model type without one, e.g. DETR, cannot '
                    'hold RN: use AdaBN there), wrap the forward in '
                    'mmnorm.domain_split(model, (n_source, n_target)), or set '
                    'implicit_split=True for the official first-half-is-source rule')
            if batch_size % 2:
                raise ValueError('RN(implicit_split=True) splits a training batch in halves '
                                 '(source, target) but the batch holds an odd number of samples: '
                                 f'{batch_size}')
            return batch_size // 2, batch_size // 2
        check_domain_split(split, batch_size, self)
        if 0 in split and batch_size > 0 and not self.allow_single_domain:
            empty = 'source' if split[0] == 0 else 'target'
            raise ValueError(f'RN({self.num_features}): the {empty} part of the batch is empty '
                             f'(declared split {tuple(split)}); RN needs source and target '
                             'samples in every training batch (set allow_single_domain=True to '
                             'normalise a pure one-domain batch with its own statistics)')
        return split

    def _update_running(self, domain: str, mean: torch.Tensor, var: torch.Tensor) -> None:
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        with torch.no_grad():
            running_mean = getattr(self, f'running_mean_{domain}')
            running_var = getattr(self, f'running_var_{domain}')
            mean, var = mean.to(running_mean.dtype), var.to(running_var.dtype)
            # Channels with a non-finite statistic keep their running statistics (module doc).
            finite = torch.isfinite(mean) & torch.isfinite(var)
            running_mean.copy_(torch.where(finite, running_mean.lerp(mean, factor), running_mean))
            running_var.copy_(torch.where(finite, running_var.lerp(var, factor), running_var))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f'RN expects input (N, {self.num_features}, *), '
                             f'got shape {tuple(x.shape)}')
        if not self.training:
            check_domain_split(self.domain_split, x.shape[0], self)
            return F.batch_norm(x, self.running_mean_target, self.running_var_target, self.weight,
                                self.bias, False, 0.0, self.eps)
        num_source, num_target = self._resolve_split(x.shape[0])
        if x.numel() == 0:  # an empty batch: an empty output, no statistic changes (as BN)
            return F.batch_norm(x, self.running_mean_target, self.running_var_target, self.weight,
                                self.bias, False, 0.0, self.eps)
        sync = self.sync_stats and in_process_group()
        if not sync:  # synchronised statistics pool every rank's values
            check_batch_statistics(self, x, (num_source, num_target))
        self._project_gates()
        self.num_batches_tracked.add_(1)
        if (num_source == 0 or num_target == 0) and not sync:
            return self._single_domain_forward(x, 'source' if num_target == 0 else 'target')
        y, mean_c, var_c = reciprocal_norm(x, num_source, self.weight, self.bias, self.gates,
                                           self.eps, self.groups, sync)
        self._update_running('source', mean_c[0], var_c[0])
        self._update_running('target', mean_c[1], var_c[1])
        return y

    def _single_domain_forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """A pure one-domain batch: normalised with its own batch statistics (unbiased variance, as
        in the two-domain path, and differentiable in them), nothing to borrow."""
        if x.numel() // x.shape[1] < 2:
            raise ValueError(f'RN needs more than one value per channel, got input '
                             f'{tuple(x.shape)}')
        dtype = compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            mean, var = channel_moments(x, correction=1)
            y = _normalize(
                x.to(dtype), mean, var, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        self._update_running(domain, mean.detach(), var.detach())
        return _like_input(y, x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain BN entry: both domains start from its running statistics, gates keep their
        # current values.
        if (prefix + 'running_mean' in state_dict
                and prefix + 'running_mean_target' not in state_dict):
            mean = state_dict.pop(prefix + 'running_mean')
            var = state_dict.pop(prefix + 'running_var', None)
            for domain in ('source', 'target'):
                state_dict[f'{prefix}running_mean_{domain}'] = mean
                if var is not None:
                    state_dict[f'{prefix}running_var_{domain}'] = var
            for name in GATE_NAMES:
                state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        state_dict.setdefault(prefix + 'num_batches_tracked', torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, '
                f'gate_range={self.gate_range}, group_channels={self.group_channels} '
                f'(G={self.groups}), implicit_split={self.implicit_split}, '
                f'allow_single_domain={self.allow_single_domain}, sync_stats={self.sync_stats}')
