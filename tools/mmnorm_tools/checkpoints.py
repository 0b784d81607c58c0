"""Checkpoint plumbing of the tools: the safe checkpoint hook, ``--strict-load``, ``--resume``."""
import argparse
import os

from mmengine.config import Config

__all__ = [
    'add_strict_load_argument', 'use_safe_checkpoint_hook', 'resolve_auto_resume', 'load_weights'
]


def _bool(value: str) -> bool:
    lowered = str(value).lower()
    if lowered in ('true', '1', 'yes'):
        return True
    if lowered in ('false', '0', 'no'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')


def add_strict_load_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--strict-load',
        type=_bool,
        default=True,
        metavar='true|false',
        help='refuse a checkpoint whose weights do not fit the model (missing or unexpected '
        'keys, other shapes; missing num_batches_tracked is allowed). false: warn and load what '
        'fits. Defaults to true')


def use_safe_checkpoint_hook(cfg: Config, strict_load: bool = True) -> None:
    """``default_hooks.checkpoint`` becomes ``SafeCheckpointHook`` (mmengine's ``CheckpointHook``
    arguments kept); a config without a checkpoint hook gets one that saves nothing
    (``interval=-1``) but checks loaded weights."""
    hooks = cfg.get('default_hooks') or {}
    hook = dict(hooks.get('checkpoint') or dict(type='CheckpointHook', interval=-1))
    if hook.get('type') in ('CheckpointHook', 'mmengine.CheckpointHook', 'SafeCheckpointHook'):
        hook['type'] = 'SafeCheckpointHook'
        hook['strict_load'] = strict_load
    cfg.default_hooks = dict(hooks, checkpoint=hook)


def resolve_auto_resume(cfg: Config) -> None:
    """``--resume`` without a path: the newest loadable checkpoint of the work dir, with a notice
    (printed by rank 0) when ``last_checkpoint`` is missing, empty or names a file that does not
    load; training starts from the beginning when none loads."""
    from mmnorm.runtime import find_resumable_checkpoint
    path, notice = find_resumable_checkpoint(cfg.work_dir)
    if notice and os.environ.get('RANK', '0') == '0':
        print(notice, flush=True)
    cfg.load_from = path
    cfg.resume = path is not None


def load_weights(model, path: str, strict: bool = True, what: str = 'checkpoint'):
    """Loads ``path`` into ``model`` the safe way and refuses (``strict``) weights that do not fit.

    Returns:
        The loaded checkpoint.
    """
    from mmnorm.runtime import check_weights_fit, load_checkpoint_file
    checkpoint = load_checkpoint_file(path, 'cpu', what)
    check_weights_fit(model, checkpoint, path, what, strict=strict)
    return checkpoint
