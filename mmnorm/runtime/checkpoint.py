"""Checkpoint files: safe loading, early checks, plain-type saving, weights that fit the model.

What mmnorm loads (README, "Checkpoints"):

* Every file goes through ``torch.load(weights_only=True)``; no numpy global is ever allow-listed.
  Tensors, plain containers and numbers load as torch loads them.
* mmengine Runner checkpoints written without mmnorm store the message hub as ``HistoryBuffer``
  objects with numpy arrays. Those names are mapped, for the one load, to inert stand-ins
  (:mod:`mmnorm.runtime.safe_load`); the arrays are rebuilt from their bytes only when they are
  plain numbers whose size matches their shape, and ``HistoryBuffer`` statistics methods must be
  the standard ones. Anything else refuses the whole file with one line naming the reason.
* Checkpoints written by mmnorm's tools (:class:`~mmnorm.runtime.SafeCheckpointHook`) hold only
  tensors and plain Python types: the message hub is stored as marked dicts of tensors
  (:func:`to_plain`) and rebuilt when loaded (:func:`load_checkpoint_file`), so plain
  ``torch.load`` reads them with torch's default allow-list.

:func:`use_safe_checkpoint_loading` registers :func:`load_from_local` as mmengine's loader of
local paths, so ``load_from``, ``--resume`` and ``mmengine.runner.load_checkpoint`` take this path.
"""
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .safe_load import UnsafeCheckpoint, rebuild, stub_globals

__all__ = [
    'CheckpointFileError', 'check_checkpoint_file', 'load_checkpoint_file', 'load_from_local',
    'use_safe_checkpoint_loading', 'to_plain', 'from_plain', 'state_dict_of', 'state_dict_mismatch',
    'check_weights_fit', 'find_resumable_checkpoint', 'ALLOWED_MISSING_SUFFIXES'
]

# Missing keys a checkpoint may lack and still fit (documented in README): BN step counters, absent
# from checkpoints of torch < 0.4.1 and of converters that keep only weights and running stats.
ALLOWED_MISSING_SUFFIXES = ('num_batches_tracked', )
_MARK = '__mmnorm_plain__'


class CheckpointFileError(ValueError):
    """A checkpoint that cannot be loaded: missing, a directory, empty, truncated, refused (unsafe)
    or not fitting the model. The message is one line naming the file and the reason."""


def _one_line(text: str, limit: int = 300) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _refused_what(message: str) -> str:
    """The refused global / opcode of torch's weights-only error, without its advice to disable
    weights-only loading."""
    found = re.search(r'GLOBAL (\S+)', message)
    if found:
        return f'it references the global {found.group(1).rstrip(".,")}, which is not allow-listed'
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = [
        line for line in lines if 'weights_only' not in line and 'Weights only' not in line
        and 'documentation' not in line and 'Check the' not in line
    ]
    return _one_line(detail[0] if detail else 'an object that is not allow-listed', 200)


def _check_path(path: str, what: str) -> None:
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


def _torch_load(path: str, map_location, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` with the numpy / HistoryBuffer stand-ins for this call."""
    with torch.serialization.safe_globals(stub_globals()):
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as err:
                if 'mmap' not in str(err):
                    raise
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint_file(path: str,
                         map_location: Any = 'cpu',
                         what: str = 'checkpoint',
                         mmap: bool = False) -> Any:
    """Loads a checkpoint file the safe way (module docstring) and returns what it holds.

    Args:
        path (str): The file.
        map_location: As for ``torch.load``. Defaults to ``'cpu'``.
        what (str): How messages name the file (e.g. ``'--resume checkpoint'``).
        mmap (bool): Map the tensor data instead of reading it (zip files). Defaults to False.

    Raises:
        CheckpointFileError: One line naming ``path`` and the reason: missing, a directory, empty,
            truncated / not a torch file, or refused (code, numpy objects mmnorm does not rebuild,
            a forged HistoryBuffer, an allocation the machine cannot make, ...).
    """
    import pickle
    import zipfile
    path = osp.expanduser(str(path))
    _check_path(path, what)
    truncated = ('{what} {path!r} is truncated or not a torch checkpoint ({err}); a save '
                 'interrupted mid-write leaves such files: use an earlier checkpoint')
    try:
        checkpoint = _torch_load(path, map_location, mmap)
        checkpoint = from_plain(rebuild(checkpoint))
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f'{what} {path!r} was refused by weights-only loading ({_refused_what(str(err))}). '
            'mmnorm loads tensors, plain containers and the numbers of mmengine Runner '
            'checkpoints, nothing that can run code. Do not disable weights-only loading '
            '(weights_only=False) for a file from an unknown source; if you trust its origin, '
            'load it once in a separate script and re-save only its state_dict') from None
    except UnsafeCheckpoint as err:
        raise CheckpointFileError(f'{what} {path!r} was refused: {_one_line(err)} (from mmengine '
                                  'checkpoints mmnorm rebuilds plain numbers only)') from None
    except (EOFError, zipfile.BadZipFile) as err:
        raise CheckpointFileError(truncated.format(what=what, path=path,
                                                   err=_one_line(err))) from None
    except MemoryError:
        raise CheckpointFileError(f'{what} {path!r} was refused: it asks for more memory than '
                                  'this machine has (a damaged or crafted file)') from None
    except RuntimeError as err:
        text = _one_line(err)
        signs = ('zip archive', 'central directory', 'invalid load key', 'magic number', 'EOF',
                 'PytorchStreamReader')
        if any(sign in text for sign in signs):
            raise CheckpointFileError(truncated.format(what=what, path=path, err=text)) from None
        raise CheckpointFileError(f'{what} {path!r} could not be loaded ({text})') from None
    except Exception as err:  # a damaged or crafted file: never a traceback from inside torch
        raise CheckpointFileError(f'{what} {path!r} could not be loaded ({type(err).__name__}: '
                                  f'{_one_line(err)})') from None
    return checkpoint


def check_checkpoint_file(path: str, what: str = 'checkpoint') -> Any:
    """Fails early, with one line naming ``path``, on a checkpoint the tools could not load.

    Loads the file as the tools will (:func:`load_checkpoint_file`, tensor data memory-mapped).

    Returns:
        The loaded checkpoint (tensors memory-mapped where the format allows).

    Raises:
        CheckpointFileError: See :func:`load_checkpoint_file`.
    """
    return load_checkpoint_file(path, 'cpu', what, mmap=True)


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` scheme for local paths: :func:`load_checkpoint_file`."""
    return load_checkpoint_file(filename, map_location)


def use_safe_checkpoint_loading() -> None:
    """Registers :func:`load_from_local` as mmengine's loader of local paths (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def to_plain(obj: Any) -> Any:
    """A copy of ``obj`` with ``HistoryBuffer`` objects, numpy arrays and numpy scalars replaced by
    tensors, numbers and marked dicts (what torch's default weights-only loading accepts)."""
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, HistoryBuffer):
        logs, counts = obj.data
        return {
            _MARK: 'HistoryBuffer',
            'max_length': int(obj.max_length),
            'log': to_plain(np.asarray(logs)),
            'count': to_plain(np.asarray(counts))
        }
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in 'biuf' and obj.dtype.fields is None:
            return {_MARK: 'ndarray', 'data': torch.from_numpy(np.ascontiguousarray(obj))}
        return {_MARK: 'ndarray', 'data': to_plain(obj.tolist())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = [(k, to_plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain` (marked dicts back to ``HistoryBuffer`` / numpy arrays)."""
    if isinstance(obj, dict):
        if obj.get(_MARK) == 'HistoryBuffer':
            from mmengine.logging import HistoryBuffer
            logs, counts = from_plain(obj['log']), from_plain(obj['count'])
            return HistoryBuffer(list(logs), list(counts), int(obj['max_length']))
        if obj.get(_MARK) == 'ndarray':
            data = obj['data']
            return data.numpy().copy() if isinstance(data, torch.Tensor) else np.array(data)
        for key in list(obj):
            obj[key] = from_plain(obj[key])
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            obj[i] = from_plain(item)
    return obj


def state_dict_of(checkpoint: Any, path: str, what: str = 'checkpoint') -> dict:
    """The weights of a loaded checkpoint (``checkpoint['state_dict']`` or the file's dict)."""
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint,
                                                                        dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise CheckpointFileError(f'{what} {path!r} holds a {type(state_dict).__name__}, not a '
                                  'state dict of weights')
    return state_dict


def _target(model):
    from mmengine.model import BaseTTAModel, is_model_wrapper
    target = model.module if is_model_wrapper(model) else model
    return target.module if isinstance(target, BaseTTAModel) else target


def state_dict_mismatch(model: torch.nn.Module,
                        state_dict: dict) -> Tuple[List[str], List[str], List[str]]:
    """Loads ``state_dict`` into ``model`` (as mmengine does, ``module.`` prefixes removed; a TTA
    model's inner module, a DDP wrapper's module) and returns what did not fit.

    Returns:
        tuple: missing keys (beyond :data:`ALLOWED_MISSING_SUFFIXES`), unexpected keys, and
        ``'key: checkpoint (shape) vs model (shape)'`` for every shape mismatch.
    """
    target = _target(model)
    weights = {re.sub(r'^module\.', '', str(k)): v for k, v in state_dict.items()}
    own = target.state_dict()
    shapes = []
    for key, value in weights.items():
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            shapes.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                          f'{tuple(own[key].shape)}')
    weights = {k: v for k, v in weights.items() if not any(s.startswith(k + ':') for s in shapes)}
    try:
        result = target.load_state_dict(weights, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as err:  # a composite layer re-homing keys found other shapes
        shapes += re.findall(r'size mismatch for ([^\n]+)', str(err))
        missing, unexpected = [], []
    shape_keys = {s.split(':')[0] for s in shapes}
    missing = [
        k for k in missing if not k.endswith(ALLOWED_MISSING_SUFFIXES) and k not in shape_keys
    ]
    return missing, unexpected, shapes


def check_weights_fit(model: torch.nn.Module,
                      checkpoint: Any,
                      path: str,
                      what: str = 'checkpoint',
                      strict: bool = True) -> None:
    """Refuses (``strict``) or warns about a checkpoint whose weights do not fit ``model``.

    Raises:
        CheckpointFileError: One line naming ``path``, the counts and the first keys of each kind.
    """
    missing, unexpected, shapes = state_dict_mismatch(model, state_dict_of(checkpoint, path, what))
    parts = []
    for name, keys in (('missing', missing), ('unexpected', unexpected), ('with another shape',
                                                                          shapes)):
        if keys:
            first = ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
            parts.append(f'{len(keys)} {name} ({first})')
    if not parts:
        return
    message = f'{what} {path!r} does not fit the model: {"; ".join(parts)}'
    if strict:
        raise CheckpointFileError(message + '. Is it a checkpoint of this config? Pass '
                                  '--strict-load false to load the weights that fit anyway')
    from mmengine.logging import print_log
    print_log(message + ' (loaded anyway: --strict-load false)', logger='current', level=30)


def _step(path: str) -> int:
    numbers = re.findall(r'\d+', osp.basename(path))
    return int(numbers[-1]) if numbers else -1


def find_resumable_checkpoint(work_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """The checkpoint ``--resume`` (without a path) continues from, and a one-line notice.

    The file ``work_dir/last_checkpoint`` names when it loads; else the newest loadable ``*.pth``
    of ``work_dir`` (highest step number in the name, then newest file).

    Returns:
        tuple: ``(path or None, notice or None)``; the notice says why another file (or none) is
        used.
    """
    last_file = osp.join(work_dir, 'last_checkpoint')
    named, reason = None, 'there is no last_checkpoint file'
    if osp.isfile(last_file):
        with open(last_file) as f:
            named = f.read().strip()
        if not named:
            reason = 'last_checkpoint is empty'
        else:
            if not osp.isfile(named) and osp.isfile(osp.join(work_dir, osp.basename(named))):
                named = osp.join(work_dir, osp.basename(named))
            try:
                load_checkpoint_file(named, 'cpu', 'checkpoint', mmap=True)
                return named, None
            except CheckpointFileError as err:
                reason = f'last_checkpoint names a file that does not load ({err})'
    if not osp.isdir(work_dir):
        return None, None
    candidates = [
        osp.join(work_dir, n) for n in os.listdir(work_dir)
        if n.endswith('.pth') and not n.startswith('.')
    ]
    candidates.sort(key=lambda p: (_step(p), osp.getmtime(p)), reverse=True)
    for path in candidates:
        if named and osp.abspath(path) == osp.abspath(named):
            continue
        try:
            load_checkpoint_file(path, 'cpu', 'checkpoint', mmap=True)
        except CheckpointFileError:
            continue
        return path, f'--resume: {reason}; resuming from the newest loadable checkpoint {path!r}'
    if named is None and not candidates:
        return None, None
    return None, f'--resume: {reason} and no other checkpoint in {work_dir!r} loads; training ' \
                 'starts from the beginning'
