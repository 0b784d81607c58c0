"""Crafted checkpoint files (built without running them)."""
import os
import pickle
from unittest import mock

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct


class Reduce:
    """Pickles as ``func(*args)`` then BUILD ``state`` (nothing is called while saving)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def array(dtype, shape, raw):
    return Reduce(_reconstruct, (np.ndarray, (0, ), b'b'), (1, shape, dtype, False, raw))


def history_buffer(log, count, methods=None):
    state = dict(
        max_length=10,
        _log_history=log,
        _count_history=count,
        statistics_methods=methods if methods is not None else {'mean': HistoryBuffer.mean})
    buffer = HistoryBuffer.__new__(HistoryBuffer)
    buffer.__dict__.update(state)  # pickled as mmengine does (NEWOBJ, BUILD) by write_payloads
    return buffer


def runner_like(buffer):
    return dict(
        meta=dict(iter=1),
        state_dict={'w': torch.ones(2)},
        message_hub=dict(log_scalars={'train/loss': buffer}, runtime_info={}, resumed_keys={}))


class Code:

    def __reduce__(self):
        return (os.system, ('echo pwned', ))


confused = Reduce(np.dtype, ('f8', False, True), (3, '<', None, ('a', 'b'), {
    'a': (np.dtype('f8'), 0),
    'b': (np.dtype('O'), 8)
}, 16, 1, 0x3f))
f8 = np.dtype('f8')
PAYLOADS = {
    'forged_pointer':
    runner_like(
        history_buffer(
            array(np.dtype('O'), (1, ), b'\x41' * 8), array(np.dtype('i8'), (1, ), b'\0' * 8))),
    'dtype_confusion':
    runner_like(
        history_buffer(
            array(confused, (1, ), b'\x41' * 16), array(np.dtype('i8'), (1, ), b'\0' * 8))),
    'huge_numpy':
    runner_like(
        history_buffer(array(f8, (10**12, ), b'\0' * 8), array(np.dtype('i8'), (1, ), b'\0' * 8))),
    'swapped_method':
    runner_like(
        history_buffer(
            array(f8, (1, ), b'\0' * 8), array(np.dtype('i8'), (1, ), b'\0' * 8),
            {'mean': HistoryBuffer.min})),
    'other_callable_method':
    runner_like(
        history_buffer(
            array(f8, (1, ), b'\0' * 8), array(np.dtype('i8'), (1, ), b'\0' * 8),
            {'mean': torch._utils._rebuild_parameter})),
    'code_zip': {
        'state_dict': {},
        'x': Code()
    },
}


def write_payloads(folder):
    """Writes every payload (zip format), plus legacy-format and raw-pickle code payloads and a
    tensor whose declared size exceeds its storage; returns {name: path}."""
    paths = {}
    for name, obj in PAYLOADS.items():
        paths[name] = os.path.join(folder, f'{name}.pth')
        with mock.patch.object(HistoryBuffer, '__getstate__', lambda self: self.__dict__):
            torch.save(obj, paths[name])
    paths['code_legacy'] = os.path.join(folder, 'code_legacy.pth')
    torch.save({'x': Code()}, paths['code_legacy'], _use_new_zipfile_serialization=False)
    paths['code_raw_pickle'] = os.path.join(folder, 'code_raw.pkl')
    with open(paths['code_raw_pickle'], 'wb') as f:
        pickle.dump({'x': Code()}, f, protocol=2)
    paths['huge_tensor'] = os.path.join(folder, 'huge_tensor.pth')
    big = Reduce(torch._utils._rebuild_tensor_v2,
                 (torch.ones(1).untyped_storage(), 0, (10**12, ), (1, ), False, {}))
    torch.save({'state_dict': {'w': big}}, paths['huge_tensor'])
    return paths
