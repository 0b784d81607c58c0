"""Weights-only loading of mmengine checkpoints without unpickling numpy objects from the file.

mmengine 0.10.7 Runner checkpoints store the message hub: ``HistoryBuffer`` objects holding numpy
arrays, numpy scalars and ``getattr(HistoryBuffer, 'mean')``-style statistics methods. Allow-listing
numpy's ``_reconstruct`` / ``ndarray`` / ``dtype`` / ``scalar`` for torch's weights-only unpickler
lets a file build object arrays over raw bytes (forged pointers) or dtypes with object fields
(type confusion): using such a value crashes the process. mmnorm never allow-lists them.

:func:`load_mmengine_checkpoint` instead maps those global names, for one ``torch.load`` call, to
inert stand-ins (:class:`_Record` subclasses) that only record their arguments; nothing of numpy
runs while the file is read. :func:`rebuild` then turns the records into values mmnorm builds
itself: arrays and scalars only of plain numeric dtypes (bool, int, uint, float, complex; native
or explicit byte order, no fields or sub-arrays) whose byte count matches their shape, and
``HistoryBuffer`` objects from those arrays with their standard statistics methods. Anything else
(an object dtype, a structured dtype, a size mismatch, a statistics method under another name, a
record outside the places mmengine puts them) raises :class:`UnsafeCheckpoint`.
"""
import math
from typing import Any, Dict, List

import numpy as np

__all__ = ['UnsafeCheckpoint', 'STUB_NAMES', 'stub_globals', 'rebuild', 'has_records']

# At most this many elements per numpy array rebuilt from a checkpoint (a HistoryBuffer holds at
# most max_length values; mmengine's default max_length is 1e6).
MAX_ARRAY_ELEMENTS = 10_000_000
_SIMPLE_KINDS = 'biufc'
_STANDARD_STATISTICS = (
    'min', 'max', 'current', 'mean'
)  # HistoryBuffer._set_default_statistics  # bool, signed / unsigned int, float, complex


class UnsafeCheckpoint(ValueError):
    """A checkpoint holds numpy / HistoryBuffer data mmnorm does not rebuild (the reason is the
    message)."""


class _Record:
    """An inert stand-in: records constructor arguments and pickle state, runs nothing."""

    args: tuple = ()
    state: Any = None

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _DType(_Record):
    """``numpy.dtype(code, align, copy)`` / ``numpy.dtypes.*DType(...)``, state = byte order etc."""


class _Array(_Record):
    """``numpy._core.multiarray._reconstruct(ndarray, shape, b'b')`` then BUILD
    ``(version, shape, dtype, is_fortran, raw)``."""


class _ArrayClass(_Record):
    """``numpy.ndarray`` (only passed to ``_reconstruct``)."""


class _Scalar(_Record):
    """``numpy._core.multiarray.scalar(dtype, raw)``."""


class _HistoryBuffer(_Record):
    """``mmengine.logging.history_buffer.HistoryBuffer``: NEWOBJ, then BUILD with its
    ``__dict__``."""


class _Attribute(_Record):
    """``getattr(obj, name)`` (pickle's encoding of ``HistoryBuffer.mean`` and the like)."""


def _reconstruct(*args):
    return _Array(*args)


def _scalar(*args):
    return _Scalar(*args)


def _getattr(*args):
    return _Attribute(*args)


def _dtype_class_names() -> List[str]:
    names = ['numpy.dtype']
    for kind in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                 np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
                 np.complex128, np.object_, np.str_, np.bytes_, np.void):
        names.append(f'numpy.dtypes.{type(np.dtype(kind)).__name__}')
    return names


STUB_NAMES: Dict[str, Any] = {
    'numpy.ndarray': _ArrayClass,
    'numpy._core.multiarray._reconstruct': _reconstruct,
    'numpy.core.multiarray._reconstruct': _reconstruct,
    'numpy._core.multiarray.scalar': _scalar,
    'numpy.core.multiarray.scalar': _scalar,
    'mmengine.logging.history_buffer.HistoryBuffer': _HistoryBuffer,
    'builtins.getattr': _getattr,
    '__builtin__.getattr': _getattr,
    **{
        name: _DType
        for name in _dtype_class_names()
    },
    # the results of the functions above: torch only applies BUILD to allow-listed types
    **{
        f'{__name__}.{cls.__name__}': cls
        for cls in (_Array, _Scalar, _Attribute)
    },
}


def stub_globals() -> list:
    """Entries for ``torch.serialization.safe_globals``: every name above mapped to its stand-in."""
    return [(obj, name) for name, obj in STUB_NAMES.items()]


def _dtype(record: Any, where: str) -> np.dtype:
    if not isinstance(record, _DType) or len(
            record.args) < 1 or not isinstance(record.args[0], str):
        raise UnsafeCheckpoint(f'{where}: not a numpy dtype')
    code = record.args[0]
    state = record.state
    order = '|'
    if state is not None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment,
        # flags)
        if (not isinstance(state, tuple) or len(state) < 5 or state[2] is not None
                or state[3] is not None or state[4] is not None):
            raise UnsafeCheckpoint(f'{where}: a structured or sub-array numpy dtype ({code!r})')
        order = state[1]
    if order not in ('<', '>', '|', '=') or len(code) > 4:
        raise UnsafeCheckpoint(f'{where}: numpy dtype {code!r} with byte order {order!r}')
    try:
        dtype = np.dtype(code)
    except TypeError:
        raise UnsafeCheckpoint(f'{where}: unknown numpy dtype {code!r}') from None
    if dtype.kind not in _SIMPLE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeCheckpoint(f'{where}: numpy dtype {code!r} (kind {dtype.kind!r}) is not a '
                               'plain number type')
    return dtype.newbyteorder(order) if order in '<>' else dtype


def _array(record: _Array, where: str) -> np.ndarray:
    args, state = record.args, record.state
    if len(args) != 3 or args[0] is not _ArrayClass or not isinstance(state, tuple):
        raise UnsafeCheckpoint(f'{where}: a numpy array pickled in an unknown form')
    if len(state) != 5:
        raise UnsafeCheckpoint(f'{where}: a numpy array pickled in an unknown form')
    _, shape, dtype_record, fortran, raw = state
    if (not isinstance(shape, tuple) or len(shape) > 8
            or not all(type(n) is int and 0 <= n for n in shape)):
        raise UnsafeCheckpoint(f'{where}: numpy array shape {shape!r}')
    dtype = _dtype(dtype_record, where)
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise UnsafeCheckpoint(f'{where}: numpy array of {count} elements (more than '
                               f'{MAX_ARRAY_ELEMENTS})')
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dtype.itemsize:
        size = len(raw) if isinstance(raw, (bytes, bytearray)) else type(raw).__name__
        raise UnsafeCheckpoint(f'{where}: numpy array {shape} of {dtype} with {size} data bytes')
    array = np.frombuffer(bytes(raw), dtype=dtype, count=count).copy()
    return array.reshape(shape, order='F' if fortran else 'C')


def _scalar_value(record: _Scalar, where: str) -> Any:
    if len(record.args) != 2:
        raise UnsafeCheckpoint(f'{where}: a numpy scalar pickled in an unknown form')
    dtype = _dtype(record.args[0], where)
    raw = record.args[1]
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.itemsize:
        raise UnsafeCheckpoint(f'{where}: numpy scalar of {dtype} with a wrong byte count')
    return np.frombuffer(bytes(raw), dtype=dtype, count=1)[0]


def _history_buffer(record: _HistoryBuffer, where: str):
    from mmengine.logging import HistoryBuffer
    state = record.state
    keys = {'max_length', '_log_history', '_count_history', 'statistics_methods'}
    if not isinstance(state, dict) or not set(state) <= keys or not {
            'max_length', '_log_history', '_count_history'
    } <= set(state):
        raise UnsafeCheckpoint(f'{where}: a HistoryBuffer with unexpected attributes')
    max_length = state['max_length']
    if type(max_length) is not int or max_length < 1:
        raise UnsafeCheckpoint(f'{where}: HistoryBuffer max_length {max_length!r}')
    for name, method in (state.get('statistics_methods') or {}).items():
        ok = (
            isinstance(method, _Attribute) and len(method.args) == 2
            and method.args[0] is _HistoryBuffer and method.args[1] == name
            and (name in _STANDARD_STATISTICS or name in HistoryBuffer._statistics_methods))
        if not ok:
            got = (f'{method.args[1]!r}' if isinstance(method, _Attribute) and len(method.args) == 2
                   else type(method).__name__)
            raise UnsafeCheckpoint(f'{where}: HistoryBuffer statistics method {name!r} is '
                                   f'{got}, not HistoryBuffer.{name}')
    values = []
    for key in ('_log_history', '_count_history'):
        item = state[key]
        if not isinstance(item, _Array):
            raise UnsafeCheckpoint(f'{where}.{key}: not a numpy array')
        array = _array(item, f'{where}.{key}')
        if array.ndim != 1:
            raise UnsafeCheckpoint(f'{where}.{key}: a {array.ndim}-d array')
        values.append(array.tolist())
    if len(values[0]) != len(values[1]):
        raise UnsafeCheckpoint(f'{where}: HistoryBuffer with {len(values[0])} values and '
                               f'{len(values[1])} counts')
    return HistoryBuffer(values[0], values[1], max_length)


def has_records(obj: Any) -> bool:
    """Whether ``obj`` (a loaded checkpoint) holds stand-ins to rebuild."""
    found = []
    _walk(obj, lambda value, where: found.append(where) or value, '', set(), dry=True)
    return bool(found)


def _walk(obj, convert, where, seen, dry=False):
    if isinstance(obj, _Record):
        return convert(obj, where or 'checkpoint')
    if id(obj) in seen:
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        for key in list(obj):
            new = _walk(obj[key], convert, f'{where}.{key}' if where else str(key), seen, dry)
            if not dry:
                obj[key] = new
    elif isinstance(obj, list):
        seen.add(id(obj))
        for i, item in enumerate(obj):
            new = _walk(item, convert, f'{where}[{i}]', seen, dry)
            if not dry:
                obj[i] = new
    elif isinstance(obj, tuple):
        seen.add(id(obj))
        items = [_walk(item, convert, f'{where}[{i}]', seen, dry) for i, item in enumerate(obj)]
        if not dry and any(a is not b for a, b in zip(items, obj)):
            return tuple(items)
    elif isinstance(obj, (set, frozenset)):
        if any(isinstance(item, _Record) for item in obj):
            raise UnsafeCheckpoint(f'{where}: numpy data inside a set')
    return obj


def rebuild(checkpoint: Any) -> Any:
    """Replaces the stand-ins in a loaded checkpoint by values built from validated plain data.

    ``HistoryBuffer`` records become ``HistoryBuffer`` objects, array / scalar records numpy arrays
    / scalars of plain number dtypes. Anything else raises :class:`UnsafeCheckpoint`.
    """

    def convert(record, where):
        if isinstance(record, _HistoryBuffer):
            return _history_buffer(record, where)
        if isinstance(record, _Array):
            return _array(record, where)
        if isinstance(record, _Scalar):
            return _scalar_value(record, where)
        if isinstance(record, _DType):
            return _dtype(record, where)
        raise UnsafeCheckpoint(f'{where}: a {type(record).__name__.strip("_").lower()} reference '
                               'outside a HistoryBuffer')

    try:
        return _walk(checkpoint, convert, '', set())
    except RecursionError:
        raise UnsafeCheckpoint('containers nested too deeply') from None
