"""``SafeCheckpointHook``: mmengine's ``CheckpointHook`` that never loses the last good checkpoint.

mmengine 0.10.7's hook removes the checkpoint beyond ``max_keep_ckpts`` *before* it writes the new
one and writes ``last_checkpoint`` with a plain ``open``: a run killed in between (``max_keep_ckpts
=1``) is left with no checkpoint, or a ``last_checkpoint`` naming a missing file. This hook:

* writes the new checkpoint first (atomically, through :class:`~mmnorm.runtime.AtomicLocalBackend`),
  then replaces ``last_checkpoint`` atomically, and only then removes the old checkpoints;
* saves only tensors and plain Python types (:func:`~mmnorm.runtime.to_plain`: the message hub's
  ``HistoryBuffer`` objects and numpy values become tensors and marked dicts), and records the
  process count and per-process batch size in ``meta``;
* when the run loads a checkpoint (``load_from``, ``--resume``, ``tools/test.py``), refuses one
  whose weights do not fit the model (``strict_load=True``; :func:`~mmnorm.runtime.
  check_weights_fit`) and, on ``--resume``, warns once when the total batch size changed.

mmnorm's ``tools/train.py`` and ``tools/test.py`` use it in place of ``CheckpointHook``; another
entry point names it in the config: ``default_hooks = dict(checkpoint=dict(type=
'SafeCheckpointHook', ...))``.
"""
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .atomic_io import atomic_write_bytes
from .checkpoint import check_weights_fit, to_plain

__all__ = ['SafeCheckpointHook']


def _batch_size(runner) -> Optional[int]:
    """The per-process batch size of the training data loader (built by then), or None."""
    try:
        size = runner.train_dataloader.batch_size
    except Exception:  # no training data loader (a test run)
        return None
    return size if isinstance(size, int) else None


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with a safe save order, plain-type checkpoints and load checks.

    Args:
        strict_load (bool): Refuse a loaded checkpoint whose weights do not fit the model (missing
            or unexpected keys, other shapes); ``False`` warns and loads what fits. Defaults to
            True.
        **kwargs: ``CheckpointHook``'s arguments.
    """

    def __init__(self, *args, strict_load: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(strict_load, bool):
            raise TypeError(f'strict_load must be a bool, got {strict_load!r}')
        self.strict_load = strict_load

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta['world_size'] = runner.world_size
        meta['batch_size_per_process'] = _batch_size(runner)
        for key in list(checkpoint):
            if key != 'state_dict':
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        path = runner.cfg.get('load_from') or 'checkpoint'
        check_weights_fit(runner.model, checkpoint, path, strict=self.strict_load)
        # Runner keeps its resume flag in ``_resume`` (in ``cfg`` only when built from a config)
        if runner.cfg.get('resume', False) or getattr(runner, '_resume', False) is True:
            self._warn_batch_size(runner, checkpoint, path)

    @staticmethod
    def _warn_batch_size(runner, checkpoint: dict, path: str) -> None:
        meta = checkpoint.get('meta') or {}
        old_world, old_batch = meta.get('world_size'), meta.get('batch_size_per_process')
        new_world, new_batch = runner.world_size, _batch_size(runner)
        if not all(isinstance(v, int) for v in (old_world, old_batch, new_world, new_batch)):
            return
        if old_world * old_batch != new_world * new_batch and is_main_process():
            print_log(
                f'resuming {path!r}, saved with a total batch size of {old_world * old_batch} '
                f'({old_world} processes x {old_batch}), with a total batch size of '
                f'{new_world * new_batch} ({new_world} processes x {new_batch}): the learning '
                'rate and schedule are not rescaled',
                logger='current',
                level=30)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine's order changed: save, replace ``last_checkpoint``, then remove old files."""
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        import os.path as osp
        atomic_write_bytes(
            str(self.last_ckpt).encode(), osp.join(runner.work_dir, 'last_checkpoint'))
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)
