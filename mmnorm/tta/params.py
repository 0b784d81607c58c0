"""What test-time adaptation tunes: the ``params`` option of :class:`mmnorm.tta.TestTimeAdapter`.

* ``'norm'``: ``weight`` / ``bias`` of every norm layer — the BN-like layers of
  :func:`mmnorm.bn_layers.find_bn_layers` (AdaBN's shared affine, IBN's halves, RN without its
  gates), ``nn.LayerNorm`` (mmcv / mmseg ``'LN'``: MixVisionTransformer, Swin, VisionTransformer),
  ``nn.GroupNorm`` (``'GN'``) and affine instance norms;
* ``'all'``: every parameter of the model;
* ``dict(select='norm' | 'all', include=[pattern, ...], exclude=[pattern, ...])``: of the selected
  parameters, those whose qualified name matches an ``include`` pattern (all without ``include``)
  and no ``exclude`` pattern. Patterns are regular expressions searched in the name
  (``re.search``): ``'layer4'`` matches ``backbone.layer4.0.bn1.weight``.

SAR's default (:func:`sar_top_blocks`): its authors skip the top of the feature extractor — a
ResNet's ``layer4``, a ViT-Base's blocks 9–11 and its final norm. Mapped onto mmseg backbones:
ResNet / ResNetV1c ``backbone.layer4``; MixVisionTransformer (SegFormer) its last stage
``backbone.layers.<last>`` (blocks and stage norm); mmseg VisionTransformer the last quarter of
``backbone.layers`` and its final norm ``backbone.ln1``; Swin the last stage
``backbone.stages.<last>``; plain modules ``layer4`` or the last quarter of ``blocks`` and a final
``norm``. The decode head (a linear layer without norm in SAR's classifiers) keeps its norms tuned.
"""
import re
from typing import Dict, List, Sequence, Tuple, Union

import torch.nn as nn
from torch.nn.modules.instancenorm import _InstanceNorm

from ..validation import ArgumentError, ArgumentTypeError

__all__ = ['PARAM_SELECTIONS', 'affine_parameters', 'select_parameters', 'sar_top_blocks']

PARAM_SELECTIONS = ('norm', 'all')
NORM_KINDS = (nn.LayerNorm, nn.GroupNorm, _InstanceNorm)


def affine_parameters(model: nn.Module,
                      bn_layers: Dict[str, nn.Module]) -> List[Tuple[str, nn.Parameter]]:
    """``weight`` / ``bias`` of every norm layer (module docstring): the BN-like ``bn_layers`` (of
    :func:`~mmnorm.tta.norm_modes.statistics_leaves`) and every LayerNorm, GroupNorm and affine
    instance norm of ``model``.

    Returns:
        list: ``(qualified name, parameter)`` in registration order, each parameter once.
    """
    found: Dict[int, Tuple[str, nn.Parameter]] = {}
    for name, layer in bn_layers.items():
        for attr in ('weight', 'bias'):
            param = getattr(layer, attr, None)
            if isinstance(param, nn.Parameter):
                found.setdefault(id(param), (f'{name}.{attr}' if name else attr, param))
    for name, module in model.named_modules():
        if isinstance(module, NORM_KINDS):
            for attr in ('weight', 'bias'):
                param = getattr(module, attr, None)
                if isinstance(param, nn.Parameter):
                    found.setdefault(id(param), (f'{name}.{attr}' if name else attr, param))
    order = {id(p): i for i, p in enumerate(model.parameters())}
    return sorted(found.values(), key=lambda item: order.get(id(item[1]), len(order)))


def _patterns(value, key: str) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(f'params {key} must be a list of name patterns, got {value!r}')
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ArgumentError(f'params {key} pattern {pattern!r} is no regular expression: '
                                f'{err}') from None
    return list(value)


def check_params_option(params) -> None:
    """ArgumentError / ArgumentTypeError for a ``params`` value of the wrong form (model-free)."""
    if params is None or params in PARAM_SELECTIONS:
        return
    if isinstance(params, str):
        raise ArgumentError(
            f'params must be one of {PARAM_SELECTIONS} or dict(select=..., include=[...], '
            f'exclude=[...]), got {params!r}')
    if not isinstance(params, dict):
        raise ArgumentTypeError(
            f'params must be a str or a dict(select=..., include=[...], exclude=[...]), got '
            f'{params!r}')
    unknown = set(params) - {'select', 'include', 'exclude'}
    if unknown:
        raise ArgumentTypeError(f'params has unknown keys {sorted(unknown)}; the keys are select, '
                                'include, exclude')
    if params.get('select', 'norm') not in PARAM_SELECTIONS:
        raise ArgumentError(
            f"params select must be one of {PARAM_SELECTIONS}, got {params['select']!r}")
    _patterns(params.get('include'), 'include')
    _patterns(params.get('exclude'), 'exclude')


def select_parameters(model: nn.Module, bn_layers: Dict[str, nn.Module],
                      params: Union[str, dict]) -> List[Tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs that ``params`` (module docstring) selects.

    Raises:
        ArgumentError: A malformed option, or an include / exclude pattern that matches none of the
            selected parameters (the message names it and shows some names).
    """
    check_params_option(params)
    spec = dict(select=params) if isinstance(params, str) else dict(params)
    if spec.get('select', 'norm') == 'all':
        named = list(model.named_parameters())
    else:
        named = affine_parameters(model, bn_layers)
    for key in ('include', 'exclude'):
        for pattern in _patterns(spec.get(key), key):
            if not any(re.search(pattern, name) for name, _ in named):
                examples = ', '.join(name for name, _ in named[:4]) or 'none'
                raise ArgumentError(
                    f'params {key} pattern {pattern!r} matches none of the '
                    f'{len(named)} candidate parameters (e.g. {examples}); check the module names '
                    '(model.named_parameters())')
    include = _patterns(spec.get('include'), 'include')
    exclude = _patterns(spec.get('exclude'), 'exclude')
    return [(name, p) for name, p in named if (not include or any(
        re.search(pat, name)
        for pat in include)) and not any(re.search(pat, name) for pat in exclude)]


def _last_quarter(prefix: str, blocks: Sequence[nn.Module]) -> List[str]:
    n = len(blocks)
    return [rf'^{re.escape(prefix)}\.{i}\.' for i in range(n - max(n // 4, 1), n)]


def sar_top_blocks(model: nn.Module) -> List[str]:
    """SAR's excluded top blocks of ``model`` as exclude patterns (module docstring); empty when
    the model has none of the known layouts."""
    patterns: List[str] = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        kind = type(module).__name__
        base = f'{name}.' if name else ''
        if kind == 'MixVisionTransformer':
            patterns.append(rf'^{re.escape(base)}layers\.{len(module.layers) - 1}\.')
        elif kind == 'SwinTransformer':
            patterns.append(rf'^{re.escape(base)}stages\.{len(module.stages) - 1}\.')
        elif kind == 'VisionTransformer' and isinstance(
                getattr(module, 'layers', None), nn.ModuleList):
            patterns += _last_quarter(f'{base}layers', module.layers)
            patterns.append(rf'^{re.escape(base)}ln1\.')
        elif isinstance(getattr(module, 'layer4', None), nn.Module):
            patterns.append(rf'^{re.escape(base)}layer4\.')
        elif isinstance(getattr(module, 'blocks', None), (nn.ModuleList, nn.Sequential)):
            patterns += _last_quarter(f'{base}blocks', module.blocks)
            if isinstance(getattr(module, 'norm', None), NORM_KINDS):
                patterns.append(rf'^{re.escape(base)}norm\.')
    return list(dict.fromkeys(patterns))
