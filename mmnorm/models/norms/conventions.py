"""The toolboxes' norm conventions (``is_norm``, ``norm_eval``) extended to the mmnorm norm layers.

mmengine / mmcv recognise a norm layer by its torch base class (``_BatchNorm``, ``_InstanceNorm``,
``GroupNorm``, ``LayerNorm``); mmseg / mmdet ResNets apply ``norm_eval=True`` by calling ``eval()``
on every ``_BatchNorm``. AdaBN, IBN and PBN hold torch BN children, so those rules reach their
statistics and affine already. RN owns its parameters and statistics itself:

* :func:`is_norm` is True for every mmnorm norm layer (mmcv's ``is_norm`` is not);
* :func:`apply_norm_eval` puts RN (every mmnorm layer without a torch BN inside) in eval mode under
  each module with ``norm_eval=True``; the mmnorm UDA wrappers call it after ``train()``, so RN in a
  toolbox backbone with ``norm_eval=True`` keeps its statistics frozen as BN does.
"""
from typing import Tuple, Union

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .adabn import AdaBN
from .ibn import IBN
from .pbn import PBN
from .rn import RN

__all__ = ['TORCH_NORMS', 'MMNORM_NORMS', 'is_norm', 'owns_statistics', 'apply_norm_eval']

TORCH_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)
MMNORM_NORMS = (AdaBN, IBN, PBN, RN)


def is_norm(layer: nn.Module, exclude: Union[type, Tuple[type, ...], None] = None) -> bool:
    """mmcv's ``is_norm`` (torch BN / IN / GN / LN) extended to the mmnorm layers (AdaBN, IBN, PBN,
    RN).

    Same signature and contract as ``mmcv.cnn.is_norm``, so it can stand in for it.

    Args:
        layer (nn.Module): The layer to check.
        exclude (type | tuple[type], optional): Types that do not count as norm layers
            (``isinstance`` of any of them gives False). Defaults to None.

    Returns:
        bool: Whether ``layer`` is a norm layer.

    Raises:
        TypeError: ``exclude`` is neither None, a type nor a tuple of types.
    """
    if exclude is not None:
        types = exclude if isinstance(exclude, tuple) else (exclude, )
        if not all(isinstance(t, type) for t in types):
            raise TypeError('exclude must be None, a type or a tuple of types, '
                            f'got {type(exclude).__name__}: {exclude!r}')
        if isinstance(layer, types):
            return False
    return isinstance(layer, TORCH_NORMS + MMNORM_NORMS)


def owns_statistics(module: nn.Module) -> bool:
    """True for an mmnorm norm layer whose statistics are not held by a torch BN child (RN): the
    toolboxes' ``norm_eval`` (``eval()`` on each ``_BatchNorm``) does not reach them."""
    return isinstance(
        module, MMNORM_NORMS) and not any(isinstance(m, _BatchNorm) for m in module.modules())


def apply_norm_eval(model: nn.Module) -> int:
    """Puts every :func:`owns_statistics` layer under a training module with ``norm_eval=True`` in
    eval mode.

    Call it after ``model.train()`` (the mmnorm UDA wrappers do). Eval RN normalises with its target
    running statistics and updates nothing, as a BN under ``norm_eval``; its parameters keep
    ``requires_grad`` (as BN's).

    Returns:
        int: Number of layers put in eval mode.
    """
    count = 0
    for owner in model.modules():
        if owner.training and getattr(owner, 'norm_eval', False) is True:
            for layer in owner.modules():
                if layer.training and owns_statistics(layer):
                    layer.eval()
                    count += 1
    return count
