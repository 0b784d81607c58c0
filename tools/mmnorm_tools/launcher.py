"""Distributed launch that also works on CPU-only machines.

mmengine 0.10.7 assumes GPUs for ``--launcher pytorch|slurm``: ``init_dist`` calls
``torch.cuda.set_device`` (an error on a CPU-only torch) and the Runner wraps DDP with
``device_ids=[LOCAL_RANK]``, which DDP rejects for CPU modules. :func:`setup_launcher` keeps
mmengine's own path on GPUs (nccl) and, without CUDA, starts a gloo process group from the torchrun
/ SLURM environment as ``init_dist`` reads it, without the ``torch.cuda.set_device`` call (the
Runner then skips ``init_dist``), and asks for a CPU DDP wrapper (``device_ids=None``). On CPU the
config's ``env_cfg.dist_cfg.backend`` is rewritten to the backend in use, so the Runner's
environment log says ``backend: gloo`` and ``device: cpu`` instead of the GPU config's ``nccl``.

SyncBN (torch ``SyncBatchNorm``, mmcv ``MMSyncBN``) needs GPUs, and the toolboxes' configs use it.
mmengine reverts it to BN on single-process runs; on a CPU process group the model is wrapped in
:class:`CPUDistributedDataParallel`, which applies the same revert (mmengine's
``revert_sync_batchnorm``: every SyncBN, also the children of mmnorm's composite layers and those of
``cfg.sync_bn``, becomes the BN it wraps, same parameters, buffers and state-dict keys) before DDP
wraps the model, and logs how many layers it reverted. Checkpoints of such runs load into the
SyncBN models of GPU runs, and the other way round.
"""
import datetime
import gc
import os
import subprocess
from typing import Optional

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS

from mmnorm.bn_layers import MMSyncBN
from mmnorm.runtime import UserError

__all__ = [
    'LAUNCHERS', 'setup_launcher', 'init_cpu_process_group', 'teardown_launcher',
    'revert_sync_bn_layers', 'CPUDistributedDataParallel', 'restore_gpu_settings'
]

LAUNCHERS = ('none', 'pytorch', 'slurm')

#: what each launcher sets in every process's environment
LAUNCHER_ENVIRONMENT = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
}


def init_cpu_process_group(launcher: str,
                           backend: str = 'gloo',
                           timeout: Optional[float] = None,
                           port: Optional[int] = None,
                           **kwargs) -> None:
    """Initialises ``torch.distributed`` for CPU processes started by torchrun (``pytorch``) or
    srun (``slurm``).

    The environment is read as mmengine's ``init_dist`` reads it (RANK / WORLD_SIZE / MASTER_* from
    torchrun; SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST, SLURM_LOCALID from srun, turned into the
    torchrun variables), without its ``torch.cuda.set_device`` call.

    Args:
        launcher (str): ``'pytorch'`` or ``'slurm'``.
        backend (str): A CPU backend. Defaults to ``'gloo'``.
        timeout (float, optional): Seconds a collective may wait (the config's
            ``env_cfg.dist_cfg.timeout``, as for mmengine).
        port (int, optional): slurm: the master port (else MASTER_PORT, else 29500).
        **kwargs: Passed to ``torch.distributed.init_process_group``.
    """
    if torch_dist.is_initialized():
        return
    missing = [k for k in LAUNCHER_ENVIRONMENT[launcher] if k not in os.environ]
    if missing:
        raise UserError(
            f'--launcher {launcher} needs the environment variables {missing}; start the '
            'script with tools/dist_train.sh / dist_test.sh (torchrun) or srun')
    init_backend = kwargs.pop('init_backend', 'torch')
    if init_backend != 'torch':
        raise UserError(f"env_cfg.dist_cfg.init_backend={init_backend!r} needs GPUs; CPU "
                        "process groups start with init_backend='torch' (the default)")
    if launcher == 'slurm':
        set_torchrun_environment_from_slurm(port)
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')  # as mmengine's init_dist
    torch_dist.init_process_group(backend=backend, **kwargs)


def set_torchrun_environment_from_slurm(port: Optional[int] = None) -> None:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR (the first host of SLURM_NODELIST, unless set)
    and MASTER_PORT (``port``, else MASTER_PORT, else 29500) from what srun sets."""
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        advice = (f'could not find the first host of SLURM_NODELIST={node_list!r} with scontrol; '
                  'set MASTER_ADDR to the address of the first node')
        try:
            hosts = subprocess.run(['scontrol', 'show', 'hostname', node_list],
                                   capture_output=True,
                                   text=True,
                                   check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError) as err:
            raise UserError(f'{advice} ({err})') from None
        if not hosts:
            raise UserError(advice)
        os.environ['MASTER_ADDR'] = hosts[0]
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


SYNC_BN_TYPES = (nn.SyncBatchNorm, ) + ((MMSyncBN, ) if MMSyncBN is not None else ())


def revert_sync_bn_layers(model: nn.Module) -> tuple:
    """``model`` with every SyncBN layer (torch ``SyncBatchNorm``, mmcv ``MMSyncBN``) reverted to
    BN by mmengine's ``revert_sync_batchnorm`` (as mmengine does on single-process runs).

    Returns:
        tuple[nn.Module, int]: The model (``model`` itself unless it is a SyncBN) and the number of
        layers reverted.

    Raises:
        RuntimeError: A SyncBN layer could not be replaced (mmengine only warns), naming it.
    """
    count = sum(isinstance(m, SYNC_BN_TYPES) for m in model.modules())
    model = revert_sync_batchnorm(model)
    left = [name for name, m in model.named_modules() if isinstance(m, SYNC_BN_TYPES)]
    if left:
        raise RuntimeError(f'SyncBN layer {left[0]!r} could not be reverted to BN, and SyncBN '
                           'needs GPUs: use a BN norm_cfg for CPU runs')
    return model, count


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` for CPU process groups (gloo): the SyncBN layers of
    ``module`` are reverted to BN first (:func:`revert_sync_bn_layers`, one log line with the
    count), since DDP refuses SyncBN on CPU modules. :func:`setup_launcher` selects it without CUDA;
    a module on a GPU is wrapped unchanged.

    Args:
        module (nn.Module): The model.
        **kwargs: Passed to ``MMDistributedDataParallel`` (``device_ids`` must be None on CPU).
    """

    def __init__(self, module: nn.Module, **kwargs) -> None:
        # a config dumped by a CPU run may name this wrapper on GPUs: a CUDA module keeps SyncBN
        if all(p.device.type == 'cpu' for p in module.parameters()):
            module, count = revert_sync_bn_layers(module)
            print_log(
                f'CPU process group: {count} SyncBN layers reverted to BN (SyncBN needs GPUs; '
                'the state-dict keys are the same)',
                logger='current')
        super().__init__(module=module, **kwargs)


def setup_launcher(cfg: Config, launcher: str) -> Config:
    """Prepares ``cfg`` (in place) for ``launcher`` and, on CPU, starts the gloo process group.

    Args:
        cfg (Config): The experiment config; ``cfg.launcher`` and, on CPU,
        ``cfg.model_wrapper_cfg`` are set (mmengine's default wrapper becomes
        :class:`CPUDistributedDataParallel`, which reverts SyncBN).
        launcher (str): One of ``'none'``, ``'pytorch'``, ``'slurm'``.

    Returns:
        Config: ``cfg``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    cfg.launcher = launcher
    if torch.cuda.is_available():
        restore_gpu_settings(cfg)  # the config may be one a CPU run dumped
    if launcher == 'none' or torch.cuda.is_available():
        return cfg  # mmengine's own path: single process, or nccl on GPUs
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    # a config an earlier CPU run dumped keeps the original backend aside
    config_backend = cfg.get('env_cfg', {}).get('config_backend') or dist_cfg.get('backend', 'gloo')
    dist_cfg.pop('backend', None)
    # configs written for GPUs say nccl; CPU tensors need gloo
    backend = 'gloo' if config_backend == 'nccl' else config_backend
    init_cpu_process_group(launcher, backend=backend, **dist_cfg)
    # What the Runner logs under "Runtime environment" (it prints env_cfg): the backend that really
    # runs, and that the processes are CPU processes (mmengine's own "GPU number" line there counts
    # processes); the config's own backend is kept for restore_gpu_settings.
    env_cfg = dict(cfg.get('env_cfg') or {})
    env_cfg['dist_cfg'] = dict(env_cfg.get('dist_cfg') or {}, backend=backend)
    env_cfg['device'] = 'cpu'
    env_cfg['processes'] = torch_dist.get_world_size()
    env_cfg['config_backend'] = config_backend
    cfg.env_cfg = env_cfg
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if wrapper['type'] in ('MMDistributedDataParallel', MMDistributedDataParallel):
        wrapper['type'] = 'CPUDistributedDataParallel'  # reverts SyncBN, which needs GPUs
    if 'DistributedDataParallel' in str(wrapper['type']):
        if cfg.get('model_wrapper_cfg') is None:  # mmengine's defaults for its own wrapper
            wrapper.setdefault('broadcast_buffers', False)
            wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        wrapper['device_ids'] = None  # CPU module: DDP must not be given device ids
    cfg.model_wrapper_cfg = wrapper
    return cfg


def restore_gpu_settings(cfg: Config) -> bool:
    """Undoes, in place, what :func:`setup_launcher` writes into a config for a CPU process group,
    for a config that a CPU run dumped (``work_dir/<name>.py``) and a GPU run reuses: the wrapper
    becomes mmengine's ``MMDistributedDataParallel`` again (SyncBN kept, device ids from
    LOCAL_RANK), and ``env_cfg`` loses its ``device`` / ``processes`` entries and gets the config's
    own backend back. Without it a GPU run would revert SyncBN to per-GPU BN, silently.

    Returns:
        bool: Whether anything was restored (then logged).
    """
    restored = False
    wrapper = cfg.get('model_wrapper_cfg')
    if isinstance(wrapper, dict) and wrapper.get('type') in ('CPUDistributedDataParallel',
                                                             CPUDistributedDataParallel):
        kept = {k: v for k, v in wrapper.items() if k not in ('type', 'device_ids')}
        cfg.model_wrapper_cfg = dict(kept, type='MMDistributedDataParallel')
        restored = True
    env_cfg = cfg.get('env_cfg')
    if isinstance(env_cfg, dict) and env_cfg.get('device') == 'cpu':
        env_cfg = {k: v for k, v in env_cfg.items() if k not in ('device', 'processes')}
        dist_cfg = dict(env_cfg.get('dist_cfg') or {})
        dist_cfg['backend'] = env_cfg.pop('config_backend', 'nccl')
        env_cfg['dist_cfg'] = dist_cfg
        cfg.env_cfg = env_cfg
        restored = True
    if restored:
        print_log(
            'this config was dumped by a CPU run: its CPU DDP wrapper and gloo backend are '
            "replaced by mmengine's MMDistributedDataParallel and the config's own backend",
            logger='current')
    return restored


def teardown_launcher() -> None:
    """Frees what still holds the process group, waits for every rank and destroys the group.

    Without it, a rank of a gloo job can abort at interpreter exit ("terminate called without an
    active exception") while the other ranks still talk to it, failing a run whose training
    finished. Call it after the Runner is out of scope: a Runner keeps itself alive through
    reference cycles (hooks, loops), and so its DDP wrapper and that wrapper's process group, until
    the collection here; left to the interpreter's finalization, gloo's worker threads can release
    tensors when Python can no longer take them, and the process aborts.
    """
    gc.collect()
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
