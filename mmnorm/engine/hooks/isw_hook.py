"""ISWStatisticsHook: runs ISW's statistics pass once, after a fixed number of training
iterations (a scheduler over :func:`mmnorm.models.whitening.run_isw_selection`)."""
from typing import Iterable, Optional, Union

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from torch.utils.data import DataLoader

from ...models.whitening.isw_statistics import isw_backbone, run_isw_selection
from ...validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = ['ISWStatisticsHook', 'pipeline_types']


def pipeline_types(dataset: dict) -> list:
    """Transform types of a dataset config's pipelines (wrapped datasets included)."""
    found = []
    for transform in dataset.get('pipeline', None) or []:
        if isinstance(transform, dict):
            found.append(transform.get('type'))
    for key in ('dataset', 'datasets'):
        inner = dataset.get(key)
        for sub in (inner if isinstance(inner, (list, tuple)) else [inner]):
            if isinstance(sub, dict):
                found += pipeline_types(sub)
    return found


@HOOKS.register_module()
class ISWStatisticsHook(Hook):
    """Selects and freezes the ISW masks after ``after_iter`` training iterations.

    ``custom_hooks = [dict(type='ISWStatisticsHook', after_iter=4650, dataloader=dict(...))]``

    RobustNet selects after its first ``cov_stat_epoch = 5`` epochs, i.e. after epoch index 5 (six
    epochs; GTAV's 12,403 training images at batch 16 make ~775 iterations each, so ~4650); until
    then ISW's loss is zero. The pass runs ``trials`` times over ``num_images`` images of
    ``dataloader`` with their photometric twins (its pipeline must end with ``PackSegInputs``,
    ``PhotometricTwin``); every rank selects the same mask (all-reduced statistics). Resuming at or
    past ``after_iter`` with an unselected ISW runs the pass in ``before_train``.

    Args:
        after_iter (int): Training iterations before the pass (>= 0; 0: before training).
        dataloader (dict | DataLoader): A dataloader config (built with
            ``Runner.build_dataloader``) or a ``DataLoader`` over source images with twins.
        num_images (int): Images per trial, all ranks together. Defaults to 500 (the authors').
        trials (int): Passes whose masks are intersected. Defaults to 10 (the authors').
    """
    priority = 'NORMAL'

    def __init__(self,
                 after_iter: int,
                 dataloader: Union[dict, DataLoader],
                 num_images: int = 500,
                 trials: int = 10):
        self.after_iter = check_positive_int(after_iter, 'ISWStatisticsHook after_iter', minimum=0)
        self.num_images = check_positive_int(num_images, 'ISWStatisticsHook num_images')
        self.trials = check_positive_int(trials, 'ISWStatisticsHook trials')
        if isinstance(dataloader, dict):
            if 'PhotometricTwin' not in pipeline_types(dataloader.get('dataset', {})):
                raise ArgumentError(
                    'ISWStatisticsHook: ISW needs the photometric twin of each image; add '
                    "dict(type='PhotometricTwin') after dict(type='PackSegInputs') in the "
                    'pipeline of its dataloader, got pipeline transforms '
                    f"{pipeline_types(dataloader.get('dataset', {}))}")
        elif not isinstance(dataloader, Iterable):
            raise ArgumentTypeError('ISWStatisticsHook dataloader must be a dataloader config or '
                                    f'a DataLoader, got {type(dataloader).__name__}')
        self.dataloader = dataloader
        self._loader: Optional[Iterable] = None

    def before_train(self, runner) -> None:
        backbone = isw_backbone(runner.model)
        if backbone is None:
            raise ArgumentTypeError(
                'ISWStatisticsHook needs a model whose backbone has ISW positions, e.g. '
                "backbone=dict(type='WhiteningResNetV1c', whitening=dict(type='ISW'))")
        if self.after_iter >= runner.max_iters:
            raise ArgumentError(
                f'ISWStatisticsHook after_iter={self.after_iter} is not before the end of '
                f'training (max_iters={runner.max_iters}): ISW would never select its mask')
        unselected = any(not bool(m.is_selected) for m in backbone.isw_modules().values())
        if runner.iter >= self.after_iter and unselected:
            self.select(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.after_iter:
            self.select(runner)

    def select(self, runner) -> None:
        """Runs the statistics pass and freezes the masks."""
        if self._loader is None and isinstance(self.dataloader, dict):
            self._loader = runner.build_dataloader(self.dataloader, seed=runner.seed)
        elif self._loader is None:
            self._loader = self.dataloader
        counts = run_isw_selection(runner.model, self._loader, self.num_images, self.trials)
        backbone = isw_backbone(runner.model)
        for pos, module in backbone.isw_modules().items():
            print_log(
                f'ISW at {pos!r}: {counts[module]} of '
                f'{module.num_features * (module.num_features - 1) // 2} covariance elements '
                f'selected (iteration {runner.iter + 1})',
                logger='current')
