"""RN: Reciprocal Normalization.

Huang et al., "Reciprocal Normalization for Domain Adaptation", Pattern Recognition 2023 (arXiv 2112.10474).
In training every batch holds source samples followed by target samples. Each domain is normalised with its own
channel statistics mixed with statistics borrowed from the other domain:

1. per-domain mean / unbiased variance over (samples x spatial positions): ``mu_s, var_s, mu_t, var_t`` (C,);
2. channels are grouped into ``K = C / G`` super-channels (``G = 1 if C < 512 else C // 512``);
3. reciprocal compensation: ``P_st = softmax(-(m_s[k] - m_t[k'])^2, dim=1)`` over the super-channel means ``m``
   (row means of the ``K x G`` view), ``mu_{s<-t} = P_st @ M_t`` (and ``t<-s``, and the same on the variances);
4. reciprocal aggregation with four per-channel gates initialised to 1 and kept in ``gate_range`` (0.5, 1):
   ``mu~_s = g * mu_s + (1 - g) * mu_{s<-t}``, likewise for ``var~_s``, ``mu~_t``, ``var~_t``;
5. ``y_d = weight * (x_d - mu~_d) / sqrt(var~_d + eps) + bias`` (shared affine), ``y = cat(y_s, y_t)``;
6. EMA (``momentum``) of the compensated statistics into ``running_{mean,var}_{source,target}``;
7. eval: batch norm with the *target* running statistics for any input.

The source/target split is never guessed: the training wrapper declares it with
:func:`mmnorm.models.norms.domain.domain_split` (``implicit_split=True`` restores the official "first half is
source" rule). The layer is a plain ``nn.Module`` (not a ``_BatchNorm``), so mmengine's ``convert_sync_batchnorm``
/ ``revert_sync_batchnorm`` leave it alone; see ``docs/rn_uda.md`` for what that means for ``norm_eval``.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from ...validation import check_positive_int
from .degenerate import check_batch_statistics
from .domain import DomainAwareMixin, check_domain_split
from .fused_kernels import merge_samples, row_affine_grad, row_sums, rowwise_batch_norm, sample_moments
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
        raise ValueError(f'RN groups channels into super-channels of G = C // {group_channels} = {groups} '
                         f'channels, but C={num_features} is not divisible by {groups}')
    return groups


def reciprocal_compensation(stat_source: torch.Tensor, stat_target: torch.Tensor,
                            groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Compensatory statistics of each domain, borrowed from the other one (step 3).

    Args:
        stat_source (Tensor): A source statistic (mean or variance), shape (C,).
        stat_target (Tensor): The same statistic of the target part, shape (C,).
        groups (int): ``G``, channels per super-channel; the (C,) vector is viewed as ``K x G``, super-channel
            ``k`` holding channels ``k*G ... k*G + G - 1``.

    Returns:
        tuple[Tensor, Tensor]: ``(source <- target, target <- source)``, each (C,).
    """
    m_source = stat_source.reshape(-1, groups)  # K x G
    m_target = stat_target.reshape(-1, groups)
    mean_source, mean_target = m_source.mean(1), m_target.mean(1)  # K
    # P_st[k, k'] = softmax_k'(-(m_s[k] - m_t[k'])^2); P_ts is the same with the roles swapped.
    p_st = torch.softmax(-(mean_source[:, None] - mean_target[None, :]).square(), dim=1)
    p_ts = torch.softmax(-(mean_target[:, None] - mean_source[None, :]).square(), dim=1)
    return (p_st @ m_target).reshape(-1), (p_ts @ m_source).reshape(-1)


def reciprocal_statistics(mean: torch.Tensor, var: torch.Tensor, gate_mean: torch.Tensor, gate_var: torch.Tensor,
                          groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
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
    comp_mean = torch.stack(reciprocal_compensation(mean[0], mean[1], groups))
    comp_var = torch.stack(reciprocal_compensation(var[0], var[1], groups))
    return gate_mean * mean + (1 - gate_mean) * comp_mean, gate_var * var + (1 - gate_var) * comp_var


def _domain_moments(x: torch.Tensor, num_source: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-domain channel mean and unbiased variance of ``x`` (N, C, L); each (2, C).

    Per-(sample, channel) moments in one pass (:func:`~mmnorm.models.norms.fused_kernels.sample_moments`), merged
    per domain part; ``torch.batch_norm_update_stats`` and ``torch.var_mean`` are several times slower on CPU
    (tools/benchmark_rn_kernels.py, docs/benchmarks.md).
    """
    sample_mean, sample_var = sample_moments(x)
    means, variances = [], []
    for part in (slice(0, num_source), slice(num_source, None)):
        mean, var = merge_samples(sample_mean[part], sample_var[part])
        count = sample_mean[part].shape[0] * x.shape[2]
        means.append(mean)
        variances.append(var * (count / (count - 1)))
    return torch.stack(means), torch.stack(variances)


def _rows(per_domain: torch.Tensor, num_source: int, n: int) -> torch.Tensor:
    """(2, C) per-domain vectors -> (N * C,) per (sample, channel) row of the ``(1, N*C, L)`` view."""
    return torch.cat([per_domain[0].expand(num_source, -1), per_domain[1].expand(n - num_source, -1)]).reshape(-1)


def _affine_from_stats(mean, var, weight, bias, gates, eps, groups):
    """Per-domain ``y = scale * x + shift`` coefficients (2, C) plus the compensated statistics."""
    gate_mean = torch.stack([gates[0], gates[2]])
    gate_var = torch.stack([gates[1], gates[3]])
    mean_c, var_c = reciprocal_statistics(mean, var, gate_mean, gate_var, groups)
    scale = weight * torch.rsqrt(var_c + eps)
    return scale, bias - scale * mean_c, mean_c, var_c


class _ReciprocalNorm(torch.autograd.Function):
    """The two-domain normalisation with a fused backward, on the ``(1, N*C, L)`` view of the map.

    Autograd through ``var_mean``, the per-domain affine and ``cat`` costs about twice a BN. Here the forward makes
    one statistics pass and one affine pass (``y = scale * x + shift`` per (sample, channel) row: the eval
    batch-norm kernel with mean 0, variance 1 and eps 0), and the backward one reduction pass and one elementwise
    pass: ``dx = scale * dy + k1 * x + k0`` with the gradients of the (C,)-sized compensation graph folded into
    ``k1 = 2 dvar / (n - 1)``, ``k0 = dmean / n - k1 * mean`` (``n`` values per channel in the domain part).
    """

    @staticmethod
    def forward(ctx, flat, n, num_source, weight, bias, gates, eps, groups):
        # flat: (1, N*C, L) contiguous view of x; gates: (4, C) rows as GATE_NAMES.
        c = flat.shape[1] // n
        mean, var = _domain_moments(flat.view(n, c, -1), num_source)
        scale, shift, mean_c, var_c = _affine_from_stats(mean, var, weight, bias, gates, eps, groups)
        zeros, ones = flat.new_zeros(n * c), flat.new_ones(n * c)
        y = rowwise_batch_norm(flat, zeros, ones, _rows(scale, num_source, n), _rows(shift, num_source, n), 0.0)
        ctx.save_for_backward(flat, mean, var, weight, bias, gates)
        ctx.n, ctx.num_source, ctx.eps, ctx.groups = n, num_source, eps, groups
        ctx.mark_non_differentiable(mean_c, var_c)
        return y, mean_c, var_c

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        flat, mean, var, weight, bias, gates = ctx.saved_tensors
        n, num_source = ctx.n, ctx.num_source
        c = flat.shape[1] // n
        grad_y = grad_y.contiguous()
        # raw per-row sum(dy * x), sum(dy) (identity statistics), then per domain part
        sum_gx, sum_g = row_sums(grad_y, flat, flat.new_zeros(n * c), flat.new_ones(n * c), 0.0)
        sum_gx, sum_g = sum_gx.view(n, c), sum_g.view(n, c)
        grad_scale = torch.stack([sum_gx[:num_source].sum(0), sum_gx[num_source:].sum(0)])
        grad_shift = torch.stack([sum_g[:num_source].sum(0), sum_g[num_source:].sum(0)])
        # Back-propagate through the small (2, C) graph: stats -> compensation -> gates -> scale/shift.
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (mean, var, weight, bias, gates)]
            scale, shift, _, _ = _affine_from_stats(*leaves, ctx.eps, ctx.groups)
            grad_mean, grad_var, grad_w, grad_b, grad_g = torch.autograd.grad((scale, shift), leaves,
                                                                              (grad_scale, grad_shift))
        grad_x = None
        if ctx.needs_input_grad[0]:
            counts = flat.new_tensor([num_source, n - num_source])[:, None] * flat.shape[2]  # values per part
            k1 = grad_var * (2.0 / (counts - 1))
            k0 = grad_mean / counts - k1 * mean
            grad_x = row_affine_grad(grad_y, flat, *(_rows(t, num_source, n) for t in (scale.detach(), k1, k0)))
        return grad_x, None, None, grad_w, grad_b, grad_g, None, None


def _reciprocal_norm_autograd(flat: torch.Tensor, n: int, num_source: int, weight, bias, gates, eps: float,
                              groups: int):
    """What :class:`_ReciprocalNorm` computes, in plain differentiable ops (for ``torch.compile``, whose dynamo does
    not trace the Function's ``autograd.grad``; inductor fuses these passes itself)."""
    x = flat.view(n, flat.shape[1] // n, -1)
    moments = [torch.var_mean(part, dim=(0, 2), correction=1) for part in (x[:num_source], x[num_source:])]
    var, mean = torch.stack([m[0] for m in moments]), torch.stack([m[1] for m in moments])
    scale, shift, mean_c, var_c = _affine_from_stats(mean, var, weight, bias, gates, eps, groups)
    y = torch.cat([
        x[:num_source] * scale[0, :, None] + shift[0, :, None], x[num_source:] * scale[1, :, None] + shift[1, :, None]
    ])
    return y.view_as(flat), mean_c.detach(), var_c.detach()


def reciprocal_norm(x: torch.Tensor, num_source: int, weight: torch.Tensor, bias: torch.Tensor, gates: torch.Tensor,
                    eps: float = 1e-5, groups: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode RN of a [source | target] batch (steps 1-5), differentiable in ``x``, affine and gates.

    Statistics, compensation and softmax run in float32 (float64 inputs stay float64) with autocast disabled; the
    output has the input's dtype.

    Args:
        x (Tensor): ``(N, C, *)``; the first ``num_source`` samples are source, the rest target.
        num_source (int): Source samples, ``0 < num_source < N``.
        weight (Tensor): ``gamma``, shape (C,).
        bias (Tensor): ``beta``, shape (C,).
        gates (Tensor): Shape (4, C), rows ``[mean_source, var_source, mean_target, var_target]``.
        eps (float): Added to the compensated variance. Defaults to 1e-5.
        groups (int): ``G`` from :func:`rn_groups`. Defaults to 1.

    Returns:
        tuple: ``y`` (same shape/dtype as ``x``), ``mean~`` and ``var~`` ((2, C), rows ``[source, target]``,
        detached; what the running statistics average).
    """
    n, c = x.shape[:2]
    if not 0 < num_source < n:
        raise ValueError(f'RN needs source and target samples, got num_source={num_source} of a batch of {n}')
    per_channel = x[0, 0].numel()
    for name, count in (('source', num_source), ('target', n - num_source)):
        if count * per_channel < 2:
            raise ValueError(f'RN needs more than one value per channel in each domain part to estimate an '
                             f'unbiased variance; the {name} part of input {tuple(x.shape)} has {count * per_channel}')
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        flat = x.reshape(n, c, -1).to(compute_dtype).contiguous().view(1, n * c, -1)
        norm = _reciprocal_norm_autograd if torch.compiler.is_compiling() else _ReciprocalNorm.apply
        y, mean_c, var_c = norm(flat, n, num_source, weight.to(compute_dtype), bias.to(compute_dtype),
                                gates.to(compute_dtype), eps, groups)
    y = y.reshape(x.shape).to(x.dtype)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)  # as torch's BN returns channels_last maps
    return y, mean_c, var_c


@MODELS.register_module()
class RN(DomainAwareMixin, nn.Module):
    """Reciprocal Normalization layer (``type='RN'`` in a ``norm_cfg``).

    Training mode needs the batch's ``(num_source, num_target)`` split, declared by the UDA wrappers through
    :func:`~mmnorm.models.norms.domain.domain_split`. Evaluation normalises any input with the target running
    statistics.

    Args:
        num_features (int): Number of channels ``C``.
        eps (float): Added to the compensated variances. Defaults to 1e-5.
        momentum (float, optional): EMA momentum of the running statistics; None for a cumulative average (as
            ``nn.BatchNorm2d``). Defaults to 0.1.
        gate_range (tuple[float, float]): The aggregation gates are projected into this interval before every
            training forward (the official training loop clamps them to [0.5, 1] after each optimizer step, so the
            forward sees the same values). Defaults to (0.5, 1.0).
        group_channels (int): ``G = 1 if C < group_channels else C // group_channels``. Defaults to 512.
        implicit_split (bool): With no declared split, treat the first half of a training batch as source and the
            second as target (the official code's rule; the batch size must be even). Defaults to False: an
            undeclared split is an error.
        allow_single_domain (bool): Accept a declared split with an empty part (a pure source or pure target batch)
            in training: that domain is normalised with its own batch statistics (plain BN, nothing to borrow) and
            only its running statistics are updated. Defaults to False: an empty part is an error.
        device, dtype: Factory arguments of the parameters and buffers.

    Shape:
        - Input: ``(N, C, *)``, e.g. ``(N, C, H, W)`` or ``(N, C)``
        - Output: same as the input

    Parameters: ``weight``, ``bias`` (C,) shared by both domains; ``gate_mean_source``, ``gate_var_source``,
    ``gate_mean_target``, ``gate_var_target`` (C,). Buffers: ``running_mean_source``, ``running_var_source``,
    ``running_mean_target``, ``running_var_target`` (C,), ``num_batches_tracked``. A plain BN state dict
    (``weight``, ``bias``, ``running_mean``, ``running_var``) loads into it: both domains start from the BN statistics
    and the gates keep their values.
    """

    _abbr_ = 'bn'  # backbones name it bn1, bn2, ... so BN checkpoints keep their keys
    layer_path = None  # module path for messages (layer_names.name_layers)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, *,
                 gate_range: Tuple[float, float] = (0.5, 1.0), group_channels: int = 512, implicit_split: bool = False,
                 allow_single_domain: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int(num_features, 'RN num_features')
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f'RN momentum must be in [0, 1] or None, got {momentum!r}')
        if (not isinstance(gate_range, (tuple, list)) or len(gate_range) != 2
                or not 0 <= gate_range[0] <= gate_range[1] <= 1):
            raise ValueError(f'RN gate_range must be (low, high) with 0 <= low <= high <= 1, got {gate_range!r}')
        check_positive_int(group_channels, 'RN group_channels')
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.gate_range = (float(gate_range[0]), float(gate_range[1]))
        self.group_channels = group_channels
        self.groups = rn_groups(num_features, group_channels)
        self.implicit_split = implicit_split
        self.allow_single_domain = allow_single_domain
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        for name in GATE_NAMES:
            self.register_parameter(name, nn.Parameter(torch.empty(num_features, **factory)))
        for domain in ('source', 'target'):
            self.register_buffer(f'running_mean_{domain}', torch.zeros(num_features, **factory))
            self.register_buffer(f'running_var_{domain}', torch.ones(num_features, **factory))
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long, device=device))
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
        """AdaBN recalibration target (docs/design.md): the target running statistics used at eval."""
        return self.running_mean_target, self.running_var_target

    def _project_gates(self) -> None:
        # Keep every gate in gate_range. Through ``.data`` so that the (only-after-an-optimizer-step) change does not
        # bump autograd version counters; values already in range are left bit-identical.
        low, high = self.gate_range
        for name in GATE_NAMES:
            getattr(self, name).data.clamp_(low, high)

    def _resolve_split(self, batch_size: int) -> Tuple[int, int]:
        split = self.domain_split
        if split is None:
            if not self.implicit_split:
                raise ValueError(
                    f'{layer_label(self)} got a training batch of {batch_size} samples without a declared '
                    '[source | target] split; train through an mmnorm UDA wrapper (UDAEncoderDecoder, '
                    'UDACascadeEncoderDecoder, UDAFasterRCNN, UDARetinaNet, UDASingleStageDetector, ...; a model type '
                    'without one, e.g. DETR, cannot hold RN: use AdaBN there), wrap the forward in '
                    'mmnorm.domain_split(model, (n_source, n_target)), or set implicit_split=True for the official '
                    'first-half-is-source rule')
            if batch_size % 2:
                raise ValueError(f'RN(implicit_split=True) splits a training batch in halves (source, target) but '
                                 f'the batch holds an odd number of samples: {batch_size}')
            return batch_size // 2, batch_size // 2
        check_domain_split(split, batch_size, self)
        if 0 in split and not self.allow_single_domain:
            empty = 'source' if split[0] == 0 else 'target'
            raise ValueError(f'RN({self.num_features}): the {empty} part of the batch is empty (declared split '
                             f'{tuple(split)}); RN needs source and target samples in every training batch (set '
                             'allow_single_domain=True to normalise a pure one-domain batch with its own statistics)')
        return split

    def _update_running(self, domain: str, mean: torch.Tensor, var: torch.Tensor) -> None:
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        with torch.no_grad():
            getattr(self, f'running_mean_{domain}').lerp_(mean.to(self.running_mean_source.dtype), factor)
            getattr(self, f'running_var_{domain}').lerp_(var.to(self.running_var_source.dtype), factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f'RN expects input (N, {self.num_features}, *), got shape {tuple(x.shape)}')
        if not self.training:
            check_domain_split(self.domain_split, x.shape[0], self)
            return F.batch_norm(x, self.running_mean_target, self.running_var_target, self.weight, self.bias, False,
                                0.0, self.eps)
        num_source, num_target = self._resolve_split(x.shape[0])
        check_batch_statistics(self, x, (num_source, num_target))
        self._project_gates()
        self.num_batches_tracked.add_(1)
        if num_source == 0 or num_target == 0:
            return self._single_domain_forward(x, 'source' if num_target == 0 else 'target')
        y, mean_c, var_c = reciprocal_norm(x, num_source, self.weight, self.bias, self.gates, self.eps, self.groups)
        self._update_running('source', mean_c[0], var_c[0])
        self._update_running('target', mean_c[1], var_c[1])
        return y

    def _single_domain_forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """A pure one-domain batch: BN with its batch statistics (unbiased variance, as in the two-domain path)."""
        dims = [0] + list(range(2, x.dim()))
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x if x.dtype == torch.float64 else x.float()
            count = xf.numel() // xf.shape[1]
            if count < 2:
                raise ValueError(f'RN needs more than one value per channel, got input {tuple(x.shape)}')
            var, mean = torch.var_mean(xf, dim=dims, correction=1)
            y = F.batch_norm(xf, mean, var, self.weight.to(xf.dtype), self.bias.to(xf.dtype), False, 0.0, self.eps)
        self._update_running(domain, mean.detach(), var.detach())
        return y.to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A plain BN entry: both domains start from its running statistics, gates keep their current values.
        if prefix + 'running_mean' in state_dict and prefix + 'running_mean_target' not in state_dict:
            mean = state_dict.pop(prefix + 'running_mean')
            var = state_dict.pop(prefix + 'running_var', None)
            for domain in ('source', 'target'):
                state_dict[f'{prefix}running_mean_{domain}'] = mean
                if var is not None:
                    state_dict[f'{prefix}running_var_{domain}'] = var
            for name in GATE_NAMES:
                state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        state_dict.setdefault(prefix + 'num_batches_tracked', torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, gate_range={self.gate_range}, '
                f'group_channels={self.group_channels} (G={self.groups}), implicit_split={self.implicit_split}, '
                f'allow_single_domain={self.allow_single_domain}')
