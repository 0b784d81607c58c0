"""Fixes to today's torch / mmengine that mmnorm's tools apply, and :func:`setup` for other entry
points.

``import mmnorm`` only registers. The fixes change global state of torch and mmengine, so they are
applied by an explicit call: mmnorm's ``tools/`` call :func:`setup` first; a script of your own
calls ``mmnorm.runtime.setup()``; a config run by a toolbox's own ``tools/train.py`` opts in with
``custom_imports = dict(imports=['mmnorm', 'mmnorm.runtime.enable'])`` (see
:mod:`mmnorm.runtime.enable`).
"""
from .atomic_io import (AtomicLocalBackend, atomic_write_bytes, clean_up_on_sigterm,
                        use_atomic_local_writes, write_metrics_json)
from .checkpoint import (ALLOWED_MISSING_SUFFIXES, CheckpointFileError, check_checkpoint_file,
                         check_weights_fit, find_resumable_checkpoint, from_plain,
                         load_checkpoint_file, state_dict_mismatch, to_plain,
                         use_safe_checkpoint_loading)
from .checkpoint_hook import SafeCheckpointHook
from .config import TOOLBOXES, get_toolbox
from .errors import UserError, user_errors

__all__ = [
    'setup', 'AtomicLocalBackend', 'atomic_write_bytes', 'clean_up_on_sigterm',
    'use_atomic_local_writes', 'write_metrics_json', 'ALLOWED_MISSING_SUFFIXES',
    'CheckpointFileError', 'check_checkpoint_file', 'check_weights_fit',
    'find_resumable_checkpoint', 'from_plain', 'load_checkpoint_file', 'state_dict_mismatch',
    'to_plain', 'use_safe_checkpoint_loading', 'SafeCheckpointHook', 'TOOLBOXES', 'get_toolbox',
    'UserError', 'user_errors'
]


def setup() -> None:
    """Applies mmnorm's runtime fixes (idempotent).

    1. :func:`use_safe_checkpoint_loading`: mmengine loads local checkpoints with
       :func:`load_checkpoint_file`: weights-only, no numpy global allow-listed, mmengine Runner
       checkpoints' message hub rebuilt from validated plain numbers, crafted files refused with
       one line.
    2. :func:`use_atomic_local_writes`: mmengine's ``local`` file backend writes through a
       temporary file and an atomic rename (mode from the umask), so a killed run never leaves a
       truncated ``iter_N.pth``; :func:`clean_up_on_sigterm` removes the temporary file of a write
       that SIGTERM interrupts.
    """
    use_safe_checkpoint_loading()
    use_atomic_local_writes()
    clean_up_on_sigterm()
