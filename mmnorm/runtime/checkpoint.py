"""Loading mmengine checkpoints under torch >= 2.6 without giving up weights-only unpickling.

torch >= 2.6 calls ``torch.load(..., weights_only=True)`` by default. mmengine 0.10.7 does not pass
``weights_only``, so a checkpoint written by its own Runner (which stores the message hub: ``HistoryBuffer``
objects holding numpy arrays) fails to load. Instead of turning weights-only loading off, mmnorm allow-lists the
few globals such checkpoints contain. One of them is ``builtins.getattr`` (pickle stores the bound statistics
methods of ``HistoryBuffer`` as ``getattr(HistoryBuffer, 'mean')``); allowing the real ``getattr`` would let a
malicious file reach any attribute of any allowed object, so it is mapped to :func:`restricted_getattr`, which only
resolves public methods of ``HistoryBuffer``.
"""
from typing import Any, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['restricted_getattr', 'allow_mmengine_checkpoints', 'MMENGINE_SAFE_GLOBALS']


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
        for kind in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                     np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128):
            cls = type(np.dtype(kind))
            entries.append((cls, f'numpy.dtypes.{cls.__name__}'))
    return entries


def _safe_globals() -> List[Any]:
    return [HistoryBuffer, (restricted_getattr, 'builtins.getattr'),
            (restricted_getattr, '__builtin__.getattr')] + _numpy_globals()


MMENGINE_SAFE_GLOBALS = None  # filled lazily by allow_mmengine_checkpoints()


def allow_mmengine_checkpoints() -> None:
    """Allow-lists, for ``torch.load(weights_only=True)``, what mmengine Runner checkpoints contain.

    Idempotent; a no-op on torch without ``torch.serialization.add_safe_globals`` (< 2.4, where mmengine's
    plain ``torch.load`` already unpickles fully).
    """
    global MMENGINE_SAFE_GLOBALS
    if MMENGINE_SAFE_GLOBALS is not None:
        return
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is None:
        MMENGINE_SAFE_GLOBALS = []
        return
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # np.core alias on numpy 2
        MMENGINE_SAFE_GLOBALS = _safe_globals()
    add_safe_globals(MMENGINE_SAFE_GLOBALS)
