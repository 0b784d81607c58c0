"""Shared test helpers: run the real tools as subprocesses, free ports for torchrun, tiny data on
disk."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

from mmnorm.runtime import setup

# The test process loads and writes Runner checkpoints the way mmnorm's tools do (``import mmnorm``
# alone changes nothing of torch / mmengine: tests/test_checkpoint_compat.py checks that in a fresh
# interpreter).
setup()

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
    """Runs ``args`` (a tool path relative to the repo first, e.g. ``['tools/train.py', cfg,
    ...]``).

    ``.py`` tools run with this interpreter, ``.sh`` tools with bash; output is captured and shown
    on failure.
    """
    first = osp.join(REPO, args[0])
    cmd = ([PYTHON, first]
           if first.endswith('.py') else ['bash', first]) + [str(a) for a in args[1:]]
    proc = subprocess.run(
        cmd, cwd=REPO, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        import tempfile
        with tempfile.NamedTemporaryFile(
                'w', prefix='mmnorm_tool_', suffix='.log', delete=False) as f:
            f.write(
                f'$ {" ".join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}')
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode} (full output: {f.name})\n'
                             f'--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr '
                             f'---\n{proc.stderr[-10000:]}')
    return proc


@pytest.fixture
def port():
    return free_port()


DEMO_CONFIG = 'configs/demo/deeplabv3plus_r18-mini-d8-bn_1xb8-1k_demo-gta5-cityscapes-64x128.py'


@pytest.fixture(scope='session')
def tiny_demo_data(tmp_path_factory):
    """The demo's synthetic domains at a tiny size (GTA5 layout source, Cityscapes layout
    target)."""
    from mmnorm.datasets.synthetic import generate_demo_data
    root = str(tmp_path_factory.mktemp('demo_data'))
    generate_demo_data(
        root, num_source_train=8, num_source_val=4, num_target_train=4, num_target_val=4, seed=1)
    return root


def tiny_seg_options(data_root: str, iters: int = 2, batch_size: int = 2) -> list:
    """cfg-options that shrink the demo config to a few iterations on ``tiny_demo_data``."""
    src, tgt = osp.join(data_root, 'gta5'), osp.join(data_root, 'cityscapes')
    opts = [
        f'train_dataloader.dataset.data_root={src}', f'val_dataloader.dataset.data_root={src}',
        f'test_dataloader.dataset.data_root={tgt}', f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}', f'default_hooks.checkpoint.interval={iters}',
        f'param_scheduler.0.end={iters}', 'default_hooks.logger.interval=1',
        'log_processor.window_size=1'
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [
            f'{loader}.batch_size={batch_size}', f'{loader}.num_workers=0',
            f'{loader}.persistent_workers=False'
        ]
    return opts


def metrics_of_one_and_two_processes(config, tmp_path, port) -> dict:
    """Saves ``config``'s model with random weights (seed 0) and tests it with ``tools/test.py`` (1
    process) and ``tools/dist_test.sh`` (2 gloo processes): ``{1: metrics, 2: metrics}`` as written
    by ``--metrics-out``."""
    import json

    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'init')
    torch.manual_seed(0)
    ckpt = tmp_path / 'random.pth'
    torch.save(dict(meta=dict(), state_dict=Runner.from_cfg(cfg).model.state_dict()), ckpt)
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f'metrics{nproc}.json'
        if nproc == 1:
            command = ['tools/test.py', config, ckpt]
        else:
            command = ['tools/dist_test.sh', config, ckpt, nproc]
        run_tool(
            command + ['--work-dir', tmp_path / f'w{nproc}', '--metrics-out', out],
            timeout=600,
            PORT=port)
        runs[nproc] = json.loads(out.read_text())
    return runs
