"""AdaBN: re-estimate the statistics of every BN layer on target-domain data.

Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation" (arXiv 1603.04779).
Every weight is kept; each BN layer's running mean / variance is replaced by the statistics of its
input over the *whole* target set (all samples x all spatial positions), computed exactly by
:func:`recalibrate_bn`:

* a pre-hook per BN-like layer (:func:`~mmnorm.bn_layers.find_bn_layers`, all in eval mode: no
  collective, no momentum) feeds its input's moments to a float64
  :class:`~mmnorm.stats.MomentAccumulator` (the moments of ``torch.cat`` of all features, whatever
  the batch sizes); ``running_var`` gets the unbiased one;
* batches of mixed image sizes are regrouped into batches of one size
  (:func:`mmnorm.batches.batches_by_size`): nothing is padded, so padded pixels never enter a
  statistic;
* distributed: one all-gather of all ranks' accumulators per pass, merged in rank order (identical
  buffers on every rank); padding repeats of the samplers are not measured (nor forwarded, in
  mmengine data dicts; :func:`mmnorm.batches.real_samples_on_rank`).
Two orders (``mode``):
* ``'one_pass'`` (the paper; public tools): the hook also writes the batch's statistics into the
  layer's buffers just before it normalises, so every layer normalises as in train mode (one value
  per channel, e.g. a 1x1 image pool on one image: the current buffers). Distributed: equals one
  process over the same per-rank batches.
* ``'layerwise'``: one pass per layer in execution order, earlier layers already holding their final
  statistics: independent of the batch size and of the number of ranks, at ``L`` times the cost.
"""
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.dist import all_gather, get_dist_info
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.utils import ProgressBar

from .batches import (batches_by_size, check_data_loader, forward_mode, prepare_batch,
                      real_samples_on_rank, tensor_mode_obstacle)
from .bn_layers import find_bn_layers, norm_buffers
from .stats import MomentAccumulator, batch_moments
from .validation import check_positive_int

# find_bn_layers and real_samples_on_rank are re-exported from mmnorm.stats and mmnorm.batches
__all__ = [
    'recalibrate_bn', 'RecalibrationResult', 'find_bn_layers', 'real_samples_on_rank', 'MODES'
]

MODES = ('one_pass', 'layerwise')


@dataclass
class RecalibrationResult:
    """What :func:`recalibrate_bn` did: recalibrated ``layers``; real ``samples`` over all ranks;
    ``batches`` on this rank per pass; ``left_alone`` ``{name: reason}`` (IN/GN/LN, no running
    stats, not reached); ``stages`` ``{stage: (layers, mean |d mean|, mean |d std|)}`` (stage: first
    two name components, e.g. backbone.layer1)."""
    layers: List[str] = field(default_factory=list)
    samples: int = 0
    batches: int = 0
    left_alone: Dict[str, str] = field(default_factory=dict)
    stages: Dict[str, Tuple[int, float, float]] = field(default_factory=dict)


class _Recalibrating:
    """Context manager owning what a recalibration changes: the BN-like layers' (and their
    children's) modes and buffers, and the measuring hooks. On exit the hooks go, modes and buffers
    are restored (undoing the passes' own writes) and, if no exception is propagating, the final
    statistics are written."""

    def __init__(self, layers: Dict[str, nn.Module]):
        self.layers = layers
        self.subs = list({id(s): s for m in layers.values() for s in m.modules()}.values())
        self.hooks: List[Any] = []
        self.final: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self) -> '_Recalibrating':
        self.modes = [(s, s.training) for s in self.subs]
        self.saved = [(b, b.detach().clone()) for s in self.subs for b in s.buffers(recurse=False)]
        for sub in self.subs:
            sub.training = False
        return self

    def remove_hooks(self) -> None:
        while self.hooks:
            self.hooks.pop().remove()

    def commit(self, name: str, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Writes ``name``'s final statistics now (later layerwise passes see them) and again on
        exit."""
        self.final[name] = (mean, var)
        self._write(name)

    def _write(self, name: str) -> None:
        for buf, value in zip(norm_buffers(self.layers[name]), self.final[name]):
            buf.copy_(value)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove_hooks()
        for module, flag in self.modes:
            module.training = flag
        # undoes the passes' own writes (batch statistics, layerwise commits)
        for buf, saved in self.saved:
            buf.copy_(saved)
        if exc_type is None:
            for name in self.final:
                self._write(name)


class _Measuring:
    """The measuring pre-hooks of one pass and what they share: how many leading samples of the
    batch are real."""

    def __init__(self, inject: bool):
        # one-pass: the layer normalises with the batch's (biased) statistics, as in training
        self.inject = inject
        self.size = self.valid = 0
        self.warned = set()
        self.pending: List[Tuple[MomentAccumulator,
                                 tuple]] = []  # a batch counts once its forward completed

    def commit(self) -> None:
        for acc, moments in self.pending:
            acc.add(*moments)
        self.pending.clear()

    def measure(self, name: str, acc: MomentAccumulator, module: nn.Module, inputs: tuple) -> None:
        """The pre-hook of layer ``name`` (bound with ``functools.partial``): measures ``inputs[0]``
        (N, C, *)."""
        x = inputs[0]
        count, mean, var = batch_moments(x)
        if self.valid < self.size and x.shape[0] == self.size:
            self.pending.append((acc, batch_moments(x[:self.valid])))
        else:
            self.pending.append((acc, (count, mean, var)))
            # e.g. RoI rows: padding not separable
            if self.valid < self.size and name not in self.warned:
                self.warned.add(name)
                warnings.warn(
                    f'recalibrate_bn: {name} sees {x.shape[0]} rows for a batch of {self.size} '
                    f'samples ({self.valid} real); padded samples cannot be excluded for this layer'
                )
        if self.inject and count > 1:
            for buf, value in zip(norm_buffers(module), (mean, var)):
                buf.copy_(value)


@dataclass
class _Plan:
    """What every pass shares: where to run and how much data to use on this rank."""
    device: torch.device
    rank: int
    num_iters: Optional[int]
    limit: Optional[int]  # real samples to measure on this rank (None: all)
    forward_mode: Optional[str] = None  # mmnorm.batches.forward_mode of the model

    @property
    def counts_samples(
            self) -> bool:  # the progress bar counts samples (a sample budget only), else batches
        return self.num_iters is None and self.limit is not None

    def progress_bar(self, data_loader: Iterable) -> Optional[ProgressBar]:
        """Rank 0's bar over this rank's share: ``limit`` samples, or ``num_iters`` /
        ``len(data_loader)`` batches."""
        if self.rank != 0:
            return None
        totals = [
            n
            for n in (self.num_iters, len(data_loader) if hasattr(data_loader, '__len__') else None)
            if n
        ]
        return ProgressBar(
            self.limit if self.counts_samples else min(totals, default=0), file=sys.stdout)


def _run_pass(model: nn.Module, data_loader: Iterable, state: _Recalibrating, plan: _Plan, *,
              measured: List[str], inject: bool,
              progress: bool) -> Tuple[Dict[str, tuple], int, int]:
    """One pass over the data measuring ``measured``. Collective: one all-gather.

    Returns:
        tuple:
            ``({name: (count, mean, unbiased var)}, samples over all ranks, batches on this rank)``.
    """
    batch = _Measuring(inject)
    accs = {
        name: MomentAccumulator(norm_buffers(state.layers[name])[0].numel(), plan.device)
        for name in measured
    }
    for name in measured:
        state.hooks.append(state.layers[name].register_forward_pre_hook(
            partial(batch.measure, name, accs[name])))
    bar = plan.progress_bar(data_loader) if progress else None
    seen, batches, error = 0, 0, None
    try:
        for data in batches_by_size(data_loader, plan.limit):
            # e.g. a rank whose shard is all padding
            if plan.limit is not None and seen >= plan.limit:
                break
            args, kwargs, batch.size = prepare_batch(model, data, plan.device, plan.forward_mode)
            batch.valid = batch.size if plan.limit is None else min(batch.size, plan.limit - seen)
            model(*args, **kwargs)
            batch.commit()
            seen += batch.valid
            batches += 1
            if bar is not None:
                bar.update(batch.valid if plan.counts_samples else 1)
            if batches == plan.num_iters or (plan.limit is not None and seen >= plan.limit):
                break
    # take part in the all-gather so the other ranks do not hang, then re-raise
    except Exception as exc:
        error = exc
    finally:
        if bar is not None:
            bar.file.write('\n')
        state.remove_hooks()
    stats, samples = _gather(accs, seen, error, plan.device)
    return stats, samples, batches


def _gather(accs: Dict[str, MomentAccumulator], seen: int, error: Optional[Exception],
            device: torch.device):
    """All-gathers ``[failed, samples, per-layer (count, mean, M2)]`` and merges in rank order
    (identical results on every rank). Returns ``({name: (count, mean, unbiased var)},
    samples)``."""
    head = torch.tensor([float(error is not None), float(seen)], dtype=torch.float64, device=device)
    packed = all_gather(torch.cat([head] + [acc.pack() for acc in accs.values()]))
    if error is not None:
        raise error
    failed = [r for r, vec in enumerate(packed) if vec[0] > 0]
    if failed:
        raise RuntimeError(f'recalibrate_bn: the pass failed on rank(s) {failed}; see their logs')
    samples = int(sum(float(vec[1]) for vec in packed))
    if samples == 0:
        raise ValueError(
            'recalibrate_bn: the data loader yielded no batches (no samples on any rank); '
            'check the dataset, num_iters and num_samples')
    stats, offset = {}, 2
    for name, acc in accs.items():
        size = 1 + 2 * acc.num_channels
        count, mean, m2 = MomentAccumulator.merge_packed(
            [vec[offset:offset + size] for vec in packed], acc.num_channels)
        offset += size
        stats[name] = (count, mean, m2 / max(count - 1, 1)
                       )  # unbiased, torch's running_var convention
    return stats, samples


def _execution_order(model: nn.Module, data_loader: Iterable, state: _Recalibrating,
                     plan: _Plan) -> List[str]:
    """The layers in the order of their first call on one batch (eval mode). Ranks agree on rank 0's
    order, or that of the first rank that had a batch; layers not reached come last. Collective: one
    all-gather."""
    names, calls = list(state.layers), []
    first_call = lambda module, inputs, name: calls.append(name) if name not in calls else None
    for name, module in state.layers.items():
        state.hooks.append(module.register_forward_pre_hook(partial(first_call, name=name)))
    error = None
    try:
        args, kwargs, _ = prepare_batch(model, next(batches_by_size(data_loader, plan.limit)),
                                        plan.device, plan.forward_mode)
        model(*args, **kwargs)
    except StopIteration:  # no batch on this rank: the others decide the order
        pass
    except Exception as exc:
        error = exc
    finally:
        state.remove_hooks()
    index = torch.full((len(names) + 1, ), -1.0, dtype=torch.float64, device=plan.device)
    index[0] = float(error is not None)
    index[1:1 + len(calls)] = torch.tensor([float(names.index(n)) for n in calls],
                                           dtype=torch.float64)
    gathered = all_gather(index)
    if error is not None:
        raise error
    if any(vec[0] > 0 for vec in gathered):
        raise RuntimeError(
            'recalibrate_bn: the order discovery failed on another rank; see its logs')
    order = next(([names[int(i)] for i in vec[1:] if i >= 0] for vec in gathered if vec[1] >= 0),
                 [])
    return order + [n for n in names if n not in order]


def _check_arguments(data_loader: Any, num_iters: Any, num_samples: Any, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    check_positive_int(num_iters, 'num_iters', optional=True)
    check_positive_int(num_samples, 'num_samples', optional=True)
    check_data_loader(
        data_loader,
        reiterable='mode="layerwise" iterates the data once per layer'
        if mode == 'layerwise' else None)


@torch.no_grad()
def recalibrate_bn(model: nn.Module,
                   data_loader: Iterable,
                   num_iters: Optional[int] = None,
                   *,
                   num_samples: Optional[int] = None,
                   mode: str = 'one_pass',
                   progress: bool = True,
                   logger: Optional[str] = 'current') -> RecalibrationResult:
    """Writes the exact statistics of ``data_loader``'s data into every BN-like layer of ``model``
    (AdaBN).

    Only the BN-like layers change mode for the pass (other layers, e.g. dropout, stay as they are;
    ``norm_eval`` / frozen-stage locks are bypassed by setting the layers' mode directly). Modes,
    hooks, and on failure the buffers, are restored on exit. Every rank must call it (it all-gathers
    once per pass).

    Args:
        model (nn.Module): A plain module fed tensors, or an mmengine ``BaseModel`` fed data dicts
            (its ``data_preprocessor`` runs, then ``forward(mode='tensor')``, or ``'predict'`` for
            the models :func:`mmnorm.batches.forward_mode` names, e.g. PointRend). Model wrappers
            (DDP) are unwrapped.
        data_loader (Iterable): Batches: tensors, ``(inputs, ...)`` tuples, or mmengine data dicts
            (images of mixed sizes are regrouped into batches of one size, see
            :func:`mmnorm.batches.batches_by_size`). ``'layerwise'`` iterates it once per layer, so
            it must be re-iterable (e.g. a ``DataLoader``).
        num_iters (int, optional): Batches per rank per pass (as forwarded, after the regrouping);
            None: the whole loader. Fewer available: warning.
        num_samples (int, optional): Samples to use, summed over ranks (rank ``r`` measures at most
            ``len(range(r, num_samples, world_size))``: the first ``num_samples`` of a sharded
            global order). None: all. Fewer available: warning.
        mode (str): ``'one_pass'`` or ``'layerwise'`` (see the module docstring). Defaults to
            ``'one_pass'``.
        progress (bool): Progress bar on rank 0. Defaults to True.
        logger (str, optional): ``print_log`` logger for the summary; None: no summary. Defaults to
            ``'current'``.

    Returns:
        RecalibrationResult: Recalibrated layers, samples, per-stage mean absolute changes.

    Raises:
        ValueError: Bad ``num_iters`` / ``num_samples`` / ``mode``; no samples on any rank.
        TypeError: ``data_loader`` is not an iterable of batches.
        RuntimeError: The pass failed on another rank.
    """
    _check_arguments(data_loader, num_iters, num_samples, mode)
    if is_model_wrapper(model):
        model = model.module
    rank, world_size = get_dist_info()
    layers, left_alone = find_bn_layers(model)
    result = RecalibrationResult(layers=list(layers), left_alone=dict(left_alone))
    if not layers:
        if logger is not None:
            print_log(
                f'recalibrate_bn: no BN-like layer found; left alone: {sorted(left_alone)}',
                logger=logger)
        return result

    limit = real_samples_on_rank(data_loader)
    if num_samples is not None:
        share = len(range(rank, num_samples, world_size))
        limit = share if limit is None else min(limit, share)
    param = next(iter(model.parameters()), None)
    plan = _Plan(
        device=param.device if param is not None else torch.device('cpu'),
        rank=rank,
        num_iters=num_iters,
        limit=limit,
        forward_mode=forward_mode(model))
    if plan.forward_mode == 'predict' and logger is not None:
        print_log(
            f'{type(model).__name__} cannot forward in tensor mode '
            f'({tensor_mode_obstacle(model)}); forwarding in predict mode instead',
            logger=logger)
    with _Recalibrating(layers) as state:
        if mode == 'one_pass':
            stats, samples, batches = _run_pass(
                model,
                data_loader,
                state,
                plan,
                measured=list(layers),
                inject=True,
                progress=progress)
            for name, (count, mean, var) in stats.items():
                if count > 0:
                    state.commit(name, mean, var)
        else:
            order, stats = _execution_order(model, data_loader, state, plan), {}
            bar = ProgressBar(len(order), file=sys.stdout) if progress and rank == 0 else None
            for name in order:
                layer_stats, samples, batches = _run_pass(
                    model, data_loader, state, plan, measured=[name], inject=False, progress=False)
                count, mean, var = stats[name] = layer_stats[name]
                if count > 0:
                    state.commit(name, mean, var)  # later layers see this layer's final statistics
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.file.write('\n')
        result.stages = _stage_changes(state)
    result.samples, result.batches = samples, batches
    if samples < (num_samples or 0) or (num_iters is not None and batches < num_iters):
        warnings.warn(
            f'recalibrate_bn: asked for num_iters={num_iters}, num_samples={num_samples}; the data '
            f'loader gave {batches} batches on rank {rank} and {samples} samples in total')
    for name, (count, _, _) in stats.items():
        if count == 0:
            result.layers.remove(name)
            result.left_alone[name] = 'not reached by the forward'
    if logger is not None:
        _log_summary(result, mode, world_size, logger)
    return result


def _stage_changes(state: _Recalibrating) -> Dict[str, Tuple[int, float, float]]:
    """Per stage (first two name components): layers, mean |d mean| and mean |d std| of the
    recalibration."""
    saved = {id(buf): copy for buf, copy in state.saved}
    stages: Dict[str, List[Tuple[float, float]]] = {}
    for name, (mean, var) in state.final.items():
        old_mean, old_var = (saved[id(buf)] for buf in norm_buffers(state.layers[name]))
        d_mean = (mean.double() - old_mean.double()).abs().mean().item()
        d_std = (var.double().clamp_min(0).sqrt() -
                 old_var.double().clamp_min(0).sqrt()).abs().mean().item()
        stages.setdefault('.'.join(name.split('.')[:2]) or '(root)', []).append((d_mean, d_std))
    return {
        stage: (len(v), *(sum(column) / len(v) for column in zip(*v)))
        for stage, v in stages.items()
    }


def _log_summary(result: RecalibrationResult, mode: str, world_size: int, logger: str) -> None:
    head = (f'recalibrate_bn ({mode}, {world_size} rank(s)): {len(result.layers)} layers from '
            f'{result.samples} samples ({result.batches} batches on this rank)')
    lines = [head]
    for stage, (n, d_mean, d_std) in result.stages.items():
        lines.append(f'  {stage}: {n} layers, mean |d mean| {d_mean:.4g}, mean |d std| {d_std:.4g}')
    if result.left_alone:
        lines.append('  left alone: ' + ', '.join(f'{k or "(root)"} ({v})'
                                                  for k, v in result.left_alone.items()))
    print_log('\n'.join(lines), logger=logger)
