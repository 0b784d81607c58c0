"""Finding the BN-like layers of a model and the buffers each normalises with in eval mode."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

try:  # mmcv's own SyncBN (CUDA kernels; not a torch _BatchNorm subclass)
    from mmcv.ops import SyncBatchNorm as MMSyncBN
except ImportError:  # pragma: no cover - mmcv without ops
    MMSyncBN = None

__all__ = ['MMSyncBN', 'is_torch_bn', 'norm_buffers', 'find_bn_layers']


def is_torch_bn(module: nn.Module) -> bool:
    """Whether ``module`` is a torch ``_BatchNorm`` (BN, SyncBN, ``_BatchNormXd``) or an mmcv
    ``MMSyncBN``."""
    return isinstance(module, _BatchNorm) or (MMSyncBN is not None and isinstance(module, MMSyncBN))


def norm_buffers(module: nn.Module) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The ``(running_mean, running_var)`` a BN-like layer normalises with in eval mode (shapes
    (C,)).

    A composite mmnorm layer names them with ``recalibration_buffers()`` (AdaBN: the selected
    domain's; RN: the target's; PBN: its own); a torch ``_BatchNorm`` / mmcv ``MMSyncBN`` uses its
    running buffers. These are the buffers :func:`mmnorm.recalibrate_bn` writes the target
    statistics into.
    """
    if callable(getattr(module, 'recalibration_buffers', None)):
        return module.recalibration_buffers()
    return getattr(module, 'running_mean', None), getattr(module, 'running_var', None)


def find_bn_layers(model: nn.Module) -> Tuple[Dict[str, nn.Module], Dict[str, str]]:
    """The BN-like layers of ``model`` and the norm layers without batch statistics to recalibrate.

    BN-like: a module with ``recalibration_buffers()`` (its descendants are not visited: a composite
    layer's BN children are not counted twice), a torch ``_BatchNorm`` or an mmcv ``MMSyncBN`` with
    running statistics.

    Returns:
        tuple[dict, dict]: ``{name: module}`` in registration order, and ``{name: reason}`` for the
        layers left alone (IN / GN / LN, BN with ``track_running_stats=False``).
    """
    layers: Dict[str, nn.Module] = {}
    left_alone: Dict[str, str] = {}
    owners: List[str] = []  # composite BN-like layers: their descendants are skipped
    for name, module in model.named_modules():
        if any(name.startswith(owner + '.' if owner else '') for owner in owners):
            continue
        composite = callable(getattr(module, 'recalibration_buffers', None))
        if composite or is_torch_bn(module):
            if any(b is None for b in norm_buffers(module)):
                left_alone[name] = f'{type(module).__name__}: no running statistics'
            else:
                layers[name] = module
            if composite:
                owners.append(name)
        elif isinstance(module, (_InstanceNorm, nn.GroupNorm, nn.LayerNorm)):
            left_alone[name] = f'{type(module).__name__}: no batch statistics to recalibrate'
    return layers, left_alone
