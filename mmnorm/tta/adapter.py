"""TestTimeAdapter: online test-time adaptation of the norm layers on the test stream (Runner-free).

Methods (docs/tta.md):

* ``'bn'``: every BN-like layer normalises with the test batch's statistics; nothing is learned;
* ``'prior'``: the batch statistics blended with the source statistics, prior strength ``N_0``
  (Schneider et al.);
* ``'tent'`` (Wang et al., ICLR 2021): test-batch statistics, and ``steps`` optimizer steps per
  batch on the mean softmax entropy of the predictions, over the affine parameters of the norm
  layers only (:func:`~mmnorm.tta.norm_modes.affine_parameters`). Segmentors: the decode head's
  logits, per valid pixel. ``episodic``: back to the source state after every batch; continual
  otherwise, with the safeguards of :mod:`mmnorm.tta.safeguards` (reliable-sample selection,
  collapse reset rule).

No buffer is ever written; only the tuned affine parameters (``'tent'``) and the optimizer state
change, and :meth:`TestTimeAdapter.reset` restores them bit-exactly. Distributed: see
:mod:`mmnorm.tta.distributed`.
"""
import copy
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel, is_model_wrapper

from ..batches import forward_batch
from ..validation import ArgumentError
from .distributed import sum_gradients_over_ranks, sum_over_ranks
from .norm_modes import affine_parameters, statistics_leaves, statistics_mode
from .objectives import check_class_logits, entropy_terms, marginal_entropy, valid_pixel_mask
from .safeguards import RESET_SIGNALS, CollapseMonitor, check_fraction, entropy_margin
from .validation import check_method_arguments

__all__ = ['TestTimeAdapter', 'METHODS', 'DEFAULT_OPTIMIZER']

METHODS = ('bn', 'prior', 'tent')
DEFAULT_OPTIMIZER = dict(
    type='Adam', lr=1e-3, betas=(0.9, 0.999))  # TENT's default (its CIFAR / segmentation cfg)


def _is_segmentor(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None))
               for a in ('inference', 'postprocess_result')) and hasattr(model, 'decode_head')


class TestTimeAdapter:
    """Adapts ``model``'s norm layers on each test batch and returns the model's predictions for it.

    ``adapter = TestTimeAdapter(segmentor, 'tent')``;
    ``preds = [adapter.adapt(batch) for batch in loader]``

    Args:
        model (nn.Module): An mmseg segmentor / mmdet detector (an mmengine ``BaseModel``; batches
            are data dicts and :meth:`adapt` returns what ``model.test_step`` returns) or a plain
            module fed tensors (returns its output). Wrappers (DDP) are unwrapped.
        method (str): ``'bn'``, ``'prior'`` or ``'tent'``. Defaults to ``'tent'``.
        prior (float): ``N_0`` of ``'prior'``, in samples, >= 0. Defaults to 16.
        optimizer (dict, optional): ``'tent'``: a ``torch.optim`` class name as ``type`` and its
            arguments. Defaults to ``DEFAULT_OPTIMIZER`` (Adam, lr 1e-3, betas (0.9, 0.999)).
        steps (int): ``'tent'``: optimizer steps per batch, >= 1. Defaults to 1.
        episodic (bool): ``'tent'``: return to the source state after every batch. Defaults to False
            (continual).
        predict_after_update (bool): ``'tent'``: predict with one more forward after the batch's
            last update (else, as TENT, the predictions of the last adaptation forward, before its
            update). Defaults to False.
        reliable (float, optional): Reliable-sample selection: only elements with entropy below
            ``reliable * ln K`` enter the loss; in (0, 1]. None: all valid elements. Defaults to
            None.
        reset_threshold (float, optional): Collapse reset: back to the source state when the running
            marginal entropy drops below this fraction of its first value since the last reset; in
            (0, 1). Defaults to None.
        reset_momentum (float): EMA momentum of the collapse signal, in (0, 1]. Defaults to 0.1.
        reset_signal (str): The collapse signal: ``'marginal'`` (entropy of the predicted-class
            marginal, falls when the predictions collapse onto few classes) or ``'entropy'`` (mean
            prediction entropy, falls when the model grows over-confident). Defaults to
            ``'marginal'``.
        reset_every (int, optional): Also reset every this many steps. Defaults to None.
        num_classes (int, optional): Classes ``K`` of the logits (segmentors: read from the decode
            head); needed only by a rank that calls :meth:`idle_step` before it saw a batch.
            Defaults to None.
        logger (str, optional): ``print_log`` logger for reset events; None: silent. Defaults to
            ``'current'``.

    Raises:
        ValueError: Bad arguments; no norm layer to adapt; ``'tent'`` on a model without class
            logits.
    """

    def __init__(self,
                 model: nn.Module,
                 method: str = 'tent',
                 *,
                 prior: float = 16.0,
                 optimizer: Optional[dict] = None,
                 steps: int = 1,
                 episodic: bool = False,
                 predict_after_update: bool = False,
                 reliable: Optional[float] = None,
                 reset_threshold: Optional[float] = None,
                 reset_momentum: float = 0.1,
                 reset_signal: str = 'marginal',
                 reset_every: Optional[int] = None,
                 num_classes: Optional[int] = None,
                 logger: Optional[str] = 'current') -> None:
        optimizer = dict(DEFAULT_OPTIMIZER if optimizer is None else optimizer)
        check_method_arguments(
            method, METHODS, prior=prior, optimizer=optimizer, steps=steps, num_classes=num_classes)
        self.model = model.module if is_model_wrapper(model) else model
        self.method = method
        self.prior = float(prior)
        self.steps = steps
        self.episodic = bool(episodic)
        self.predict_after_update = bool(predict_after_update)
        self.reliable = check_fraction(reliable, 'reliable', closed_right=True)
        if reset_signal not in RESET_SIGNALS:
            raise ArgumentError(
                f'reset_signal must be one of {RESET_SIGNALS}, got {reset_signal!r}')
        self.reset_signal = reset_signal
        self.monitor = CollapseMonitor(reset_threshold, reset_momentum, reset_every)
        self.logger = logger
        self.layers, self.leaves, self.left_alone = statistics_leaves(self.model)
        if not self.layers:
            raise ValueError(
                f'TestTimeAdapter: {type(self.model).__name__} has no BN-like norm layer to adapt '
                f'(left alone: {self.left_alone or "none"}); test-time adaptation needs BN, '
                'SyncBN, AdaBN, IBN, PBN or RN layers')
        decode_head = getattr(self.model, 'decode_head', None)
        self.num_classes = num_classes or getattr(decode_head, 'num_classes', None)
        self.params: List[nn.Parameter] = []
        self.param_names: List[str] = []
        self.optimizer = None
        if method == 'tent':
            self._init_tent(optimizer)
        self.num_steps = self.num_resets = 0
        self._pending: Optional[torch.Tensor] = None  # reduced sums of a step not yet applied
        self.history: List[Dict[str,
                                Any]] = []  # one entry per step: entropy, marginal, selected, reset

    def _init_tent(self, optimizer: dict) -> None:
        if isinstance(self.model, BaseModel) and not _is_segmentor(self.model):
            raise ValueError(
                f"method='tent' minimises the entropy of class logits (an mmseg segmentor's decode "
                'head, or a plain nn.Module returning (N, K, *) logits); '
                f"{type(self.model).__name__} gives none; use the statistics methods 'bn' or "
                "'prior' (they work on any mmdet detector)")
        named = affine_parameters(self.model, self.layers)
        if not named:
            raise ValueError(
                'TestTimeAdapter(method="tent"): the norm layers have no affine parameters to tune '
                '(affine=False); use "bn" or "prior"')
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        kwargs = dict(optimizer)
        self.optimizer = getattr(torch.optim, kwargs.pop('type'))(self.params, **kwargs)
        self._source = [p.detach().clone() for p in self.params]
        self._optim_state = copy.deepcopy(self.optimizer.state_dict())

    # -- public API --------------------------------------------------------------------------------
    def adapt(self, batch: Any) -> Any:
        """Adapts on ``batch`` and returns the model's predictions for it (``test_step``'s output
        for mmengine models, the output tensor for plain modules). Collective under ``'tent'``
        (every rank calls it, or :meth:`idle_step`, the same number of times)."""
        with self.session():
            if self.method != 'tent':
                with torch.no_grad():
                    return self._predict(batch)
            try:
                for _ in range(self.steps):
                    with torch.enable_grad():
                        logits, valid, finish = self._logits(batch)
                        self._backward(logits, valid)
                    self._apply_step()
                if self.predict_after_update:
                    with torch.no_grad():
                        return self._predict(batch)
                return finish(logits.detach())
            finally:
                if self.episodic:
                    self.reset()

    def session(self) -> 'AdaptationSession':
        """The context of one adaptation: the whole model in eval mode, the statistics mode on, only
        the tuned parameters requiring gradients; everything restored on exit. :meth:`adapt` opens
        one per batch; a caller that predicts itself opens one around :meth:`prepare`, its
        prediction and :meth:`finish`."""
        return AdaptationSession(self)

    def prepare(self, batch: Any) -> None:
        """What :meth:`adapt` does on ``batch`` before its prediction, for a caller that predicts
        with the model's own ``test_step`` inside :meth:`session`
        (:class:`~mmnorm.engine.hooks.TestTimeAdaptHook`).

        ``'tent'``: the ``steps`` forwards and backwards; the last update waits for :meth:`finish`
        (unless ``predict_after_update``), so the caller's prediction sees the parameters of the
        last adaptation forward, as :meth:`adapt`'s does. A no-op for the statistics methods.
        Collective under ``'tent'``.
        """
        if self.method != 'tent':
            return
        for step in range(self.steps):
            with torch.enable_grad():
                logits, valid, _ = self._logits(batch)
                self._backward(logits, valid)
            if step + 1 < self.steps or self.predict_after_update:
                self._apply_step()

    def finish(self) -> None:
        """Completes a :meth:`prepare`: applies the waiting update and, if ``episodic``, resets."""
        if self._pending is not None:
            self._apply_step()
        if self.method == 'tent' and self.episodic:
            self.reset()

    def idle_step(self) -> None:
        """One ``'tent'`` step without a batch (a rank that ran out of batches): takes part in the
        reductions with zeros and applies the same update as the other ranks. A no-op for the
        statistics methods."""
        if self.method != 'tent':
            return
        if self.num_classes is None:
            raise RuntimeError(
                'TestTimeAdapter.idle_step before any batch: pass num_classes= so the reductions '
                'have the same size on every rank')
        for _ in range(self.steps):
            self._reduce_and_backward(None, torch.zeros(3 + self.num_classes, dtype=torch.float64))
            self._apply_step()
        if self.episodic:
            self.reset()

    def reset(self) -> None:
        """Back to the exact source parameters and the optimizer's initial state; the collapse
        monitor restarts."""
        if self.method == 'tent':
            with torch.no_grad():
                for p, source in zip(self.params, self._source):
                    p.copy_(source)
                    p.grad = None
            self.optimizer.load_state_dict(copy.deepcopy(self._optim_state))
        self._pending = None
        self.monitor.restart()

    # -- internals ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _predict(self, batch: Any) -> Any:
        if isinstance(self.model, BaseModel):
            return self.model.test_step(batch)
        return forward_batch(self.model, batch, self.device)

    def _logits(self, batch: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor], Callable]:
        """``(logits (N, K, *), valid (N, *) bool or None, finish)``; ``finish(detached logits)`` ->
        predictions."""
        if not isinstance(self.model, BaseModel):
            out = forward_batch(self.model, batch, self.device)
            check_class_logits(out, f'{type(self.model).__name__}.forward')
            return out, None, lambda logits: logits
        data = self.model.data_preprocessor(batch, False)
        inputs, samples = data['inputs'], data.get('data_samples')
        if samples is not None:
            metas = [s.metainfo for s in samples]
        else:
            shape = tuple(inputs.shape[2:])
            metas = [
                dict(ori_shape=shape, img_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])
            ] * inputs.shape[0]
        logits = self.model.inference(inputs, metas)
        check_class_logits(logits, f'{type(self.model).__name__}.inference')
        valid = valid_pixel_mask((logits.shape[0], ) + tuple(logits.shape[2:]),
                                 metas if samples else None, logits.device)
        return logits, valid, lambda detached: self.model.postprocess_result(detached, samples)

    def _backward(self, logits: torch.Tensor, valid: Optional[torch.Tensor]) -> None:
        """The batch's share of one step: entropy terms, reductions, gradients (see
        :meth:`_reduce_and_backward`); :meth:`_apply_step` updates."""
        if self.num_classes is None:
            self.num_classes = logits.shape[1]
        margin = entropy_margin(logits.shape[1], self.reliable)
        terms = entropy_terms(logits, valid, margin)
        local = torch.cat([
            torch.stack([terms.selected, terms.valid, terms.entropy_sum]).cpu(),
            terms.prob_sum.cpu()
        ])
        self._reduce_and_backward(terms.loss_sum, local)

    def _reduce_and_backward(self, loss_sum: Optional[torch.Tensor], local: torch.Tensor) -> None:
        """Sums ``[selected, valid, entropy sum, class-probability sums]`` over the ranks,
        back-propagates this rank's share of the global mean entropy and sums the gradients over the
        ranks (all ranks alike). The reduced sums wait in ``_pending`` for :meth:`_apply_step`."""
        total = sum_over_ranks(local.to(self.device)).cpu()
        for p in self.params:
            p.grad = None
        if float(total[0]) > 0:
            if loss_sum is not None:
                (loss_sum / float(total[0])).backward()
            sum_gradients_over_ranks(self.params)
            # an idle rank (or one without selected elements) applies the same update
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self._pending = total

    def _apply_step(self) -> None:
        """The optimizer step of the pending reduction (none without selected elements), its history
        record and the reset rule. No collective."""
        total, self._pending = self._pending, None
        selected, valid = float(total[0]), float(total[1])
        if selected > 0:
            self.optimizer.step()
        self.num_steps += 1
        record = dict(
            step=self.num_steps,
            entropy=float(total[2]) / max(valid, 1.0),
            selected=selected / max(valid, 1.0),
            marginal=marginal_entropy(total[3:], valid),
            reset=None)
        if not self.episodic and self.monitor.enabled and valid > 0:
            reason = self.monitor.update(record[self.reset_signal])
            if reason is not None:
                self.reset()
                self.num_resets += 1
                record['reset'] = reason
                if self.logger is not None:
                    print_log(
                        'TestTimeAdapter: reset to the source state at step '
                        f'{self.num_steps}: {reason}',
                        logger=self.logger)
        self.history.append(record)


class AdaptationSession:
    """Context of one adaptation (:meth:`TestTimeAdapter.session`): the whole model in eval mode,
    the statistics mode on (:func:`~mmnorm.tta.norm_modes.statistics_mode`), only the tuned
    parameters requiring gradients; everything restored on exit."""

    def __init__(self, adapter: TestTimeAdapter):
        self.adapter = adapter
        self._stack = ExitStack()

    def __enter__(self) -> 'AdaptationSession':
        adapter, model = self.adapter, self.adapter.model
        self.modes = [(m, m.training) for m in model.modules()]
        for module, _ in self.modes:
            module.training = False
        self.flags = None
        if adapter.method == 'tent':
            tuned = {id(p) for p in adapter.params}
            self.flags = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in self.flags:
                p.requires_grad_(id(p) in tuned)
        mode = 'prior' if adapter.method == 'prior' else 'bn'
        self._stack.enter_context(statistics_mode(model, adapter.leaves, mode, adapter.prior))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.close()
        for module, flag in self.modes:
            module.training = flag
        for p, flag in self.flags or ():
            p.requires_grad_(flag)
