"""One line and exit status 2 for user errors in mmnorm's tools (no traceback)."""
import errno
import sys
from contextlib import contextmanager
from typing import Callable, Optional

from ..validation import ArgumentError

__all__ = ['UserError', 'user_errors', 'describe_os_error']


class UserError(ValueError):
    """A mistake in the tool's input (an argument, the config, a path): its message is one line."""


def describe_os_error(err: OSError) -> str:
    """One line naming the path and what to do, for I/O errors on work dirs and outputs."""
    path = err.filename or '?'
    advice = {
        errno.EACCES: 'the path is not writable: choose another --work-dir or fix its permissions',
        errno.EPERM: 'the path is not writable: choose another --work-dir',
        errno.EROFS: 'the file system is read-only: choose another --work-dir',
        errno.ENOSPC: 'the disk is full: free space or choose another --work-dir',
        errno.EDQUOT: 'the disk quota is exceeded: free space or choose another --work-dir',
        errno.ENOTDIR: 'a part of the path is a file, not a folder: choose another --work-dir',
        errno.EEXIST: 'a file is in the way of a folder: choose another --work-dir',
    }.get(err.errno, 'check the path')
    return f'cannot write {path!r}: {err.strerror or err} ({advice})'


@contextmanager
def user_errors(tool: str,
                extra: tuple = (),
                describe: Optional[Callable[[ArgumentError], str]] = None):
    """Turns user errors raised inside the block into ``tool: error: <one line>`` and exit 2.

    Caught: :class:`UserError`, ``CheckpointFileError``, the argument checks of mmnorm's layers,
    hooks and functions (:class:`~mmnorm.validation.ArgumentError`, described by ``describe``
    when given, e.g. with the config key), I/O errors with a path (``PermissionError``, full disk,
    read-only file system, a file in the way) and ``extra``. Any other exception keeps its
    traceback.
    """
    from .checkpoint import CheckpointFileError
    try:
        yield
    except ArgumentError as err:
        message = ' '.join((describe(err) if describe else str(err)).split())
    except (UserError, CheckpointFileError, *extra) as err:
        message = ' '.join(str(err).split())
    except OSError as err:
        io_errors = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                     errno.ENOTDIR, errno.EEXIST)
        if err.errno not in io_errors:
            raise
        message = describe_os_error(err)
    else:
        return
    print(f'{tool}: error: {message}', file=sys.stderr)
    sys.exit(2)
