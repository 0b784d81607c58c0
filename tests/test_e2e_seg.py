"""A 2-process CPU launch trains, checkpoints, resumes and tests a real mmseg EncoderDecoder through
the tools."""
import json
import math
import os.path as osp
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_tool, tiny_seg_options
from mmengine.config import Config


def trained_iters(work_dir, run: int = -1) -> list:
    """The iterations for which a run (by default the last one) in ``work_dir`` logged a training
    loss (``<timestamp>/vis_data/scalars.json``, logger interval 1)."""
    runs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    rows = [json.loads(line) for line in runs[run].read_text().splitlines()]
    return [r['iter'] for r in rows if 'loss' in r]


@pytest.fixture(scope='module')
def dist_run(tiny_demo_data, tmp_path_factory):
    """tools/dist_train.sh with 2 processes (gloo), 2 iterations; returns (work_dir, stdout of the
    run)."""
    from conftest import free_port
    work_dir = str(tmp_path_factory.mktemp('seg_dist'))
    proc = run_tool([
        'tools/dist_train.sh', DEMO_CONFIG, 2, '--work-dir', work_dir, '--cfg-options',
        *tiny_seg_options(tiny_demo_data, iters=2)
    ],
                    PORT=free_port())
    return work_dir, proc.stdout + proc.stderr


def test_dist_train_writes_checkpoint(dist_run):
    work_dir, log = dist_run
    # the environment log names what runs: gloo CPU processes (the GPU config's nccl kept aside)
    env_block = log.split('Runtime environment:')[1].split('-' * 60)[0]
    assert "'backend': 'gloo'" in env_block and 'config_backend: nccl' in env_block, env_block
    assert 'device: cpu' in env_block and 'processes: 2' in env_block, env_block
    ckpt = torch.load(osp.join(work_dir, 'iter_2.pth'), weights_only=True)
    assert ckpt['meta']['iter'] == 2 and ckpt['meta']['world_size'] == 2
    assert trained_iters(work_dir) == [1, 2]
    assert any(k.startswith('backbone.') for k in ckpt['state_dict'])
    assert not any(k.startswith('module.')
                   for k in ckpt['state_dict'])  # DDP wrapper unwrapped on save


def test_config_dumped_by_the_cpu_run_is_restored_for_gpus(dist_run):
    """The run's dumped config names the CPU wrapper and gloo; restore_gpu_settings (what
    setup_launcher applies when CUDA is present) gives back mmengine's wrapper, without the CPU
    device ids, and the config's nccl; the original config is left as it is."""
    from mmnorm_tools.launcher import restore_gpu_settings
    work_dir, _ = dist_run
    dumped = Config.fromfile(osp.join(work_dir, osp.basename(DEMO_CONFIG)))
    assert dumped.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
    assert dumped.env_cfg.dist_cfg.backend == 'gloo' and dumped.env_cfg.device == 'cpu'
    assert restore_gpu_settings(dumped)
    assert dumped.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel', broadcast_buffers=False, find_unused_parameters=False)
    original = Config.fromfile(osp.join(REPO, DEMO_CONFIG))
    assert dumped.env_cfg == original.env_cfg
    assert not restore_gpu_settings(original) and 'model_wrapper_cfg' not in original


def test_test_py_reports_miou(dist_run, tiny_demo_data, tmp_path):
    work_dir, _ = dist_run
    metrics_file = tmp_path / 'metrics.json'
    run_tool([
        'tools/test.py', DEMO_CONFIG,
        osp.join(work_dir, 'iter_2.pth'), '--work-dir',
        str(tmp_path), '--metrics-out', metrics_file, '--cfg-options',
        *tiny_seg_options(tiny_demo_data)
    ])
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) >= {'aAcc', 'mIoU', 'mAcc'}
    assert math.isfinite(metrics['mIoU'])  # NaN: no labelled pixel reached the metric


def test_resume_continues_training(dist_run, tiny_demo_data, tmp_path):
    from conftest import free_port
    work_dir, _ = dist_run
    resumed = str(tmp_path / 'resumed')
    first = torch.load(osp.join(work_dir, 'iter_2.pth'), weights_only=True)
    # --resume CKPT into a new work dir, 2 more iterations (4 in total), still on 2 processes.
    proc = run_tool([
        'tools/dist_train.sh', DEMO_CONFIG, 2, '--work-dir', resumed, '--resume',
        osp.join(work_dir, 'iter_2.pth'), '--cfg-options',
        *tiny_seg_options(tiny_demo_data, iters=4)
    ],
                    PORT=free_port())
    assert proc.returncode == 0
    assert trained_iters(resumed) == [3, 4]  # iterations 1 and 2 came from the checkpoint
    second = torch.load(osp.join(resumed, 'iter_4.pth'), weights_only=True)
    assert second['meta']['iter'] == 4
    # Training really continued from the first run's weights and optimizer state.
    assert 'momentum_buffer' in str(second['optimizer']['state'][0].keys())
    key = 'decode_head.conv_seg.weight'
    assert not torch.equal(first['state_dict'][key], second['state_dict'][key])


def test_load_from_initialises_from_checkpoint(dist_run, tiny_demo_data, tmp_path):
    work_dir, _ = dist_run
    proc = run_tool([
        'tools/train.py', DEMO_CONFIG, '--work-dir',
        str(tmp_path), '--cfg-options', f'load_from={osp.join(work_dir, "iter_2.pth")}',
        *tiny_seg_options(tiny_demo_data, iters=1)
    ])
    assert proc.returncode == 0 and trained_iters(tmp_path) == [1]
    # the BN counters go on from the checkpoint's 2 iterations: the weights were loaded
    first = torch.load(osp.join(work_dir, 'iter_2.pth'), weights_only=True)['state_dict']
    second = torch.load(tmp_path / 'iter_1.pth', weights_only=True)['state_dict']
    key = next(k for k in first if k.startswith('backbone.') and k.endswith('num_batches_tracked'))
    assert (int(first[key]), int(second[key])) == (2, 3)


def test_slurm_launcher_on_cpu(tiny_demo_data, tmp_path):
    # What srun sets for a 1-task job; MASTER_ADDR given, so no scontrol is needed.
    from conftest import free_port
    slurm = dict(
        SLURM_PROCID=0,
        SLURM_NTASKS=1,
        SLURM_LOCALID=0,
        SLURM_NODELIST='localhost',
        MASTER_ADDR='127.0.0.1')
    args = [
        'tools/train.py', DEMO_CONFIG, '--launcher', 'slurm', '--work-dir', tmp_path,
        '--cfg-options'
    ]
    proc = run_tool(
        args + tiny_seg_options(tiny_demo_data, iters=1), MASTER_PORT=free_port(), **slurm)
    log = proc.stdout + proc.stderr
    # a 1-task job has a world size of 1 either way: mmengine's environment log is the trace that
    # the launcher set up a process group
    assert 'Distributed training: True' in log and trained_iters(tmp_path) == [1]
    assert torch.load(tmp_path / 'iter_1.pth', weights_only=True)['meta']['iter'] == 1


KILL_AT_SAVE = '''"""sitecustomize of the test's processes: SIGTERM to this process while the Runner
writes the iteration-2 checkpoint (the data is in the file being written, not yet on disk), as a
scheduler's kill arrives."""
import os
import signal

_fsync = os.fsync


def fsync(fd):
    if '.iter_2.pth.tmp-' in os.readlink(f'/proc/self/fd/{fd}'):
        os.kill(os.getpid(), signal.SIGTERM)
    return _fsync(fd)


os.fsync = fsync
'''


def test_sigterm_while_saving_leaves_the_checkpoints_loadable(tiny_demo_data, tmp_path):
    """A 2-process run killed while writing iter_2.pth: iter_1.pth and last_checkpoint stay intact,
    no truncated iter_2.pth appears, and --resume finishes the run."""
    from conftest import free_port
    (tmp_path / 'sitecustomize.py').write_text(
        KILL_AT_SAVE)  # imported by every Python started with this path
    work_dir = tmp_path / 'work'
    options = tiny_seg_options(
        tiny_demo_data, iters=3) + [
            'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=3'
        ]
    killed = run_tool(
        ['tools/dist_train.sh', DEMO_CONFIG, 2, '--work-dir', work_dir, '--cfg-options', *options],
        check=False,
        PORT=free_port(),
        PYTHONPATH=f'{tmp_path}:{osp.dirname(osp.dirname(osp.abspath(__file__)))}')
    assert killed.returncode != 0, killed.stdout[-3000:]
    names = sorted(p.name for p in work_dir.iterdir())
    assert 'iter_1.pth' in names and 'iter_2.pth' not in names, names
    assert torch.load(work_dir / 'iter_1.pth', weights_only=True)['meta']['iter'] == 1
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('iter_1.pth')
    resumed = run_tool([
        'tools/dist_train.sh', DEMO_CONFIG, 2, '--work-dir', work_dir, '--resume', '--cfg-options',
        *options
    ],
                       PORT=free_port())
    assert resumed.returncode == 0 and trained_iters(work_dir) == [2, 3]  # on from iter_1.pth
    assert torch.load(work_dir / 'iter_3.pth', weights_only=True)['meta']['iter'] == 3
