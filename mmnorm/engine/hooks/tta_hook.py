"""TestTimeAdaptHook: online test-time adaptation in the test loop (a thin scheduler over
:class:`mmnorm.tta.TestTimeAdapter`)."""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...tta import METHODS, TestTimeAdapter
from ...tta.distributed import max_over_ranks

__all__ = ['TestTimeAdaptHook']


@HOOKS.register_module()
class TestTimeAdaptHook(Hook):
    """Adapts the model on every test batch before predicting it (``tools/test.py``, ``dist_test.sh``).

    ``custom_hooks = [dict(type='TestTimeAdaptHook', method='tent', reliable=0.4, reset_threshold=0.5)]``

    * ``before_test_epoch`` builds the adapter on the (unwrapped) model and routes the loop's ``test_step`` through
      :meth:`~mmnorm.tta.TestTimeAdapter.adapt`; ``after_test_epoch`` removes the route, logs the steps and resets,
      and (``restore=True``) puts the source parameters back.
    * Distributed: every rank adapts on its own batches and all ranks keep one model; a rank with fewer batches
      (``DefaultSampler(round_up=False)``) takes the missing steps after its last batch
      (:meth:`~mmnorm.tta.TestTimeAdapter.idle_step`), so the ranks' collectives stay matched.
    * Priority ``BELOW_NORMAL``: after ``EMAHook`` swapped its weights in, after ``AdaBNHook`` recalibrated.

    Args:
        method (str): ``'bn'``, ``'prior'`` or ``'tent'``. Defaults to ``'tent'``.
        restore (bool): Back to the source state after the test epoch. Defaults to True.
        **adapter_args: Arguments of :class:`~mmnorm.tta.TestTimeAdapter` (``prior``, ``optimizer``, ``steps``,
            ``episodic``, ``predict_after_update``, ``reliable``, ``reset_threshold``, ``reset_momentum``,
            ``reset_every``, ``num_classes``), checked when the adapter is built.
    """
    priority = 'BELOW_NORMAL'

    def __init__(self, method: str = 'tent', restore: bool = True, **adapter_args) -> None:
        if method not in METHODS:
            raise ValueError(f'TestTimeAdaptHook method must be one of {METHODS}, got {method!r}')
        self.method = method
        self.restore = restore
        self.adapter_args = adapter_args
        self.adapter: Optional[TestTimeAdapter] = None
        self._steps_to_take = 0
        self.summary: Optional[dict] = None  # after a test epoch: method, optimizer steps, resets

    def before_test_epoch(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.adapter = TestTimeAdapter(model, self.method, **self.adapter_args)
        own = len(runner.test_loop.dataloader)
        self._steps_to_take = max_over_ranks(own, self.adapter.device) if self.method == 'tent' else own
        runner.model.test_step = self.adapter.adapt  # instance attribute over the class's test_step
        print_log(
            f'TestTimeAdaptHook: {self.method} on {len(self.adapter.layers)} norm layers' +
            (f', tuning {len(self.adapter.params)} affine parameters' if self.adapter.params else ''), logger='current')
        if own == 0:
            self._pad(runner, 0)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.adapter is not None and batch_idx == len(runner.test_loop.dataloader) - 1:
            self._pad(runner, batch_idx + 1)

    def _pad(self, runner, taken: int) -> None:
        """Idle steps until this rank has taken as many as the rank with the most batches."""
        for _ in range(self._steps_to_take - taken):
            self.adapter.idle_step()

    def after_test_epoch(self, runner, metrics=None) -> None:
        if self.adapter is None:
            return
        runner.model.__dict__.pop('test_step', None)
        adapter = self.adapter
        self.summary = dict(method=adapter.method, steps=adapter.num_steps, resets=adapter.num_resets)
        print_log(
            f'TestTimeAdaptHook: {adapter.method} done; {adapter.num_steps} optimizer steps, '
            f'{adapter.num_resets} resets', logger='current')
        if self.restore:
            adapter.reset()
        self.adapter = None
