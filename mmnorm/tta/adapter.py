"""TestTimeAdapter: online test-time adaptation on the test stream (Runner-free).

Methods (docs/tta.md):

* ``'bn'``: every BN-like layer normalises with the test batch's statistics; nothing is learned;
* ``'prior'``: the batch statistics blended with the source statistics, prior strength ``N_0``
  (Schneider et al.);
* ``'tent'`` (Wang et al., ICLR 2021): test-batch statistics, and ``steps`` optimizer steps per
  batch on the mean softmax entropy of the predictions, over the ``params`` selection (default: the
  affine parameters of every norm layer, :mod:`mmnorm.tta.params`). Segmentors: the decode head's
  logits, per valid pixel. ``episodic``: back to the source state after every batch; continual
  otherwise, with the safeguards of :mod:`mmnorm.tta.safeguards` (reliable-sample selection,
  collapse reset rule);
* ``'sar'`` (:mod:`mmnorm.tta.sar`), ``'eata'`` (:mod:`mmnorm.tta.eata`), ``'cotta'``
  (:mod:`mmnorm.tta.cotta`): their own steps; this class gives them the forwards, the session and
  the reset.

No buffer is ever written; only the tuned parameters, the optimizer state and the methods' own
state (SAR's EMA, EATA's running prediction, CoTTA's teacher and restore generator) change, and
:meth:`TestTimeAdapter.reset` restores them bit-exactly. Distributed: see
:mod:`mmnorm.tta.distributed`.
"""
import copy
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModel, is_model_wrapper

from ..batches import forward_batch, prepare_batch
from ..validation import ArgumentError
from .cotta import DEFAULT_SCALES, CoTTAStep
from .distributed import sum_gradients_over_ranks, sum_over_ranks
from .eata import EATAStep, fisher_information
from .norm_modes import statistics_leaves, statistics_mode
from .objectives import check_class_logits, entropy_terms, marginal_entropy, valid_pixel_mask
from .params import sar_top_blocks, select_parameters
from .safeguards import RESET_SIGNALS, CollapseMonitor, check_fraction, entropy_margin
from .sar import RecoveryMonitor, SARStep
from .validation import check_method_arguments, check_method_options

__all__ = ['TestTimeAdapter', 'METHODS', 'DEFAULT_OPTIMIZER', 'DEFAULT_OPTIMIZERS']

METHODS = ('bn', 'prior', 'tent', 'sar', 'eata', 'cotta')
STATISTICS_METHODS = ('bn', 'prior')
DEFAULT_OPTIMIZER = dict(
    type='Adam', lr=1e-3, betas=(0.9, 0.999))  # TENT's default (its CIFAR / segmentation cfg)
DEFAULT_OPTIMIZERS = dict(
    tent=DEFAULT_OPTIMIZER,
    sar=dict(type='SGD', lr=2.5e-4, momentum=0.9),  # SAR's (ImageNet, batch 64)
    eata=dict(type='SGD', lr=2.5e-4, momentum=0.9),  # EATA's (ImageNet, batch 64)
    cotta=dict(type='Adam', lr=6e-5 / 8, betas=(0.9, 0.999)))  # CoTTA's ACDC code, batch 1
DEFAULT_PARAMS = dict(tent='norm', sar='sar', eata='norm', cotta='all')


def _is_segmentor(model: nn.Module) -> bool:
    return all(callable(getattr(model, a, None))
               for a in ('inference', 'postprocess_result')) and hasattr(model, 'decode_head')


class TestTimeAdapter:
    """Adapts ``model`` on each test batch and returns the model's predictions for it.

    ``adapter = TestTimeAdapter(segmentor, 'tent')``;
    ``preds = [adapter.adapt(batch) for batch in loader]``

    Args:
        model (nn.Module): An mmseg segmentor / mmdet detector (an mmengine ``BaseModel``; batches
            are data dicts and :meth:`adapt` returns what ``model.test_step`` returns) or a plain
            module fed tensors (returns its output). Wrappers (DDP) are unwrapped.
        method (str): One of ``METHODS``: ``'bn'``, ``'prior'``, ``'tent'``, ``'sar'``,
            ``'eata'``, ``'cotta'``. Defaults to ``'tent'``.
        params (str | dict, optional): What the learning methods tune (:mod:`mmnorm.tta.params`):
            ``'norm'``, ``'all'`` or ``dict(select=..., include=[...], exclude=[...])``. None: the
            method's default (tent / eata ``'norm'``; sar ``'norm'`` without the top blocks;
            cotta ``'all'``).
        prior (float): ``N_0`` of ``'prior'``, in samples, >= 0. Defaults to 16.
        optimizer (dict, optional): A ``torch.optim`` class name as ``type`` and its arguments.
            Defaults to ``DEFAULT_OPTIMIZERS[method]`` (tent Adam lr 1e-3; sar / eata SGD lr 2.5e-4
            momentum 0.9; cotta Adam lr 7.5e-6).
        steps (int): Steps per batch, >= 1. Defaults to 1.
        episodic (bool): Return to the source state after every batch. Defaults to False
            (continual).
        predict_after_update (bool): ``'tent'`` / ``'sar'`` / ``'eata'``: predict with one more
            forward after the batch's last update (else, as the papers, the predictions of the
            first adaptation forward of the batch's last step). Defaults to False.
        reliable, reset_threshold, reset_momentum, reset_signal, reset_every: ``'tent'``'s
            safeguards (:mod:`mmnorm.tta.safeguards`): reliable-sample fraction in (0, 1]; collapse
            reset threshold in (0, 1), EMA momentum in (0, 1], signal ``'marginal'`` or
            ``'entropy'``; periodic reset. Defaults: None, None, 0.1, ``'marginal'``, None.
        sar_rho (float): SAM radius ``ρ`` > 0. Defaults to 0.05.
        sar_margin (float): ``E_0 = sar_margin · ln K``, in (0, 1]. Defaults to 0.4.
        sar_reset (float): Recovery threshold of the loss EMA, > 0. Defaults to 0.2.
        sar_momentum (float): EMA weight of the old value, in (0, 1). Defaults to 0.9.
        eata_margin (float): ``E_0 = eata_margin · ln K``, in (0, 1]. Defaults to 0.4.
        eata_redundancy (float, optional): Cosine margin ``ε`` in (0, 1]; None: no redundancy
            filter. Defaults to 0.05.
        eata_momentum (float): Running-prediction weight of the old value, in (0, 1). Defaults
            to 0.9.
        fisher_alpha (float): ``α`` of the Fisher term, >= 0. Defaults to 2000.
        fisher_loader (iterable, optional): ``'eata'``: batches (like the test batches) to
            estimate the Fisher information from, once, here; None: ETA. Defaults to None.
        cotta_momentum (float): Teacher EMA ``α`` in (0, 1). Defaults to 0.999.
        cotta_restore (float): Stochastic-restore probability in [0, 1]. Defaults to 0.01.
        cotta_threshold (float): Anchor-confidence threshold in [0, 1]. Defaults to 0.69.
        cotta_scales (tuple[float]): View scales, each > 0. Defaults to 0.5, 0.75, ..., 2.0.
        cotta_flip (bool): Add horizontally flipped views. Defaults to True.
        cotta_augment (bool): Use the views at all. Defaults to True.
        seed (int): Seed of CoTTA's restore generator. Defaults to 0.
        num_classes (int, optional): Classes ``K`` of the logits (segmentors: read from the decode
            head); needed by ``'eata'`` on a plain module, and by a rank that calls
            :meth:`idle_step` before it saw a batch. Defaults to None.
        logger (str, optional): ``print_log`` logger for reset events; None: silent. Defaults to
            ``'current'``.

    Raises:
        ValueError: Bad arguments; no norm layer to adapt; a learning method on a model without
            class logits (detectors).
    """

    def __init__(self,
                 model: nn.Module,
                 method: str = 'tent',
                 *,
                 params=None,
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
                 sar_rho: float = 0.05,
                 sar_margin: float = 0.4,
                 sar_reset: float = 0.2,
                 sar_momentum: float = 0.9,
                 eata_margin: float = 0.4,
                 eata_redundancy: Optional[float] = 0.05,
                 eata_momentum: float = 0.9,
                 fisher_alpha: float = 2000.0,
                 fisher_loader=None,
                 cotta_momentum: float = 0.999,
                 cotta_restore: float = 0.01,
                 cotta_threshold: float = 0.69,
                 cotta_scales=DEFAULT_SCALES,
                 cotta_flip: bool = True,
                 cotta_augment: bool = True,
                 seed: int = 0,
                 num_classes: Optional[int] = None,
                 logger: Optional[str] = 'current') -> None:
        if optimizer is None:
            optimizer = DEFAULT_OPTIMIZERS.get(method, DEFAULT_OPTIMIZER)
        optimizer = dict(optimizer)
        check_method_arguments(
            method, METHODS, prior=prior, optimizer=optimizer, steps=steps, num_classes=num_classes)
        self.options = check_method_options(
            params=params,
            sar_rho=sar_rho,
            sar_margin=sar_margin,
            sar_reset=sar_reset,
            sar_momentum=sar_momentum,
            eata_margin=eata_margin,
            eata_redundancy=eata_redundancy,
            eata_momentum=eata_momentum,
            fisher_alpha=fisher_alpha,
            cotta_momentum=cotta_momentum,
            cotta_restore=cotta_restore,
            cotta_threshold=cotta_threshold,
            cotta_scales=cotta_scales,
            cotta_flip=cotta_flip,
            cotta_augment=cotta_augment,
            seed=seed)
        self.model = model.module if is_model_wrapper(model) else model
        self.method = method
        self.learning = method not in STATISTICS_METHODS
        self.prior = float(prior)
        self.steps = steps
        self.episodic = bool(episodic)
        self.predict_after_update = bool(predict_after_update)
        if self.predict_after_update and method == 'cotta':
            raise ArgumentError("predict_after_update does not apply to method='cotta' (its "
                                "predictions are the teacher's); leave it False")
        self.reliable = check_fraction(reliable, 'reliable', closed_right=True)
        if reset_signal not in RESET_SIGNALS:
            raise ArgumentError(
                f'reset_signal must be one of {RESET_SIGNALS}, got {reset_signal!r}')
        self.reset_signal = reset_signal
        self.monitor = CollapseMonitor(reset_threshold, reset_momentum, reset_every)
        self.logger = logger
        self.layers, self.leaves, self.left_alone = statistics_leaves(self.model)
        decode_head = getattr(self.model, 'decode_head', None)
        self.num_classes = num_classes or getattr(decode_head, 'num_classes', None)
        self.params: List[nn.Parameter] = []
        self.param_names: List[str] = []
        self.optimizer = None
        self.algorithm = None  # sar / eata / cotta: their step (callable)
        self.teacher = self.anchor = None  # cotta's copies
        self._prediction = None  # a prediction :meth:`prepare` made for the test loop's forward
        if self.learning:
            self._init_learning(method, optimizer, params, fisher_loader)
        elif not self.layers:
            raise ValueError(
                f"TestTimeAdapter(method={method!r}): {type(self.model).__name__} has no BN-like "
                f'norm layer to adapt (left alone: {self.left_alone or "none"}); the statistics '
                "methods need BN, SyncBN, AdaBN, IBN, PBN or RN layers; LayerNorm / GroupNorm "
                "models adapt with 'tent', 'sar', 'eata' or 'cotta'")
        self.num_steps = self.num_resets = 0
        self._pending: Optional[torch.Tensor] = None  # reduced sums of a step not yet applied
        self.history: List[Dict[str, Any]] = []  # one entry per step

    def _init_learning(self, method: str, optimizer: dict, params, fisher_loader) -> None:
        if isinstance(self.model, BaseModel) and not _is_segmentor(self.model):
            raise ValueError(
                f'method={method!r} learns from class logits (an mmseg segmentor\'s decode head, '
                f'or a plain nn.Module returning (N, K, *) logits); {type(self.model).__name__} '
                "gives none; use the statistics methods 'bn' or 'prior' (they work on any mmdet "
                'detector)')
        params = DEFAULT_PARAMS[method] if params is None else params
        if params == 'sar':
            params = dict(select='norm', exclude=sar_top_blocks(self.model))
        named = select_parameters(self.model, self.layers, params)
        if not named:
            raise ValueError(
                f'TestTimeAdapter(method={method!r}): params={params!r} selects no parameter of '
                f'{type(self.model).__name__}: no affine parameters to tune (norm layers with '
                f'affine: none; BN-like layers left alone: {self.left_alone or "none"}); use '
                "params='all', a model with BN / LN / GN / affine IN layers, or the statistics "
                "methods 'bn' / 'prior'")
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        kwargs = dict(optimizer)
        self.optimizer = getattr(torch.optim, kwargs.pop('type'))(self.params, **kwargs)
        self._source = [p.detach().clone() for p in self.params]
        self._optim_state = copy.deepcopy(self.optimizer.state_dict())
        opts = self.options
        if method == 'sar':
            self.algorithm = SARStep(self.params, self.optimizer, opts['sar_rho'],
                                     opts['sar_margin'],
                                     RecoveryMonitor(opts['sar_reset'], opts['sar_momentum']))
        elif method == 'eata':
            if self.num_classes is None:
                raise ArgumentError(
                    "method='eata' needs the number of classes K (its entropy margin and running "
                    f'prediction): {type(self.model).__name__} has no decode head; pass '
                    'num_classes=K')
            fisher = None
            if fisher_loader is not None:
                with self.session(), torch.enable_grad():
                    fisher = fisher_information(self.params, fisher_loader,
                                                lambda batch: self._logits(batch)[:2])
            self.algorithm = EATAStep(self.params, self.optimizer, opts['eata_margin'],
                                      self.num_classes, opts['eata_redundancy'],
                                      opts['eata_momentum'], fisher, self._source,
                                      opts['fisher_alpha'])
        elif method == 'cotta':
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            if opts['cotta_augment']:
                self.anchor = copy.deepcopy(self.model).eval().requires_grad_(False)
            teacher_params = dict(self.teacher.named_parameters())
            self.algorithm = CoTTAStep(
                self.params,
                self.optimizer, [teacher_params[n] for n in self.param_names],
                self._source,
                momentum=opts['cotta_momentum'],
                restore=opts['cotta_restore'],
                threshold=opts['cotta_threshold'],
                scales=opts['cotta_scales'],
                flip=opts['cotta_flip'],
                augment=opts['cotta_augment'],
                seed=opts['seed'])

    # -- public API --------------------------------------------------------------------------------
    def adapt(self, batch: Any) -> Any:
        """Adapts on ``batch`` and returns the model's predictions for it (``test_step``'s output
        for mmengine models, the output tensor for plain modules). Collective under the learning
        methods (every rank calls it, or :meth:`idle_step`, the same number of times)."""
        with self.session():
            if not self.learning:
                with torch.no_grad():
                    return self._predict(batch)
            try:
                if self.method == 'tent':
                    for _ in range(self.steps):
                        with torch.enable_grad():
                            logits, valid, finish = self._logits(batch)
                            self._backward(logits, valid)
                        self._apply_step()
                    prediction = finish(logits.detach())
                else:
                    prediction = self._algorithm_steps(batch)
                if self.predict_after_update:
                    with torch.no_grad():
                        return self._predict(batch)
                return prediction
            finally:
                if self.episodic:
                    self.reset()

    def session(self) -> 'AdaptationSession':
        """The context of one adaptation: the whole model in eval mode, the statistics mode on
        (all methods but ``'cotta'``, which keeps the source statistics as its authors'
        segmentation code), only the tuned parameters requiring gradients, and a forward hook that
        hands the test loop the prediction :meth:`prepare` made (sar / eata / cotta); everything
        restored on exit. :meth:`adapt` opens one per batch; a caller that predicts itself opens
        one around :meth:`prepare`, its prediction and :meth:`finish`."""
        return AdaptationSession(self)

    def prepare(self, batch: Any) -> None:
        """What :meth:`adapt` does on ``batch`` before its prediction, for a caller that predicts
        with the model's own ``test_step`` inside :meth:`session`
        (:class:`~mmnorm.engine.hooks.TestTimeAdaptHook`).

        ``'tent'``: the ``steps`` forwards and backwards; the last update waits for :meth:`finish`
        (unless ``predict_after_update``), so the caller's prediction sees the parameters of the
        last adaptation forward, as :meth:`adapt`'s does. ``'sar'`` / ``'eata'`` / ``'cotta'``: all
        steps; the prediction :meth:`adapt` would return waits in the session's forward hook,
        which returns it from the caller's ``test_step`` in place of the model's output (unless
        ``predict_after_update``). A no-op for the statistics methods. Collective under the
        learning methods.
        """
        if not self.learning:
            return
        if self.method != 'tent':
            prediction = self._algorithm_steps(batch)
            if not self.predict_after_update:
                self._prediction = prediction
            return
        for step in range(self.steps):
            with torch.enable_grad():
                logits, valid, _ = self._logits(batch)
                self._backward(logits, valid)
            if step + 1 < self.steps or self.predict_after_update:
                self._apply_step()

    def finish(self) -> None:
        """Completes a :meth:`prepare`: applies the waiting update and, if ``episodic``, resets."""
        self._prediction = None
        if self._pending is not None:
            self._apply_step()
        if self.learning and self.episodic:
            self.reset()

    def take_prediction(self) -> Any:
        """The prediction :meth:`prepare` left for the caller's forward (once), or None."""
        prediction, self._prediction = self._prediction, None
        return prediction

    def idle_step(self) -> None:
        """One step without a batch (a rank that ran out of batches): takes part in the
        reductions with zeros and applies the same update as the other ranks. A no-op for the
        statistics methods."""
        if not self.learning:
            return
        if self.method == 'tent' and self.num_classes is None:
            raise RuntimeError(
                'TestTimeAdapter.idle_step before any batch: pass num_classes= so the reductions '
                'have the same size on every rank')
        with self.session(), torch.enable_grad():
            for _ in range(self.steps):
                if self.method == 'tent':
                    self._reduce_and_backward(
                        None, torch.zeros(3 + self.num_classes, dtype=torch.float64))
                    self._apply_step()
                else:
                    self._record(self.algorithm(None)[1])
        if self.episodic:
            self.reset()

    def reset(self) -> None:
        """Back to the exact source parameters and the optimizer's initial state; the collapse
        monitor and the methods' own state (SAR's EMA, EATA's running prediction, CoTTA's
        teacher and restore generator) restart."""
        if self.learning:
            with torch.no_grad():
                for p, source in zip(self.params, self._source):
                    p.copy_(source)
                    p.grad = None
                for t, source in zip(getattr(self.algorithm, 'teacher', ()), self._source):
                    t.copy_(source)
            self.optimizer.load_state_dict(copy.deepcopy(self._optim_state))
            if self.algorithm is not None:
                self.algorithm.restart()
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

    def _inputs(self, batch: Any) -> Tuple[torch.Tensor, Optional[list], Optional[list]]:
        """``(inputs (N, C, H, W), image metas or None (plain modules), data samples or None)``."""
        if not isinstance(self.model, BaseModel):
            return prepare_batch(self.model, batch, self.device)[0][0], None, None
        data = self.model.data_preprocessor(batch, False)
        inputs, samples = data['inputs'], data.get('data_samples')
        if samples is not None:
            metas = [s.metainfo for s in samples]
        else:
            shape = tuple(inputs.shape[2:])
            metas = [
                dict(ori_shape=shape, img_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])
            ] * inputs.shape[0]
        return inputs, metas, samples

    def _class_logits(self, module: nn.Module, inputs: torch.Tensor,
                      metas: Optional[list]) -> torch.Tensor:
        """Class logits (N, K, *) of ``module`` (the model or a copy of it) on ``inputs``;
        segmentors: ``inference`` (image-size logits) with the images' ``metas``."""
        if metas is None:
            logits = module(inputs)
            check_class_logits(logits, f'{type(module).__name__}.forward')
            return logits
        logits = module.inference(inputs, metas)
        check_class_logits(logits, f'{type(module).__name__}.inference')
        return logits

    def _logits(
            self,
            batch: Any,
            prepared: Optional[tuple] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Callable]:
        """``(logits (N, K, *), valid (N, *) bool or None, finish)``; ``finish(detached logits)`` ->
        predictions. ``prepared``: :meth:`_inputs` of ``batch``, if already known."""
        inputs, metas, samples = prepared or self._inputs(batch)
        logits = self._class_logits(self.model, inputs, metas)
        if metas is None:
            return logits, None, lambda detached: detached
        valid = valid_pixel_mask((logits.shape[0], ) + tuple(logits.shape[2:]),
                                 metas if samples else None, logits.device)
        return logits, valid, lambda detached: self.model.postprocess_result(detached, samples)

    def _algorithm_steps(self, batch: Any) -> Any:
        """The ``steps`` steps of sar / eata / cotta on ``batch``; returns the predictions of the
        last step (sar / eata: its first forward's; cotta: the teacher's pseudo-labels, as log
        probabilities for a segmentor's ``postprocess_result``)."""
        prepared = self._inputs(batch)
        inputs, metas, _ = prepared
        finish = None

        def forward():
            nonlocal finish
            logits, valid, finish = self._logits(batch, prepared)
            return logits, valid

        def view_metas(x):  # a rescaled view: metas of its own size (None: plain modules)
            if metas is None or x.shape == inputs.shape:
                return metas
            shape = tuple(x.shape[2:])
            return [dict(m, img_shape=shape, pad_shape=shape) for m in metas]

        for _ in range(self.steps):
            with torch.enable_grad():  # the test loop runs its hooks under no_grad
                if self.method == 'cotta':
                    views = (forward, lambda x: self._class_logits(self.teacher, x, view_metas(x)),
                             lambda x: self._class_logits(self.anchor, x, view_metas(x)), inputs)
                    probs, record = self.algorithm(views)
                    output = probs.clamp_min(1e-12).log()
                else:
                    output, record = self.algorithm(forward)
            self._record(record)
        return finish(output)

    def _record(self, record: dict) -> None:
        """Counts a sar / eata / cotta step, applies SAR's recovery, keeps the record."""
        self.num_steps += 1
        record = dict(record, step=self.num_steps)
        if record.get('reset'):
            record['reset'] = (f"loss EMA {record['ema']:.3f} < {self.options['sar_reset']} "
                               '(SAR model recovery)')
            self.reset()
            self.num_resets += 1
            if self.logger is not None:
                print_log(
                    f'TestTimeAdapter: reset to the source state at step {self.num_steps}: '
                    f"{record['reset']}",
                    logger=self.logger)
        else:
            record['reset'] = None
        self.history.append(record)

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
    the statistics mode on (:func:`~mmnorm.tta.norm_modes.statistics_mode`; not under
    ``'cotta'``), only the tuned parameters requiring gradients, a forward hook on the model that
    returns :meth:`TestTimeAdapter.take_prediction` when one waits; everything restored on exit."""

    def __init__(self, adapter: TestTimeAdapter):
        self.adapter = adapter
        self._stack = ExitStack()

    def __enter__(self) -> 'AdaptationSession':
        adapter, model = self.adapter, self.adapter.model
        self.modes = [(m, m.training) for m in model.modules()]
        for module, _ in self.modes:
            module.training = False
        self.flags = None
        if adapter.learning:
            tuned = {id(p) for p in adapter.params}
            self.flags = [(p, p.requires_grad) for p in model.parameters()]
            for p, _ in self.flags:
                p.requires_grad_(id(p) in tuned)
        if adapter.method != 'cotta':
            mode = 'prior' if adapter.method == 'prior' else 'bn'
            self._stack.enter_context(statistics_mode(model, adapter.leaves, mode, adapter.prior))
        if adapter.learning and adapter.method != 'tent':
            handle = model.register_forward_hook(
                lambda module, args, output: adapter.take_prediction())
            self._stack.callback(handle.remove)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stack.close()
        for module, flag in self.modes:
            module.training = flag
        for p, flag in self.flags or ():
            p.requires_grad_(flag)
