"""Distributed launch that also works on CPU-only machines.

mmengine 0.10.7 assumes GPUs for ``--launcher pytorch|slurm``: ``init_dist`` calls ``torch.cuda.set_device`` (an
``AttributeError`` on a CPU-only torch) and the Runner wraps DDP with ``device_ids=[LOCAL_RANK]``, which DDP rejects
for CPU modules. :func:`setup_launcher` keeps mmengine's own path on GPUs (nccl) and, without CUDA, initialises a gloo
process group itself (the Runner then skips ``init_dist``) and asks for a CPU DDP wrapper (``device_ids=None``).
On CPU the config's ``env_cfg.dist_cfg.backend`` is rewritten to the backend in use, so the Runner's environment log
says ``backend: gloo`` and ``device: cpu`` instead of the GPU config's ``nccl``.
"""
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config

__all__ = ['LAUNCHERS', 'setup_launcher', 'init_cpu_process_group', 'teardown_launcher']

LAUNCHERS = ('none', 'pytorch', 'slurm')


def _slurm_env_to_torch_env(port: Optional[int] = None) -> None:
    """Fills MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the SLURM variables (as mmengine does)."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ['RANK'] = str(proc_id)


def init_cpu_process_group(launcher: str, backend: str = 'gloo', **kwargs) -> None:
    """Initialises ``torch.distributed`` for CPU processes started by torchrun (``pytorch``) or srun (``slurm``).

    Args:
        launcher (str): ``'pytorch'`` (reads RANK/WORLD_SIZE/MASTER_* set by torchrun) or ``'slurm'``.
        backend (str): A CPU backend. Defaults to ``'gloo'``.
        **kwargs: Passed to ``init_process_group`` (e.g. ``timeout``).
    """
    if torch_dist.is_initialized():
        return
    if launcher == 'slurm':
        _slurm_env_to_torch_env(kwargs.pop('port', None))
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment variables {missing}; start the script '
                           'with tools/dist_train.sh / dist_test.sh (torchrun) or srun')
    torch_dist.init_process_group(backend=backend, rank=int(os.environ['RANK']),
                                  world_size=int(os.environ['WORLD_SIZE']), **kwargs)


def setup_launcher(cfg: Config, launcher: str) -> Config:
    """Prepares ``cfg`` (in place) for ``launcher`` and, on CPU, starts the gloo process group.

    Args:
        cfg (Config): The experiment config; ``cfg.launcher`` and, on CPU, ``cfg.model_wrapper_cfg`` are set.
        launcher (str): One of ``'none'``, ``'pytorch'``, ``'slurm'``.

    Returns:
        Config: ``cfg``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return cfg  # mmengine's own path: single process, or nccl on GPUs
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    if backend == 'nccl':
        backend = 'gloo'  # configs written for GPUs say nccl; CPU tensors need gloo
    init_cpu_process_group(launcher, backend=backend, **dist_cfg)
    # What the Runner logs under "Runtime environment" (it prints env_cfg): the backend that really runs, and that
    # the processes are CPU processes (mmengine's own "GPU number" line there counts processes).
    env_cfg = dict(cfg.get('env_cfg') or {})
    env_cfg['dist_cfg'] = dict(env_cfg.get('dist_cfg') or {}, backend=backend)
    env_cfg['device'] = 'cpu'
    env_cfg['processes'] = torch_dist.get_world_size()
    cfg.env_cfg = env_cfg
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if 'DistributedDataParallel' in str(wrapper['type']):
        if cfg.get('model_wrapper_cfg') is None:  # mmengine's defaults for its own wrapper
            wrapper.setdefault('broadcast_buffers', False)
            wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None  # CPU module: DDP must not be given device ids
    cfg.model_wrapper_cfg = wrapper
    return cfg


def teardown_launcher() -> None:
    """Waits for every rank and destroys the process group.

    Without it, a rank of a gloo job can abort at interpreter exit ("terminate called without an active exception")
    while the other ranks still talk to it, failing a run whose training finished.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
