"""``norm_decay_mult`` for every mmnorm layer: ``NormAwareOptimWrapperConstructor``.

mmengine's ``DefaultOptimWrapperConstructor`` recognises a norm layer by its torch base class
(``_BatchNorm``, ``_InstanceNorm``, ``GroupNorm``, ``LayerNorm``) and applies ``norm_decay_mult`` to
the parameters the layer owns directly. mmnorm layers that hold torch norms as children (IBN, AdaBN,
PBN) are covered by that rule already; a layer that owns its parameters itself (RN: ``weight``,
``bias`` and four gates) is not. This constructor applies the default constructor's rules unchanged
and treats such layers as norms::

    optim_wrapper = dict(constructor='NormAwareOptimWrapperConstructor', optimizer=dict(type='SGD',
    ...),
                         paramwise_cfg=dict(norm_decay_mult=0.0))
"""
from typing import List, Optional, Union

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch.nn.modules.batchnorm import _BatchNorm

from ...models.norms.conventions import TORCH_NORMS, is_norm

__all__ = ['NormAwareOptimWrapperConstructor', 'is_norm']


class _NormParameters(_BatchNorm):
    """An empty ``_BatchNorm`` holding another layer's own parameters (the same ``Parameter``
    objects), so that the default constructor's norm rules apply to them."""

    def __init__(self, module: nn.Module):
        super().__init__(0, affine=False, track_running_stats=False)
        for name, param in module.named_parameters(recurse=False):
            self.register_parameter(name, param)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class NormAwareOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that also applies ``norm_decay_mult`` (and the other norm
    rules, e.g. norm biases being exempt from ``bias_lr_mult``) to the parameters owned directly by
    mmnorm layers.

    Same arguments as ``DefaultOptimWrapperConstructor``; ``custom_keys`` keep their priority and
    see the same parameter names (``backbone.layer1.0.bn1.gate_mean_source`` ...).
    """

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        if isinstance(module, TORCH_NORMS) or not is_norm(module):
            return super().add_params(params, module, prefix, is_dcn_module)
        # An mmnorm layer: its own parameters through the norm rules, its children as usual.
        super().add_params(params, _NormParameters(module), prefix, is_dcn_module)
        for child_name, child in module.named_children():
            self.add_params(params, child, f'{prefix}.{child_name}' if prefix else child_name,
                            is_dcn_module)
