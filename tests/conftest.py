"""Shared test helpers: run the real tools as subprocesses, free ports for torchrun, tiny data on disk."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def tool_env(**extra) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
    env['PYTHON'] = PYTHON
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_tool(args, timeout=900, check=True, **env) -> subprocess.CompletedProcess:
    """Runs ``args`` (a tool path relative to the repo first, e.g. ``['tools/train.py', cfg, ...]``).

    ``.py`` tools run with this interpreter, ``.sh`` tools with bash; output is captured and shown on failure.
    """
    first = osp.join(REPO, args[0])
    cmd = ([PYTHON, first] if first.endswith('.py') else ['bash', first]) + [str(a) for a in args[1:]]
    proc = subprocess.run(cmd, cwd=REPO, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}'
                             f'\n--- stderr ---\n{proc.stderr[-6000:]}')
    return proc


@pytest.fixture
def port():
    return free_port()
