"""Atomic local file writes for mmengine's file backend (checkpoints are never left truncated).

mmengine 0.10.7 writes a checkpoint with ``LocalBackend.put``: ``open(path, 'wb').write(bytes)``. A
process killed during that write (SIGTERM from a scheduler, Ctrl-C, OOM) leaves a truncated
``iter_N.pth`` that fails to load ("failed finding central directory"). :class:`AtomicLocalBackend`
writes to a temporary file in the same directory, flushes it to disk and renames it over the target
(``os.replace`` is atomic on POSIX and Windows), so a reader sees the old file, no file, or the
complete new one. :func:`use_atomic_local_writes` registers it as mmengine's ``local`` backend;
every local ``put`` / ``put_text`` goes through it: the Runner's checkpoints,
``AdaBNHook(save_checkpoint=)`` and anything else written with ``mmengine.runner.save_checkpoint``
or ``mmengine.fileio.put``.

The file gets the mode ``open(path, 'w')`` would give it (``0o666`` minus the umask), not
``mkstemp``'s ``0o600``. :func:`clean_up_on_sigterm` (applied by :func:`mmnorm.runtime.setup`)
removes the temporary files of writes in progress when the process receives SIGTERM, then lets the
signal end the process as it would have.
"""
import json
import os
import os.path as osp
import signal
import tempfile
import threading
from pathlib import Path
from typing import Mapping, Union

from mmengine.fileio import backends as file_backends
from mmengine.fileio import io as file_io
from mmengine.fileio.backends import LocalBackend, register_backend

__all__ = [
    'AtomicLocalBackend', 'atomic_write_bytes', 'use_atomic_local_writes', 'write_metrics_json',
    'clean_up_on_sigterm'
]

_pending = set()  # temporary files of writes in progress (this process)


def _umask() -> int:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (restored at once)
    os.umask(mask)
    return mask


def _on_sigterm(signum, frame):
    for tmp in list(_pending):
        try:
            os.remove(tmp)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # end as SIGTERM would have (exit status -15)


def clean_up_on_sigterm() -> None:
    """On SIGTERM, removes the temporary files of atomic writes in progress, then ends the process
    as SIGTERM does. Only installed where SIGTERM has its default action (idempotent; main thread
    only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def atomic_write_bytes(data: bytes, filepath: Union[str, Path]) -> None:
    """Writes ``data`` to ``filepath`` through a temporary file in the same directory and an
    atomic rename.

    The temporary file is ``.<name>.tmp-<random>``; it is removed when writing fails (and on
    SIGTERM, see :func:`clean_up_on_sigterm`). The target's directory is created when missing (as
    ``LocalBackend.put`` does).
    """
    filepath = str(filepath)
    directory = osp.dirname(osp.abspath(filepath))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.tmp-', dir=directory)
    _pending.add(tmp)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        _pending.discard(tmp)


def write_metrics_json(metrics: Mapping, filepath: Union[str, Path]) -> None:
    """Writes a Runner's metrics dict (numbers, numpy scalars) to ``filepath`` as JSON,
    atomically."""
    plain = {k: float(v) if hasattr(v, '__float__') else v for k, v in metrics.items()}
    atomic_write_bytes(json.dumps(plain, indent=2).encode(), filepath)


class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` / ``put_text`` replace the target atomically."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write_bytes(obj.encode(encoding), filepath)


def use_atomic_local_writes() -> None:
    """Registers :class:`AtomicLocalBackend` as mmengine's ``local`` backend (idempotent).

    Cached ``LocalBackend`` instances created before the call are dropped so later look-ups get
    the atomic one.
    """
    if file_backends.backends.get('local') is AtomicLocalBackend:
        return
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    for key, instance in list(file_io.backend_instances.items()):
        if type(instance) is LocalBackend:
            del file_io.backend_instances[key]
