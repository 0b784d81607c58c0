"""Loading mmengine checkpoints under torch >= 2.6 without giving up weights-only unpickling.

torch >= 2.6 calls ``torch.load(..., weights_only=True)`` by default. mmengine 0.10.7 does not pass
``weights_only``, so a checkpoint written by its own Runner (which stores the message hub:
``HistoryBuffer``
objects holding numpy arrays) fails to load. Instead of turning weights-only loading off, mmnorm
allow-lists the
few globals such checkpoints contain. One of them is ``builtins.getattr`` (pickle stores the bound
statistics
methods of ``HistoryBuffer`` as ``getattr(HistoryBuffer, 'mean')``); allowing the real ``getattr``
would let a
malicious file reach any attribute of any allowed object, so it is mapped to
:func:`restricted_getattr`, which only
resolves public methods of ``HistoryBuffer``.
"""
from typing import Any, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = [
    'restricted_getattr', 'allow_mmengine_checkpoints', 'mmengine_safe_globals',
    'CheckpointFileError', 'check_checkpoint_file'
]


def restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for the weights-only unpickler: only public methods of ``HistoryBuffer``.

    Raises:
        pickle.UnpicklingError: For any other ``(obj, name)`` pair.
    """
    import pickle
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_'):
        attr = getattr(HistoryBuffer, name, None)
        if callable(attr):
            return attr
    raise pickle.UnpicklingError(
        f'mmnorm: refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) while loading '
        'a checkpoint with weights_only=True; only public HistoryBuffer methods are allowed')


def _numpy_globals() -> List[Any]:
    """numpy objects that pickled ndarrays / scalars / dtypes reference (numpy 1.x and 2.x paths)."""
    entries: List[Any] = [np.ndarray, np.dtype]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        entries.append((np.core.multiarray._reconstruct, f'{module}._reconstruct'))
        entries.append((np.core.multiarray.scalar, f'{module}.scalar'))
    # The dtype classes of every numeric / bool scalar type (numpy >= 1.25 pickles dtypes by class).
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for kind in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                     np.uint32, np.uint64, np.float16, np.float32, np.float64, np.longdouble,
                     np.complex64, np.complex128):
            cls = type(np.dtype(kind))
            entries.append((cls, f'numpy.dtypes.{cls.__name__}'))
    return entries


def _safe_globals() -> List[Any]:
    return [
        HistoryBuffer, (restricted_getattr, 'builtins.getattr'),
        (restricted_getattr, '__builtin__.getattr')
    ] + _numpy_globals()


MMENGINE_SAFE_GLOBALS = None  # filled lazily by mmengine_safe_globals()
_applied = False


def mmengine_safe_globals() -> List[Any]:
    """What mmengine Runner checkpoints contain, as entries for ``torch.serialization.add_safe_globals``."""
    global MMENGINE_SAFE_GLOBALS
    if MMENGINE_SAFE_GLOBALS is None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)  # np.core alias on numpy 2
            MMENGINE_SAFE_GLOBALS = _safe_globals()
    return MMENGINE_SAFE_GLOBALS


def allow_mmengine_checkpoints() -> None:
    """Allow-lists, for ``torch.load(weights_only=True)``, what mmengine Runner checkpoints contain.

    Changes torch's process-wide allow-list: called by :func:`mmnorm.runtime.setup`, not on
    ``import mmnorm``.
    Idempotent; a no-op on torch without ``torch.serialization.add_safe_globals`` (< 2.4, where
    mmengine's
    plain ``torch.load`` already unpickles fully).
    """
    global _applied
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if _applied or add_safe_globals is None:
        return
    add_safe_globals(mmengine_safe_globals())
    _applied = True


class CheckpointFileError(ValueError):
    """A checkpoint path that cannot be loaded: missing, a directory, empty, truncated or refused (unsafe)."""


def _refused_what(message: str) -> str:
    """The refused global / opcode named in torch's weights-only error, without torch's advice to disable it."""
    import re
    found = re.search(r'GLOBAL (\S+)', message)
    if found:
        return f'it references the global {found.group(1).rstrip(".,")}, which is not allow-listed'
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = [
        line for line in lines
        if 'weights_only' not in line and 'Weights only' not in line and 'documentation' not in line
    ]
    return (detail[0] if detail else 'an object that is not allow-listed')[:200]


def check_checkpoint_file(path: str, what: str = 'checkpoint') -> None:
    """Fails early, with a message naming ``path``, on a checkpoint the tools could not load.

    Opens the file with ``torch.load(weights_only=True, mmap=True)`` (the tensor data is mapped,
    not read) under
    mmnorm's allow-list (:func:`mmengine_safe_globals`, for this call only), the way mmengine loads
    it after
    :func:`mmnorm.runtime.setup`.

    Args:
        path (str): The file given on the command line or in the config (``load_from``).
        what (str): How the message names it (e.g. ``'--resume checkpoint'``). Defaults to
        ``'checkpoint'``.

    Raises:
        CheckpointFileError: Missing, a directory, empty, not a torch file / truncated, or refused
        by weights-only
            unpickling (the message names what was refused).
    """
    import os
    import os.path as osp
    import pickle
    import zipfile
    if osp.isdir(path):
        last = osp.join(path, 'last_checkpoint')
        raise CheckpointFileError(
            f'{what} {path!r} is a directory; pass a checkpoint file inside it (e.g. '
            f'{osp.join(path, "iter_1000.pth")!r}; {last!r} names the latest)')
    if not osp.isfile(path):
        raise CheckpointFileError(f'{what} not found: {path!r}')
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(
            f'{what} {path!r} is an empty file (0 bytes): a save that never wrote, or a '
            'copy that failed; use another checkpoint')
    import contextlib
    allowed = contextlib.nullcontext()
    if hasattr(torch.serialization, 'safe_globals'):
        # only what is not allow-listed yet: leaving the context removes its entries again
        present = set(torch.serialization.get_safe_globals())
        missing = [g for g in mmengine_safe_globals() if g not in present]
        allowed = torch.serialization.safe_globals(missing)
    try:
        with allowed:
            try:
                torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as err:
                if 'mmap' not in str(err):
                    raise
                torch.load(path, map_location='cpu',
                           weights_only=True)  # legacy (non-zip) format: no mmap
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f'{what} {path!r} was refused by weights-only loading ({_refused_what(str(err))}). mmnorm loads '
            'tensors, plain containers and what mmengine Runner checkpoints hold, nothing that can run code. Do '
            'not disable weights-only loading (weights_only=False) for a file from an unknown source; if you '
            'trust its origin, load it once in a separate script and re-save only its state_dict'
        ) from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointFileError(
            f'{what} {path!r} is truncated or not a torch checkpoint ({err}); a save '
            'interrupted mid-write leaves such files: use an earlier checkpoint') from None
    except RuntimeError as err:
        text = str(err)
        if any(sign in text for sign in ('zip archive', 'central directory', 'invalid load key',
                                         'magic number')):
            raise CheckpointFileError(
                f'{what} {path!r} is truncated or not a torch checkpoint ({text.strip()}); '
                'a save interrupted mid-write leaves such files: use an earlier checkpoint'
            ) from None
        raise
