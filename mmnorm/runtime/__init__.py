"""Fixes to today's torch / mmengine that mmnorm's tools apply, and :func:`setup` for other entry
points.

``import mmnorm`` only registers. The fixes change global state of torch and mmengine, so they are
applied by an
explicit call: mmnorm's ``tools/`` call :func:`setup` first; a script of your own calls
``mmnorm.runtime.setup()``;
a config run by a toolbox's own ``tools/train.py`` opts in with
``custom_imports = dict(imports=['mmnorm', 'mmnorm.runtime.enable'])`` (see
:mod:`mmnorm.runtime.enable`).
"""
from .atomic_io import (AtomicLocalBackend, atomic_write_bytes, use_atomic_local_writes,
                        write_metrics_json)
from .checkpoint import (CheckpointFileError, allow_mmengine_checkpoints, check_checkpoint_file,
                         restricted_getattr)
from .config import TOOLBOXES, get_toolbox

__all__ = [
    'setup', 'AtomicLocalBackend', 'atomic_write_bytes', 'use_atomic_local_writes',
    'write_metrics_json', 'allow_mmengine_checkpoints', 'CheckpointFileError',
    'check_checkpoint_file', 'restricted_getattr', 'TOOLBOXES', 'get_toolbox'
]


def setup() -> None:
    """Applies mmnorm's two runtime fixes (idempotent).

    1. :func:`allow_mmengine_checkpoints`: torch's weights-only unpickler (the default of
    ``torch.load`` since
       torch 2.6) accepts what mmengine Runner checkpoints hold, so ``--resume`` / ``load_from``
       work without
       ``weights_only=False``.
    2. :func:`use_atomic_local_writes`: mmengine's ``local`` file backend writes checkpoints
    through a temporary
       file and an atomic rename, so a killed run never leaves a truncated ``iter_N.pth``.
    """
    allow_mmengine_checkpoints()
    use_atomic_local_writes()
