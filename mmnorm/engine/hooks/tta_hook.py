"""TestTimeAdaptHook: online test-time adaptation in the test loop (a thin scheduler over
:class:`mmnorm.tta.TestTimeAdapter`)."""
from contextlib import ExitStack
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner.amp import autocast

from ...tta import METHODS, TestTimeAdapter
from ...tta.distributed import max_over_ranks
from ...tta.validation import check_adapter_arguments
from ...validation import ArgumentError

__all__ = ['TestTimeAdaptHook']


@HOOKS.register_module()
class TestTimeAdaptHook(Hook):
    """Adapts the model on every test batch before the test loop predicts it (``tools/test.py``,
    ``dist_test.sh``).

    ``custom_hooks = [dict(type='TestTimeAdaptHook', method='tent', reliable=0.4)]``

    The test loop's own ``model.test_step`` predicts; the hook only brackets it:

    * ``before_test_epoch`` builds the adapter on the (unwrapped) model;
    * ``before_test_iter`` opens an adaptation session (:meth:`~mmnorm.tta.TestTimeAdapter.session`:
      the statistics mode, eval mode, the tuned parameters) and runs
      :meth:`~mmnorm.tta.TestTimeAdapter.prepare` on the batch (``'tent'``: the steps, under the
      loop's ``fp16`` autocast; the last update waits, so the loop predicts with the parameters of
      the last adaptation forward, as :meth:`~mmnorm.tta.TestTimeAdapter.adapt` does; ``'sar'``,
      ``'eata'``, ``'cotta'``: all steps, and the session's forward hook returns the adapter's
      prediction from the loop's ``test_step``, so the loop scores what ``adapt`` returns);
    * ``after_test_iter`` applies the waiting update (:meth:`~mmnorm.tta.TestTimeAdapter.finish`,
      episodic reset included) and closes the session;
    * ``after_test_epoch`` logs the steps and resets and (``restore=True``) puts the source
      parameters back.

    The cost of predicting through ``test_step``: under the learning methods without
    ``predict_after_update`` one no-grad forward per batch more than
    :meth:`~mmnorm.tta.TestTimeAdapter.adapt` (which reuses the adaptation forward's logits).

    Distributed: every rank adapts on its own batches and all ranks keep one model; a rank with
    fewer batches (``DefaultSampler(round_up=False)``) takes the missing steps after its last batch
    (:meth:`~mmnorm.tta.TestTimeAdapter.idle_step`), so the ranks' collectives stay matched.
    Priority ``BELOW_NORMAL``: after ``EMAHook`` swapped its weights in, after ``AdaBNHook``
    recalibrated.

    Args:
        method (str): ``'bn'``, ``'prior'``, ``'tent'``, ``'sar'``, ``'eata'`` or ``'cotta'``.
            Defaults to ``'tent'``.
        restore (bool): Back to the source state after the test epoch. Defaults to True.
        **adapter_args: Arguments of :class:`~mmnorm.tta.TestTimeAdapter` (``params``,
            ``prior``, ``optimizer``, ``steps``, ``episodic``, ``predict_after_update``, the
            safeguards, ``sar_*``, ``eata_*``, ``fisher_alpha``, ``cotta_*``, ``seed``,
            ``num_classes``), checked here (those that need no model) and when the adapter is
            built. ``fisher_loader`` (``'eata'``) may be a dataloader config dict (built with
            ``Runner.build_dataloader`` before the test epoch, e.g. a few hundred source
            images); without it the method is ETA.
    """
    priority = 'BELOW_NORMAL'

    def __init__(self, method: str = 'tent', restore: bool = True, **adapter_args) -> None:
        if method not in METHODS:
            raise ArgumentError(
                f'TestTimeAdaptHook method must be one of {METHODS}, got {method!r}')
        check_adapter_arguments(method, adapter_args)  # before any model or checkpoint is built
        self.method = method
        self.restore = restore
        self.adapter_args = adapter_args
        self.adapter: Optional[TestTimeAdapter] = None
        self._session = ExitStack()
        self._steps_to_take = 0
        self.summary: Optional[dict] = None  # after a test epoch: method, optimizer steps, resets

    def before_test_epoch(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        args = dict(self.adapter_args)
        if isinstance(args.get('fisher_loader'), dict):  # EATA's Fisher loader, from its config
            args['fisher_loader'] = runner.build_dataloader(args['fisher_loader'])
        self.adapter = TestTimeAdapter(model, self.method, **args)
        own = len(runner.test_loop.dataloader)
        learning = self.adapter.learning
        self._steps_to_take = max_over_ranks(own, self.adapter.device) if learning else own
        tuning = f', tuning {len(self.adapter.params)} parameters' if learning else ''
        print_log(
            f'TestTimeAdaptHook: {self.method} on {len(self.adapter.layers)} norm layers{tuning}',
            logger='current')
        if own == 0:
            self._pad(0)

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.adapter is None:
            return
        self._session.enter_context(self.adapter.session())
        with autocast(enabled=getattr(runner.test_loop, 'fp16', False)):
            self.adapter.prepare(data_batch)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.adapter is None:
            return
        self.adapter.finish()
        self._session.close()
        if batch_idx == len(runner.test_loop.dataloader) - 1:
            self._pad(batch_idx + 1)

    def _pad(self, taken: int) -> None:
        """Idle steps until this rank has taken as many as the rank with the most batches."""
        for _ in range(self._steps_to_take - taken):
            self.adapter.idle_step()

    def after_test_epoch(self, runner, metrics=None) -> None:
        if self.adapter is None:
            return
        self._session.close()
        adapter = self.adapter
        self.summary = dict(
            method=adapter.method, steps=adapter.num_steps, resets=adapter.num_resets)
        print_log(
            f'TestTimeAdaptHook: {adapter.method} done; {adapter.num_steps} optimizer steps, '
            f'{adapter.num_resets} resets',
            logger='current')
        if self.restore:
            adapter.reset()
        self.adapter = None
