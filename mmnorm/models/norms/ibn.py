"""IBN: Instance-Batch Normalization.

Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
ECCV 2018 (arXiv 1807.09441). The first ``int(C * ratio)`` channels are instance-normalised
(learned affine, no running statistics), the remaining channels go through batch normalization.

The layer is a plain container of two torch norm modules, ``IN`` and ``BN`` (the names of the
official checkpoints), and its forward calls them: split -> ``IN`` / ``BN`` -> cat, autograd
deriving the backward. Everything that works on torch norm layers therefore works on the halves
unchanged: ``norm_eval``, ``convert_sync_batchnorm`` / ``revert_sync_batchnorm``, hooks on the
children, profilers, AdaBN recalibration, tracing, ONNX export and ``torch.compile``.

Degenerate maps: on a map with one spatial position (``H * W == 1``, e.g. ASPP / PSP image
pooling) instance statistics are those of a single value, so the instance half is
``(x - x) / sqrt(0 + eps) * w + b = b``: it outputs its bias (in train and eval; torch's
``InstanceNorm2d`` refuses such maps). A one-time warning names the layer. A training batch with
one value per channel in the BN half (``N * H * W == 1``) is a ``ValueError``. An empty batch
(``N == 0``) gives an empty output, as torch's BN does.
"""

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.registry import MODELS

from ...validation import (ArgumentError, ArgumentTypeError, check_eps, check_momentum,
                           check_positive_int)
from .layer_names import layer_label

__all__ = ['IBN', 'num_instance_channels']


def num_instance_channels(num_features: int, ratio: float) -> int:
    """Number of leading channels that IBN instance-normalises: ``int(num_features * ratio)``.

    Raises:
        ValueError: ``ratio`` outside (0, 1), or a split that leaves either half empty.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ArgumentError(f'IBN ratio must be a number in (0, 1), got ratio={ratio!r} '
                            f'(C={num_features})')
    num_in = int(num_features * ratio)
    if num_in < 1 or num_in > num_features - 1:
        raise ArgumentError(
            f'IBN ratio={ratio} leaves the instance-norm half with {num_in} and the batch-norm '
            f'half with {num_features - num_in} of C={num_features} channels; both need at least '
            'one')
    return num_in


@MODELS.register_module()
class IBN(nn.Module):
    """Instance-Batch Normalization (the IBN-a layer).

    ``y = cat(IN(x[:, :h]), BN(x[:, h:]), dim=1)`` with ``h = int(C * ratio)``. Unlike the
    official code, the split uses the sizes ``[h, C - h]``, so ratios other than 0.5 and odd ``C``
    are split correctly.

    Args:
        num_features (int): Number of channels ``C``.
        eps (float): Added to the variance in both halves, > 0. Defaults to 1e-5.
        momentum (float, optional): Running-statistics momentum of the BN half, in [0, 1]; None
            for a cumulative average (as ``nn.BatchNorm2d``). Defaults to 0.1.
        ratio (float): Fraction of channels that are instance-normalised, in (0, 1).
            Defaults to 0.5.
        bn_cfg (dict): Config of the BN half (``type`` and options other than
            ``eps``/``momentum``, e.g. ``dict(type='SyncBN')``). Defaults to ``dict(type='BN')``.
        device, dtype: Factory arguments of the parameters and buffers.

    Shape:
        - Input: ``(N, C, H, W)``; ``(N, C)`` and ``(N, C, L)`` are normalised as ``(N, C, L, 1)``
          maps
        - Output: same shape as the input

    Children (state-dict keys as in the official IBN-Net checkpoints):
        ``IN``: ``nn.InstanceNorm2d(h, affine=True)``; ``BN``: the configured BN over ``C - h``
        channels.
    """

    _abbr_ = 'bn'  # backbones name it bn1, bn2, ... like BN, so BN checkpoints keep their keys
    layer_path = None  # module path for messages, set by layer_names.name_layers
    _warned_single_position = False

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 ratio: float = 0.5,
                 bn_cfg: dict = dict(type='BN'),
                 device=None,
                 dtype=None):
        super().__init__()
        check_positive_int(num_features, 'IBN num_features', minimum=2)
        if not isinstance(bn_cfg, dict) or 'type' not in bn_cfg:
            raise ArgumentTypeError(f'IBN bn_cfg must be a dict with a "type", got {bn_cfg!r}')
        clash = sorted({'eps', 'momentum'} & set(bn_cfg))
        if clash:
            raise ArgumentError(f'IBN bn_cfg must not set {clash}: pass them to IBN itself, '
                                f'got bn_cfg={bn_cfg!r}')
        self.num_features = num_features
        self.ratio = ratio
        self.num_in = num_instance_channels(num_features, ratio)
        self.eps = eps = check_eps(eps, 'IBN')
        self.momentum = momentum = check_momentum(momentum, 'IBN')
        self.bn_cfg = dict(bn_cfg)
        factory = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        self.IN = nn.InstanceNorm2d(self.num_in, eps=eps, affine=True, **factory)
        bn_layer_cfg = dict(bn_cfg, eps=eps, momentum=momentum, **factory)
        self.BN = build_norm_layer(bn_layer_cfg, num_features - self.num_in)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() in (2, 3):  # (N, C) / (N, C, L), BN1d positions (EncNet's encoding): (L, 1) maps
            return self.forward(x.reshape(*x.shape, *(1, ) * (4 - x.dim()))).reshape(x.shape)
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f'IBN expects (N, {self.num_features}, H, W) input, '
                             f'got shape {tuple(x.shape)}')
        x_in, x_bn = x.split([self.num_in, self.num_features - self.num_in], dim=1)
        if x.shape[0] == 0:  # an empty batch: torch's IN refuses it, BN returns an empty output
            y_in = self._instance_bias(x_in)
        elif x.shape[2] * x.shape[3] > 1:
            y_in = self.IN(x_in)
        else:
            y_in = self._single_position_instance_norm(x_in)
        if self.training and self.BN.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(
                f'{layer_label(self)}: input {tuple(x.shape)} has one value per channel for the '
                'batch-norm half in training (N x H x W = 1); use more than one image per GPU, or '
                'keep IBN out of 1x1 pooling branches (IBN-Net places IN in the early backbone '
                'stages only)')
        y = torch.cat([y_in, self.BN(x_bn)], dim=1)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)  # as torch's BN returns it
        return y

    def _single_position_instance_norm(self, x_in: torch.Tensor) -> torch.Tensor:
        """Instance norm of (N, h, 1, 1): every value is its own mean, so the output is the IN
        bias (with a one-time warning)."""
        if not self._warned_single_position:
            self._warned_single_position = True
            print_log(
                f'{layer_label(self)}: input with one spatial position; the instance-normalised '
                'half outputs its bias (IN of a single value is 0). IBN-Net places IN in early, '
                'high-resolution layers only: use norm_cfg=dict(type="BN") for pooling branches',
                logger='current',
                level=30)
        return self._instance_bias(x_in)

    def _instance_bias(self, x_in: torch.Tensor) -> torch.Tensor:
        """``(x - x) * w + b``: the IN bias in the shape of ``x_in``, with a zero gradient to
        ``x_in`` and to the IN weight (both kept in the graph)."""
        shape = (1, -1, 1, 1)
        y = (x_in - x_in) * self.IN.weight.view(shape) + self.IN.bias.view(shape)
        return y.to(x_in.dtype)  # as IN returns it (a bf16 map stays bf16)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain BN entry (``weight``, ``bias``, ``running_mean``, ...) is split into the two
        # halves: the IN affine takes the first h channels of weight/bias, the BN half the rest
        # (running stats of the IN channels are dropped, IN has none).
        plain = [
            name
            for name in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
            if prefix + name in state_dict
        ]
        if plain:
            self._split_plain_bn(state_dict, prefix, plain, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _split_plain_bn(self, state_dict, prefix, names, error_msgs):
        h = self.num_in
        for name in names:
            value = state_dict.pop(prefix + name)
            if name == 'num_batches_tracked':
                state_dict[prefix + 'BN.' + name] = value
                continue
            if value.dim() != 1 or value.numel() != self.num_features:
                error_msgs.append(f'size mismatch for {prefix}{name}: a plain BN entry of shape '
                                  f'{tuple(value.shape)} cannot load into IBN over '
                                  f'{self.num_features} channels')
                continue
            if name in ('weight', 'bias'):
                state_dict[prefix + 'IN.' + name] = value[:h]
            state_dict[prefix + 'BN.' + name] = value[h:]

    def extra_repr(self) -> str:
        return (f'{self.num_features}, eps={self.eps}, momentum={self.momentum}, '
                f'ratio={self.ratio} (IN channels={self.num_in}), bn_cfg={self.bn_cfg}')
