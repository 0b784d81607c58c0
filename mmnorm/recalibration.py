"""AdaBN: re-estimate the statistics of every BN layer on target-domain data.

Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation" (arXiv 1603.04779). Every weight is
kept; each BN layer's running mean / variance is replaced by the statistics of its input over the *whole* target
set (all samples x all spatial positions). :func:`recalibrate_bn` computes them exactly:

* per batch, the per-channel mean and biased variance of the layer input (one fp32 ``var_mean``, or the BN's own
  train-mode batch statistics) are combined in float64 into a ``(count, mean, M2)`` summary (law of total
  variance within chunks of batches, Chan's formula :func:`chan_merge` between chunks and ranks), so the result
  equals the mean / variance of ``torch.cat`` of all features whatever the batch sizes;
* in a distributed run every rank all-gathers the accumulators of all ranks once per pass and merges them in rank
  order (count-weighted), so all ranks write identical buffers equal to the single-process result on the union
  of the shards; ranks may see different numbers of batches (no collective runs inside the data loop);
* ``running_var`` receives the *unbiased* pooled variance ``M2 / (n - 1)`` (torch's convention for BN buffers).

BN-like layers (:func:`find_bn_layers`): every torch ``_BatchNorm`` (``BatchNorm*d``, ``SyncBatchNorm``,
``_BatchNormXd``), mmcv's ``MMSyncBN``, and any module implementing ``recalibration_buffers() -> (running_mean,
running_var)`` (mmnorm's AdaBN / RN / PBN; their BN children are not recalibrated a second time). InstanceNorm,
GroupNorm and LayerNorm have nothing to recalibrate and are listed in the log.

Two orders (``mode``):

* ``'one_pass'`` (AdaBN paper, and what public tools do): one pass over the data; every BN-like layer normalises
  with the current batch's statistics (as in train mode) while its input statistics are accumulated.
  Plain torch BN runs in train mode with ``momentum=1`` and the batch statistics are read back from its buffers
  (no extra work); SyncBN / MMSyncBN / composite layers run in eval mode with the batch statistics written into
  their buffers just before they normalise (no cross-rank collective, works on CPU).
* ``'layerwise'``: one pass per layer in execution order; every layer runs in eval mode, the layers before the
  measured one already hold their final target statistics. The result does not depend on the batch size (the
  one-pass result does, through the batch-statistics normalisation of earlier layers), at ``L`` times the cost.

Padded samples: mmengine's ``DefaultSampler(round_up=True)`` and torch's ``DistributedSampler(drop_last=False)``
repeat the first samples at the end of the global order so every rank gets as many; those repeats are the last
samples of some ranks' shards. :func:`real_samples_on_rank` knows this and the loop measures only the real ones.
A custom sampler tells its real count with an attribute ``num_real_samples`` (this rank's real samples, padding
after them).
"""
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.dist import all_gather, get_dist_info
from mmengine.logging import print_log
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.utils import ProgressBar
from torch.nn.modules.batchnorm import SyncBatchNorm, _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ['recalibrate_bn', 'RecalibrationResult', 'chan_merge', 'batch_moments', 'find_bn_layers',
           'real_samples_on_rank', 'MODES']

MODES = ('one_pass', 'layerwise')

try:  # mmcv's own SyncBN (CUDA kernels; not a torch _BatchNorm subclass)
    from mmcv.ops import SyncBatchNorm as MMSyncBN
except ImportError:  # pragma: no cover - mmcv without ops
    MMSyncBN = None


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
def chan_merge(count_a: float, mean_a: torch.Tensor, m2_a: torch.Tensor, count_b: float, mean_b: torch.Tensor,
               m2_b: torch.Tensor) -> Tuple[float, torch.Tensor, torch.Tensor]:
    """Merges two per-channel ``(count, mean, M2)`` summaries (Chan et al.'s parallel variance formula).

    ``M2`` is the sum of squared deviations from the mean (biased variance = ``M2 / count``). With
    ``d = mean_b - mean_a`` and ``n = count_a + count_b``: ``mean = mean_a + d * count_b / n`` and
    ``M2 = M2_a + M2_b + d^2 * count_a * count_b / n``.

    Args:
        count_a (float): Elements per channel summarised by ``a`` (may be 0).
        mean_a (Tensor): Shape (C,).
        m2_a (Tensor): Shape (C,).
        count_b, mean_b, m2_b: The same for ``b``.

    Returns:
        tuple: ``(count, mean, M2)`` of the union.
    """
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    count = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta.square() * (count_a * count_b / count)
    return count, mean, m2


def batch_moments(x: torch.Tensor) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Per-channel ``(count, mean, biased variance)`` of a BN input.

    Args:
        x (Tensor): Shape (N, C, *) (any number of trailing spatial dims, none for 1-D BN).

    Returns:
        tuple: ``count = N * prod(*)`` (int), ``mean`` (C,) and ``var`` (C,), float32 (fp16/bf16 inputs are
        reduced in fp32).
    """
    dims = [0] + list(range(2, x.dim()))
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    var, mean = torch.var_mean(x, dim=dims, correction=0)
    return x.numel() // max(x.shape[1], 1), mean, var


class _Accumulator:
    """float64 ``(count, mean, M2)`` of one layer's input, fed batch by batch.

    Per batch only the (count, mean, biased variance) are copied into a float64 buffer (cheap inside the data
    loop); every ``CHUNK`` batches they are combined exactly by the law of total variance,
    ``M2 = sum_k n_k var_k + sum_k n_k (mean_k - mean)^2``, and Chan-merged into the running summary.
    """
    CHUNK = 32

    def __init__(self, num_channels: int, device: torch.device):
        self.count = 0
        self.mean = torch.zeros(num_channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(num_channels, dtype=torch.float64, device=device)
        self._counts: List[int] = []
        self._means = torch.empty(self.CHUNK, num_channels, dtype=torch.float64, device=device)
        self._vars = torch.empty_like(self._means)

    def add(self, count: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Adds a batch given its element count, mean and *biased* variance."""
        if count == 0:
            return
        k = len(self._counts)
        self._means[k].copy_(mean.detach())
        self._vars[k].copy_(var.detach())
        self._counts.append(count)
        if k + 1 == self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        k = len(self._counts)
        if k == 0:
            return
        n = self._means.new_tensor(self._counts)[:, None]
        total = float(sum(self._counts))
        means, variances = self._means[:k], self._vars[:k]
        mean = (n * means).sum(0) / total
        m2 = (n * variances).sum(0) + (n * (means - mean).square()).sum(0)
        self.count, self.mean, self.m2 = chan_merge(self.count, self.mean, self.m2, total, mean, m2)
        self._counts = []

    def pack(self) -> torch.Tensor:
        """``[count, mean..., M2...]`` as one float64 vector (for the all-gather)."""
        self._flush()
        return torch.cat([self.mean.new_tensor([float(self.count)]), self.mean, self.m2])

    @staticmethod
    def merge_packed(packed: Sequence[torch.Tensor], num_channels: int) -> Tuple[float, torch.Tensor,
                                                                                torch.Tensor]:
        """Chan-merges packed accumulators in the given (rank) order."""
        count, mean, m2 = 0, None, None
        for vec in packed:
            c, mu, m = float(vec[0]), vec[1:1 + num_channels], vec[1 + num_channels:1 + 2 * num_channels]
            if mean is None:
                count, mean, m2 = c, mu, m
            else:
                count, mean, m2 = chan_merge(count, mean, m2, c, mu, m)
        return count, mean, m2


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
def _is_torch_bn(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm) or (MMSyncBN is not None and isinstance(module, MMSyncBN))


def find_bn_layers(model: nn.Module) -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """Finds the layers :func:`recalibrate_bn` recalibrates and the norm layers it leaves alone.

    A module with a ``recalibration_buffers`` method is BN-like and its descendants are not visited (a composite
    layer's BN children are not recalibrated twice). Otherwise torch ``_BatchNorm`` subclasses and mmcv
    ``MMSyncBN`` with running statistics are BN-like.

    Args:
        model (nn.Module): The (unwrapped) model.

    Returns:
        tuple: ``(layers, left_alone)``: ``{name: module}`` in registration order, and ``{name: reason}`` for
        InstanceNorm / GroupNorm / LayerNorm and BN layers without running statistics.
    """
    layers: Dict[str, nn.Module] = {}
    left_alone: Dict[str, str] = {}
    owners: List[str] = []  # names of composite BN-like layers: their descendants are skipped
    for name, module in model.named_modules():
        if any(name.startswith(owner + '.' if owner else '') for owner in owners):
            continue
        if callable(getattr(module, 'recalibration_buffers', None)):
            mean, var = module.recalibration_buffers()
            if mean is None or var is None:
                left_alone[name] = f'{type(module).__name__}: no running statistics'
            else:
                layers[name] = module
            owners.append(name)
        elif _is_torch_bn(module):
            if module.track_running_stats and module.running_mean is not None:
                layers[name] = module
            else:
                left_alone[name] = f'{type(module).__name__}: track_running_stats=False'
        elif isinstance(module, (_InstanceNorm, nn.GroupNorm, nn.LayerNorm)):
            left_alone[name] = f'{type(module).__name__}: no batch statistics to recalibrate'
    return layers, left_alone


def _buffers(module: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``(running_mean, running_var)`` the target statistics of ``module``'s input are written into."""
    if callable(getattr(module, 'recalibration_buffers', None)):
        return module.recalibration_buffers()
    return module.running_mean, module.running_var


def _reads_own_batch_stats(module: nn.Module) -> bool:
    """Plain torch BN: run it in train mode with momentum 1 and read its batch statistics back (one-pass mode).

    SyncBN (a collective per call, GPU-only in training), MMSyncBN and composite layers instead run in eval mode
    with the batch statistics injected into their buffers.
    """
    return (isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm)
            and not callable(getattr(module, 'recalibration_buffers', None)))


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def real_samples_on_rank(data_loader: Any) -> Optional[int]:
    """How many of this rank's samples are real (not padding repeats), or None if nothing says so.

    Sources, in order: ``data_loader.sampler.num_real_samples`` (a custom sampler's own statement); mmengine
    ``DefaultSampler(round_up=True)`` and torch ``DistributedSampler(drop_last=False)``, which deal the global order
    ``rank, rank + W, ...`` and pad it at the end, so rank ``r`` holds ``len(range(r, len(dataset), W))`` real
    samples followed by its padding.
    """
    sampler = getattr(data_loader, 'sampler', None)
    if sampler is None:
        return None
    declared = getattr(sampler, 'num_real_samples', None)
    if declared is not None:
        return int(declared)
    dataset = getattr(sampler, 'dataset', None)
    if dataset is None:
        return None
    from mmengine.dataset import DefaultSampler
    from torch.utils.data import DistributedSampler
    if isinstance(sampler, DefaultSampler) and sampler.round_up:
        return len(range(sampler.rank, len(dataset), sampler.world_size))
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
        return len(range(sampler.rank, len(dataset), sampler.num_replicas))
    return None


def _batch_size(batch: Any) -> int:
    """Samples in a batch: a tensor, a ``(inputs, ...)`` sequence, or an mmengine data dict (``inputs``)."""
    if isinstance(batch, dict) and 'inputs' in batch:  # mmengine: a batched tensor or a list of samples
        inputs = batch['inputs']
        return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)
    if isinstance(batch, (list, tuple)) and batch:  # (inputs, targets, ...)
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    raise TypeError(f'recalibrate_bn cannot tell the batch size of a {type(batch).__name__} batch; expected a '
                    'tensor, a (inputs, targets) tuple or an mmengine data dict with "inputs"')


def _forward(model: nn.Module, batch: Any, device: torch.device) -> None:
    """Forwards one batch: mmengine models through their data preprocessor in ``tensor`` mode, others on the
    tensor (or the first element of a tuple / list, as ``torch.optim.swa_utils.update_bn`` does)."""
    if isinstance(model, BaseModel):
        data = model.data_preprocessor(batch, False)
        if isinstance(data, dict):
            model(**data, mode='tensor')
        elif isinstance(data, (list, tuple)):
            model(*data, mode='tensor')
        else:
            model(data, mode='tensor')
        return
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'recalibrate_bn: a plain nn.Module needs tensor batches (or (tensor, ...) tuples), got '
                        f'{type(x).__name__}')
    model(x.to(device))


@dataclass
class RecalibrationResult:
    """What :func:`recalibrate_bn` did.

    Attributes:
        layers (list[str]): Recalibrated layers (module names).
        samples (int): Real samples measured, summed over ranks.
        batches (int): Batches forwarded on this rank (per pass).
        left_alone (dict): ``{name: reason}`` of norm layers not recalibrated (IN/GN/LN, no running stats, not
            reached by the forward).
        stages (dict): ``{stage: (layers, mean |d mean|, mean |d std|)}``, a stage being the first two components
            of the module name (e.g. ``backbone.layer1``).
    """
    layers: List[str] = field(default_factory=list)
    samples: int = 0
    batches: int = 0
    left_alone: Dict[str, str] = field(default_factory=dict)
    stages: Dict[str, Tuple[int, float, float]] = field(default_factory=dict)


class _Pass:
    """Per-batch bookkeeping shared by the layer hooks: how many leading samples of the batch are real."""

    def __init__(self):
        self.batch_size = 0
        self.valid = 0
        self.partial_warned = set()
        self.one_value = set()  # layers whose current call sees one value per channel

    def measured_part(self, name: str, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``x`` restricted to the real samples (None: all of ``x``)."""
        if self.valid >= self.batch_size:
            return None
        if x.shape[0] == self.batch_size:
            return x[:self.valid]
        if name not in self.partial_warned:  # e.g. RoI features: samples cannot be told apart
            self.partial_warned.add(name)
            warnings.warn(f'recalibrate_bn: {name} sees {x.shape[0]} rows for a batch of {self.batch_size} samples '
                          f'of which {self.valid} are real; padded samples cannot be excluded for this layer')
        return None


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def recalibrate_bn(model: nn.Module, data_loader: Iterable, num_iters: Optional[int] = None, *,
                   num_samples: Optional[int] = None, mode: str = 'one_pass', progress: bool = True,
                   logger: Optional[str] = 'current') -> RecalibrationResult:
    """Writes the exact statistics of ``data_loader``'s data into every BN-like layer of ``model`` (AdaBN).

    Only the BN-like layers change mode for the pass (other layers, e.g. dropout, stay as they are; ``norm_eval`` /
    frozen-stage locks are bypassed by setting the layers' mode directly). Modes, momenta, hooks, and on failure
    the buffers, are restored in ``finally``. Every rank must call it (it all-gathers once per pass).

    Args:
        model (nn.Module): A plain module fed tensors, or an mmengine ``BaseModel`` fed data dicts (its
            ``data_preprocessor`` runs, then ``forward(mode='tensor')``). Model wrappers (DDP) are unwrapped.
        data_loader (Iterable): Batches: tensors, ``(inputs, ...)`` tuples, or mmengine data dicts.
            ``'layerwise'`` iterates it once per layer, so it must be re-iterable (e.g. a ``DataLoader``).
        num_iters (int, optional): Batches per rank per pass; None: the whole loader. Fewer available: warning.
        num_samples (int, optional): Samples to use, summed over ranks (rank ``r`` measures at most
            ``len(range(r, num_samples, world_size))``: the first ``num_samples`` of a sharded global order).
            None: all. Fewer available: warning.
        mode (str): ``'one_pass'`` or ``'layerwise'`` (see the module docstring). Defaults to ``'one_pass'``.
        progress (bool): Progress bar on rank 0. Defaults to True.
        logger (str, optional): ``print_log`` logger for the summary; None: no summary. Defaults to ``'current'``.

    Returns:
        RecalibrationResult: Recalibrated layers, samples, per-stage mean absolute changes.

    Raises:
        ValueError: Bad ``num_iters`` / ``num_samples`` / ``mode``; no samples on any rank.
        TypeError: ``data_loader`` is not an iterable of batches.
        RuntimeError: The pass failed on another rank.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    for arg, value in (('num_iters', num_iters), ('num_samples', num_samples)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f'{arg} must be a positive int or None, got {value!r}')
    if (isinstance(data_loader, (str, bytes, dict, torch.Tensor, nn.Module))
            or not hasattr(data_loader, '__iter__')):
        raise TypeError('data_loader must be an iterable of batches (e.g. a torch DataLoader), got '
                        f'{type(data_loader).__name__}')
    if mode == 'layerwise' and iter(data_loader) is data_loader:
        raise TypeError('mode="layerwise" iterates the data once per layer; data_loader must be re-iterable '
                        f'(e.g. a DataLoader or a list), got the one-shot iterator {type(data_loader).__name__}')
    if is_model_wrapper(model):
        model = model.module
    rank, world_size = get_dist_info()
    layers, left_alone = find_bn_layers(model)
    result = RecalibrationResult(layers=list(layers), left_alone=dict(left_alone))
    if not layers:
        if logger is not None:
            print_log(f'recalibrate_bn: no BN-like layer found; left alone: {sorted(left_alone)}', logger=logger)
        return result

    limit = real_samples_on_rank(data_loader)
    if num_samples is not None:
        share = len(range(rank, num_samples, world_size))
        limit = share if limit is None else min(limit, share)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device('cpu')
    before = {name: tuple(b.detach().clone() for b in _buffers(m)) for name, m in layers.items()}
    state = _save_state(layers)
    ok = False
    try:
        if mode == 'one_pass':
            order = list(layers)
            count, samples, batches = _run_pass(model, data_loader, layers, order, device, num_iters, limit,
                                                rank, True, progress, state)
            _finish(layers, state)
        else:
            count, samples, batches = _layerwise(model, data_loader, layers, device, num_iters, limit, rank,
                                                 state, progress)
        ok = True
    finally:
        _restore_state(layers, state, keep_buffers=ok)
    result.samples, result.batches = samples, batches
    if samples < (num_samples or 0) or (num_iters is not None and batches < num_iters):
        warnings.warn(f'recalibrate_bn: asked for num_iters={num_iters}, num_samples={num_samples}; the data '
                      f'loader gave {batches} batches on rank {rank} and {samples} samples in total')
    for name, n in count.items():
        if n == 0:
            result.layers.remove(name)
            result.left_alone[name] = 'not reached by the forward'
    result.stages = _stage_changes(layers, before, result.layers)
    if logger is not None:
        _log_summary(result, mode, world_size, logger)
    return result


def _save_state(layers: Dict[str, nn.Module]) -> dict:
    """Modes of the BN-like layers and their descendants, BN momenta, and copies of all their buffers."""
    subs = {id(s): s for m in layers.values() for s in m.modules()}.values()
    return dict(training=[(s, s.training) for s in subs],
                momentum=[(m, m.momentum) for m in layers.values() if _reads_own_batch_stats(m)],
                buffers=[(b, b.detach().clone()) for s in subs for b in s.buffers(recurse=False)],
                hooks=[], final={})


def _restore_state(layers: Dict[str, nn.Module], state: dict, keep_buffers: bool) -> None:
    for handle in state['hooks']:
        handle.remove()
    state['hooks'].clear()
    for module, flag in state['training']:
        module.training = flag
    for module, momentum in state['momentum']:
        module.momentum = momentum
    for buf, saved in state['buffers']:  # undo the pass's own buffer updates (EMA, num_batches_tracked, injection)
        buf.copy_(saved)
    if keep_buffers:
        for name, (mean, var) in state['final'].items():
            buf_mean, buf_var = _buffers(layers[name])
            buf_mean.copy_(mean)
            buf_var.copy_(var)


def _set_pass_mode(layers: Dict[str, nn.Module], state: dict, one_pass: bool) -> None:
    """Every BN-like layer (and its children) in eval mode, except plain torch BN in one-pass mode (train mode,
    momentum 1, so its buffers hold the last batch's statistics)."""
    for module in layers.values():
        train = one_pass and _reads_own_batch_stats(module)
        for sub in module.modules():
            sub.training = train
        if train:
            module.momentum = 1.0


def _add_hooks(layers: Dict[str, nn.Module], measured: Sequence[str], accs: Dict[str, _Accumulator], ctx: _Pass,
               state: dict, one_pass: bool, calls: Optional[List[str]] = None) -> None:
    """Registers the measuring hooks (removed by :func:`_restore_state`)."""
    for name in measured:
        module = layers[name]
        mean_buf, var_buf = _buffers(module)

        if one_pass and _reads_own_batch_stats(module):
            def one_value(mod, inputs, name=name):
                # Train-mode BN refuses one value per channel (e.g. a 1x1 image-pool branch on a last batch of one
                # image): that call normalises with the current buffers and is measured directly.
                x = inputs[0]
                if x.numel() == x.shape[1] and mod.training:
                    mod.training = False
                    ctx.one_value.add(name)

            def read_back(mod, inputs, output, name=name, mean_buf=mean_buf, var_buf=var_buf):
                # momentum 1: the buffers now hold this batch's mean and unbiased variance
                x = inputs[0]
                part = ctx.measured_part(name, x)
                if name in ctx.one_value:
                    ctx.one_value.discard(name)
                    mod.training = True
                    accs[name].add(*batch_moments(part if part is not None else x))
                    return
                if part is not None:
                    accs[name].add(*batch_moments(part))
                    return
                count = x.numel() // x.shape[1]
                accs[name].add(count, mean_buf, var_buf * ((count - 1) / count))
            state['hooks'].append(module.register_forward_pre_hook(one_value))
            state['hooks'].append(module.register_forward_hook(read_back))
        else:
            def measure(mod, inputs, name=name, mean_buf=mean_buf, var_buf=var_buf):
                x = inputs[0]
                count, mean, var = batch_moments(x)
                part = ctx.measured_part(name, x)
                accs[name].add(*(batch_moments(part) if part is not None else (count, mean, var)))
                if one_pass and count > 1:  # normalise with this batch's statistics, as train mode would
                    mean_buf.copy_(mean)
                    var_buf.copy_(var)
            state['hooks'].append(module.register_forward_pre_hook(measure))
    if calls is not None:  # execution order of the layers (first call), for the layerwise mode
        for name, module in layers.items():
            state['hooks'].append(module.register_forward_pre_hook(
                lambda mod, inputs, name=name: calls.append(name) if name not in calls else None))


def _run_pass(model, data_loader, layers, measured, device, num_iters, limit, rank, one_pass, progress,
              state) -> Tuple[Dict[str, float], int, int]:
    """One pass over the data measuring ``measured``; returns merged ``({name: count}, samples, batches)`` and
    leaves the merged statistics in ``state['pending']``. Collective: one all-gather."""
    ctx = _Pass()
    accs = {name: _Accumulator(_buffers(layers[name])[0].numel(), device) for name in measured}
    _set_pass_mode(layers, state, one_pass)
    _add_hooks(layers, measured, accs, ctx, state, one_pass)
    seen, batches, error = 0, 0, None
    total = num_iters
    if total is None and hasattr(data_loader, '__len__'):
        total = len(data_loader)
    bar = ProgressBar(total or 0) if progress and rank == 0 else None
    try:
        for batch in data_loader:
            if limit is not None and seen >= limit:  # e.g. a rank whose shard is all padding
                break
            ctx.batch_size = _batch_size(batch)
            ctx.valid = ctx.batch_size if limit is None else min(ctx.batch_size, limit - seen)
            _forward(model, batch, device)
            seen += ctx.valid
            batches += 1
            if bar is not None:
                bar.update()
            if (num_iters is not None and batches >= num_iters) or (limit is not None and seen >= limit):
                break
    except Exception as exc:  # take part in the all-gather so the other ranks do not hang, then re-raise
        error = exc
    finally:
        if bar is not None:
            bar.file.write('\n')
        for handle in state['hooks']:
            handle.remove()
        state['hooks'].clear()
    counts, samples = _gather(layers, measured, accs, seen, error, rank, state)
    return counts, samples, batches


def _gather(layers, measured, accs, seen, error, rank, state) -> Tuple[Dict[str, float], int]:
    """All-gathers ``[failed, samples, per-layer (count, mean, M2)]`` and merges in rank order (identical results
    on every rank). The merged (count, mean, biased var) per layer go to ``state['pending']``."""
    device = next(iter(accs.values())).mean.device
    head = torch.tensor([float(error is not None), float(seen)], dtype=torch.float64, device=device)
    packed = all_gather(torch.cat([head] + [accs[name].pack() for name in measured]))
    if error is not None:
        raise error
    failed = [r for r, vec in enumerate(packed) if vec[0] > 0]
    if failed:
        raise RuntimeError(f'recalibrate_bn: the pass failed on rank(s) {failed}; see their logs')
    samples = int(sum(float(vec[1]) for vec in packed))
    if samples == 0:
        raise ValueError('recalibrate_bn: the data loader yielded no batches (no samples on any rank); '
                         'check the dataset, num_iters and num_samples')
    counts, pending, offset = {}, {}, 2
    for name in measured:
        channels = accs[name].mean.numel()
        size = 1 + 2 * channels
        count, mean, m2 = _Accumulator.merge_packed([vec[offset:offset + size] for vec in packed], channels)
        offset += size
        counts[name] = count
        if count > 0:
            pending[name] = (mean, m2 / max(count - 1, 1))  # unbiased, torch's running_var convention
    state['pending'] = pending
    return counts, samples


def _finish(layers, state) -> None:
    """Records the final statistics of the measured layers (written after the buffers are restored)."""
    for name, (mean, var) in state.pop('pending').items():
        buf_mean, buf_var = _buffers(layers[name])
        state['final'][name] = (mean.to(buf_mean.dtype), var.to(buf_var.dtype))


def _layerwise(model, data_loader, layers, device, num_iters, limit, rank, state, progress):
    """Measures the layers one at a time in execution order; each is written before the next is measured."""
    # Discover the execution order on one batch (eval mode everywhere); ranks agree on rank 0's order,
    # or that of the first rank that had a batch.
    calls: List[str] = []
    _set_pass_mode(layers, state, one_pass=False)
    _add_hooks(layers, [], {}, _Pass(), state, one_pass=False, calls=calls)
    error = None
    try:
        for batch in data_loader:
            _forward(model, batch, device)
            break
    except Exception as exc:
        error = exc
    finally:
        for handle in state['hooks']:
            handle.remove()
        state['hooks'].clear()
    names = list(layers)
    index = torch.full((len(names) + 1,), -1.0, dtype=torch.float64, device=device)
    index[0] = float(error is not None)
    index[1:1 + len(calls)] = torch.tensor([float(names.index(n)) for n in calls], dtype=torch.float64)
    gathered = all_gather(index)
    if error is not None:
        raise error
    if any(vec[0] > 0 for vec in gathered):
        raise RuntimeError('recalibrate_bn: the order discovery failed on another rank; see its logs')
    order: List[str] = []
    for vec in gathered:
        if vec[1] >= 0:
            order = [names[int(i)] for i in vec[1:] if i >= 0]
            break
    order += [n for n in names if n not in order]  # not reached on that batch: measured last
    counts, samples, batches = {}, 0, 0
    bar = ProgressBar(len(order)) if progress and rank == 0 else None
    for name in order:
        count, samples, batches = _run_pass(model, data_loader, layers, [name], device, num_iters, limit, rank,
                                            False, False, state)
        counts.update(count)
        for done, (mean, var) in state.pop('pending').items():
            buf_mean, buf_var = _buffers(layers[done])
            buf_mean.copy_(mean)  # later layers see this layer's final statistics
            buf_var.copy_(var)
            state['final'][done] = (mean.to(buf_mean.dtype), var.to(buf_var.dtype))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    return counts, samples, batches


def _stage_changes(layers, before, names) -> Dict[str, Tuple[int, float, float]]:
    stages: Dict[str, List[Tuple[float, float]]] = {}
    for name in names:
        mean, var = _buffers(layers[name])
        old_mean, old_var = before[name]
        d_mean = (mean.double() - old_mean.double()).abs().mean().item()
        d_std = (var.double().clamp_min(0).sqrt() - old_var.double().clamp_min(0).sqrt()).abs().mean().item()
        stages.setdefault('.'.join(name.split('.')[:2]) or '(root)', []).append((d_mean, d_std))
    return {stage: (len(v), sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v))
            for stage, v in stages.items()}


def _log_summary(result: RecalibrationResult, mode: str, world_size: int, logger: str) -> None:
    lines = [f'recalibrate_bn ({mode}, {world_size} rank(s)): {len(result.layers)} layers from {result.samples} '
             f'samples ({result.batches} batches on this rank)']
    for stage, (n, d_mean, d_std) in result.stages.items():
        lines.append(f'  {stage}: {n} layers, mean |d mean| {d_mean:.4g}, mean |d std| {d_std:.4g}')
    if result.left_alone:
        lines.append('  left alone: ' + ', '.join(f'{k or "(root)"} ({v})' for k, v in result.left_alone.items()))
    print_log('\n'.join(lines), logger=logger)
