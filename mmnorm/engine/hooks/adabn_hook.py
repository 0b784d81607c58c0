"""AdaBNHook: recalibrate the BN statistics on target data before testing / validation (a scheduler
over :func:`mmnorm.recalibrate_bn`)."""
import os.path as osp
from typing import Optional, Sequence, Union

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu
from torch.utils.data import DataLoader

from ...models.norms.adabn import (TEST_MODES, AdaBN, adabn_selection, restore_adabn_selection,
                                   set_adabn_domain)
from ...recalibration import MODES, recalibrate_bn
from ...validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = ['AdaBNHook']

LOOPS = ('val', 'test')


def dataset_location(loader_cfg: dict) -> str:
    """``data_root`` / ``data_prefix`` / ``ann_file`` of a dataloader config's dataset (and of
    wrapped datasets)."""
    dataset = loader_cfg.get('dataset', {})
    while 'dataset' in dataset and isinstance(dataset['dataset'], dict):  # e.g. RepeatDataset
        dataset = dataset['dataset']
    keys = ('data_root', 'data_prefix', 'ann_file')
    found = ', '.join(f'{k}={dataset[k]!r}' for k in keys if dataset.get(k))
    return found or f'the dataset {dataset.get("type", dataset)!r}'


@HOOKS.register_module()
class AdaBNHook(Hook):
    """Re-estimates every BN-like layer's statistics on target data before the test and/or val
    epochs (AdaBN).

    ``custom_hooks = [dict(type='AdaBNHook', dataloader='test', num_samples=500)]``

    * Data: the runner's test or val loader (transductive AdaBN, as in the paper), or any dataloader
      config / a ``DataLoader`` (e.g. an unlabeled target split). Padded repeats of the distributed
      samplers are not counted (see :func:`mmnorm.batches.real_samples_on_rank`); images of mixed
      sizes are regrouped into batches of one size, nothing padded
      (:func:`mmnorm.batches.batches_by_size`).
    * Priority ``BELOW_NORMAL``: runs after ``EMAHook`` (``NORMAL``) has swapped the EMA weights in,
      so the statistics are those of the weights being evaluated.
    * Validation during training: the model's buffers (and the AdaBN domain selection) are
      snapshotted before and restored right after the last val batch, before ``EMAHook`` swaps its
      weights back in ``after_val_epoch`` (``after_val_epoch`` restores too if the val loader was
      empty), so training statistics are not corrupted.
    * Test: the recalibrated statistics stay; ``save_checkpoint`` writes a plain
      ``{'meta', 'state_dict'}`` checkpoint (rank 0) that ``tools/test.py`` loads.

    Args:
        dataloader (str | dict | DataLoader): ``'test'``, ``'val'``, a dataloader config (built with
            ``Runner.build_dataloader``) or a ``DataLoader``. Defaults to ``'test'``.
        num_samples (int, optional): Samples to use, summed over ranks; None: the whole loader.
            Defaults to None.
        num_iters (int, optional): Batches per rank; None: no limit. Defaults to None.
        domain (str, optional): Select this domain in every :class:`AdaBN` layer first (its
            statistics receive the recalibration and normalise at eval). Defaults to None (keep each
            layer's ``eval_domain``).
        test_mode (str, optional): Also set the AdaBN layers' test mode (``'running'``, ``'batch'``,
            ``'blend'``). Defaults to None. ``domain`` / ``test_mode`` on a model without AdaBN
            layers is an error (at ``before_run``), not silently ignored.
        before (str | Sequence[str]): ``'val'``, ``'test'`` or both. Defaults to
            ``('val', 'test')``.
        mode (str): ``'one_pass'`` or ``'layerwise'`` (see :func:`mmnorm.recalibrate_bn`). Defaults
            to ``'one_pass'``.
        save_checkpoint (str, optional): After the test-time recalibration, save the model here
            (relative to ``work_dir``). Defaults to None.
        progress (bool): Progress bar on rank 0. Defaults to True.
    """
    priority = 'BELOW_NORMAL'

    def __init__(self,
                 dataloader: Union[str, dict, DataLoader] = 'test',
                 num_samples: Optional[int] = None,
                 num_iters: Optional[int] = None,
                 domain: Optional[str] = None,
                 test_mode: Optional[str] = None,
                 before: Union[str, Sequence[str]] = LOOPS,
                 mode: str = 'one_pass',
                 save_checkpoint: Optional[str] = None,
                 progress: bool = True) -> None:
        if isinstance(dataloader, str):
            if dataloader not in LOOPS:
                raise ArgumentError(
                    f'dataloader must be "test", "val", a dataloader config or a DataLoader, '
                    f'got {dataloader!r}')
        elif not isinstance(dataloader, (dict, DataLoader)):
            raise ArgumentTypeError(
                'dataloader must be "test", "val", a dataloader config (dict) or a DataLoader, '
                f'got {type(dataloader).__name__} {dataloader!r}')
        check_positive_int(num_samples, 'num_samples', optional=True)
        check_positive_int(num_iters, 'num_iters', optional=True)
        before = (before, ) if isinstance(before, str) else tuple(before)
        if not before or any(b not in LOOPS for b in before):
            raise ArgumentError(f'before must be "val", "test" or both, got {before!r}')
        if mode not in MODES:
            raise ArgumentError(f'mode must be one of {MODES}, got {mode!r}')
        if domain is not None and not isinstance(domain, str):
            raise ArgumentError(f'domain must be a domain name (str) or None, got {domain!r}')
        if test_mode is not None and test_mode not in TEST_MODES:
            raise ArgumentError(f'test_mode must be one of {TEST_MODES} or None, got {test_mode!r}')
        self.dataloader = dataloader
        self.num_samples = num_samples
        self.num_iters = num_iters
        self.domain = domain
        self.test_mode = test_mode
        self.before = before
        self.mode = mode
        self.save_checkpoint = save_checkpoint
        self.progress = progress
        self._built_loader = None
        self._snapshot = None

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def _loader(self, runner):
        if isinstance(self.dataloader, DataLoader):
            return self.dataloader
        if isinstance(self.dataloader, dict):
            if self._built_loader is None:
                self._built_loader = self._build_loader(runner)
            return self._built_loader
        loop = runner.test_loop if self.dataloader == 'test' else runner.val_loop
        if loop is None:
            raise ValueError(
                f'AdaBNHook(dataloader={self.dataloader!r}): the runner has no {self.dataloader} '
                'loop; configure it or pass a dataloader config')
        return loop.dataloader

    def _build_loader(self, runner) -> DataLoader:
        """Builds the configured loader; an empty dataset is reported with the paths it was read
        from."""
        try:
            loader = runner.build_dataloader(self.dataloader, seed=runner.seed)
        except FileNotFoundError as err:
            raise ValueError(
                f'AdaBNHook: the dataloader config reads {dataset_location(self.dataloader)}, but '
                f'{err.filename} does not exist; point data_root / data_prefix / ann_file at the '
                'target images') from None
        except ValueError as err:  # mmengine serialises an empty data list with np.concatenate
            if 'need at least one array' not in str(err):
                raise
            loader = None
        if loader is None or len(loader.dataset) == 0:
            raise ValueError(
                'AdaBNHook: the dataloader config found no sample in '
                f'{dataset_location(self.dataloader)}; point data_root / data_prefix / ann_file at '
                'the target images')
        return loader

    def _recalibrate(self, runner, loop: str) -> None:
        model = self._model(runner)
        set_adabn_domain(model, self.domain, self.test_mode)
        print_log(
            f'AdaBNHook: recalibrating BN statistics before {loop} on the {self._describe()} data',
            logger='current')
        was_training = runner.model.training
        runner.model.eval()  # the val loop switches to eval only after before_val_epoch
        try:
            recalibrate_bn(
                runner.model,
                self._loader(runner),
                self.num_iters,
                num_samples=self.num_samples,
                mode=self.mode,
                progress=self.progress)
        finally:
            runner.model.train(was_training)

    def _describe(self) -> str:
        if isinstance(self.dataloader, str):
            return self.dataloader
        return 'configured' if isinstance(self.dataloader, dict) else 'given'

    # -- hook points -------------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        if self.domain is None and self.test_mode is None:
            return
        # fail before any work for an unknown domain, or for a selection no layer would receive
        layers = [m for m in self._model(runner).modules() if isinstance(m, AdaBN)]
        if not layers:
            raise ValueError(
                f'AdaBNHook(domain={self.domain!r}, test_mode={self.test_mode!r}): the model has '
                'no AdaBN layer to select in; drop domain= / test_mode= (plain BN layers are '
                "recalibrated without them) or build the model with norm_cfg=dict(type='AdaBN')")
        for layer in layers:
            if self.domain is not None:
                layer.check_domain(self.domain, 'AdaBNHook domain')

    def before_val_epoch(self, runner) -> None:
        if 'val' not in self.before:
            return
        model = self._model(runner)
        self._snapshot = dict(
            buffers=[(buf, buf.detach().clone()) for buf in model.buffers()],
            adabn=adabn_selection(model))
        self._recalibrate(runner, 'val')

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._snapshot is not None and batch_idx == len(runner.val_loop.dataloader) - 1:
            self._restore()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._snapshot is None:
            return
        with torch.no_grad():
            for buf, saved in self._snapshot['buffers']:
                buf.copy_(saved)
        restore_adabn_selection(self._snapshot['adabn'])
        self._snapshot = None

    def before_test_epoch(self, runner) -> None:
        if 'test' not in self.before:
            return
        self._recalibrate(runner, 'test')
        if self.save_checkpoint is not None and is_main_process():
            path = self.save_checkpoint
            if not osp.isabs(path):
                path = osp.join(runner.work_dir, path)
            meta = dict(
                adabn=dict(
                    dataloader=self._describe(),
                    num_samples=self.num_samples or -1,
                    mode=self.mode,
                    domain=self.domain or ''))
            save_checkpoint(
                dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(runner.model))), path)
            print_log(f'AdaBNHook: saved the recalibrated checkpoint to {path}', logger='current')
