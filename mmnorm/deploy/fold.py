"""Folding mmnorm norm layers into plain BatchNorm for deployment without mmnorm.

In eval mode (``test_mode='running'`` for AdaBN) the AdaBN, RN and PBN layers are a batch
normalisation with fixed statistics: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with

* AdaBN: the selected ``eval_domain``'s running statistics and the shared affine;
* RN: the *target* running statistics (RN evaluates every input with them) and its affine (the gates
  only act in training);
* PBN: its BN child's running statistics and affine (PBN's patch statistics only act in training).

:func:`fold_norms` replaces each such layer by an ``nn.BatchNorm2d`` holding exactly these tensors,
so the model's state dict has stock BN keys. :func:`fold_config` rewrites a config so that mmseg /
mmdet build the folded model without mmnorm: norm configs become ``BN``, mmnorm model wrappers (UDA)
become the toolbox class they extend, and the parts that only exist with mmnorm (its hooks,
datasets, metrics) are removed and reported. IBN layers are kept: their InstanceNorm half normalises
every input with its own statistics and cannot be folded (export IBN models to ONNX).
"""
import inspect
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..bn_layers import norm_buffers
from ..models.norms import IBN, PBN, RN, AdaBN

__all__ = ['FOLDABLE', 'fold_norms', 'fold_config', 'mmnorm_types_in']

FOLDABLE = (AdaBN, RN, PBN)


def _eval_tensors(
    layer: nn.Module
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], float]:
    """``(running_mean, running_var, weight, bias, eps)`` an AdaBN / RN / PBN layer normalises
    with in eval."""
    if isinstance(layer, AdaBN) and layer.test_mode != 'running':
        raise ValueError(
            f'AdaBN(test_mode={layer.test_mode!r}) normalises with test-batch statistics and '
            "cannot be folded into fixed BN statistics; fold a model with test_mode='running' "
            '(the default) or export it to ONNX with tools/deployment/pytorch2onnx.py')
    mean, var = norm_buffers(layer)  # the statistics the layer normalises with in eval mode
    return mean, var, layer.weight, layer.bias, float(layer.eps)


def _plain_bn(layer: nn.Module) -> nn.BatchNorm2d:
    mean, var, weight, bias, eps = _eval_tensors(layer)
    if mean is None or var is None:
        raise ValueError(
            f'{type(layer).__name__}({layer.num_features}) keeps no running statistics; nothing to '
            'fold')
    bn = nn.BatchNorm2d(
        mean.numel(), eps=eps, affine=weight is not None, device=mean.device, dtype=mean.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if weight is not None:
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
    bn.train(layer.training)
    return bn


def fold_norms(model: nn.Module) -> Dict[str, str]:
    """Replaces, in place, every AdaBN / RN / PBN layer of ``model`` by an equivalent (eval-mode)
    ``BatchNorm2d``.

    Args:
        model (nn.Module): A model built with mmnorm layers (any nesting).

    Returns:
        dict: Qualified layer name -> the folded layer's class name.

    Raises:
        ValueError: An IBN layer (InstanceNorm cannot be folded), or an AdaBN layer that normalises
            with test-batch statistics.
    """
    ibn = [name for name, m in model.named_modules() if isinstance(m, IBN)]
    if ibn:
        raise ValueError(
            f'{len(ibn)} IBN layers (first: {ibn[0]!r}) hold InstanceNorm, which normalises every '
            'input with its own statistics and has no plain-BN equivalent; export IBN models to '
            'ONNX with tools/deployment/pytorch2onnx.py instead')
    folded = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FOLDABLE):
                setattr(parent, child_name, _plain_bn(child))
                folded[f'{parent_name}.{child_name}' if parent_name else child_name] = type(
                    child).__name__
    return folded


def mmnorm_types_in(registry, type_name) -> Optional[type]:
    """The class ``type_name`` resolves to in ``registry`` when mmnorm defines it, else None."""
    if not isinstance(type_name, str):
        return None
    cls = registry.get(type_name)
    return cls if cls is not None and cls.__module__.split('.')[0] == 'mmnorm' else None


def _stock_base(cls: type, registry) -> type:
    """The first class in ``cls``'s MRO that is not mmnorm's and that ``registry`` knows by its
    name."""
    for base in cls.__mro__[1:]:
        if base.__module__.split('.')[0] != 'mmnorm' and registry.get(base.__name__) is base:
            return base
    raise ValueError(
        f'{cls.__name__} extends no class registered in the toolbox; it cannot be loaded without '
        'mmnorm')


def _fold_model_cfg(node, registry, path: str, changes: List[str]):
    """Returns a copy of the model config ``node`` with mmnorm norm / model types replaced by
    stock ones."""
    if isinstance(node, (list, tuple)):
        return type(node)(_fold_model_cfg(v, registry, f'{path}{i}.', changes)
                          for i, v in enumerate(node))
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if isinstance(key, str) and key.endswith('norm_cfg') and isinstance(value, dict):
            cls = mmnorm_types_in(registry, value.get('type'))
            if cls is IBN:
                raise ValueError(
                    f"{path}{key}.type='IBN' cannot be folded (InstanceNorm); export the model to "
                    'ONNX')
            if cls is not None:
                value = {
                    k: v
                    for k, v in value.items() if k in ('requires_grad', 'eps', 'momentum')
                }
                value = dict(type='BN', **value)
                changes.append(f'{path}{key}.type: {cls.__name__} -> BN')
        out[key] = _fold_model_cfg(value, registry, f'{path}{key}.', changes)
    cls = mmnorm_types_in(registry, out.get('type'))
    if cls is not None and not issubclass(cls, FOLDABLE + (IBN, )):
        base = _stock_base(cls, registry)
        accepted = inspect.signature(base.__init__).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        dropped = [k for k in out if k != 'type' and k not in accepted and not takes_kwargs]
        out = {k: v for k, v in out.items() if k not in dropped}
        out['type'] = base.__name__
        changes.append(f'{path.rstrip(".")}.type: {cls.__name__} -> {base.__name__}' +
                       (f' (dropped {dropped})' if dropped else ''))
    return out


def _mentions_mmnorm(node, registries) -> Optional[str]:
    """The first mmnorm-defined ``type`` anywhere under ``node`` (any registry of the toolbox),
    else None."""
    if isinstance(node, dict):
        for registry in registries:
            cls = mmnorm_types_in(registry, node.get('type'))
            if cls is not None:
                return cls.__name__
        values = node.values()
    elif isinstance(node, (list, tuple)):
        values = node
    else:
        return None
    for value in values:
        found = _mentions_mmnorm(value, registries)
        if found:
            return found
    return None


# Runner sections that only work together (mmengine builds the loop only when all of them are set).
_LOOP_SECTIONS = {
    'train': ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'),
    'val': ('val_dataloader', 'val_cfg', 'val_evaluator'),
    'test': ('test_dataloader', 'test_cfg', 'test_evaluator'),
}


def fold_config(cfg_dict: dict, scope: str) -> Tuple[dict, List[str]]:
    """A copy of a config (as a plain dict) that stock mmseg / mmdet build without mmnorm.

    Args:
        cfg_dict (dict): ``Config.to_dict()`` of the mmnorm config.
        scope (str): ``'mmseg'`` or ``'mmdet'``.

    Returns:
        tuple: The new config dict and the list of changes made (one line each).
    """
    import importlib
    toolbox = importlib.import_module(f'{scope}.registry')
    registries = [
        toolbox.MODELS, toolbox.DATASETS, toolbox.TRANSFORMS, toolbox.METRICS, toolbox.HOOKS
    ]
    changes: List[str] = []
    cfg = dict(cfg_dict)
    cfg['model'] = _fold_model_cfg(cfg['model'], toolbox.MODELS, 'model.', changes)
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if any(str(m).split('.')[0] == 'mmnorm' for m in imports):
        rest = [m for m in imports if str(m).split('.')[0] != 'mmnorm']
        if rest:
            cfg['custom_imports'] = dict(cfg['custom_imports'], imports=rest)
        else:
            cfg.pop('custom_imports')
        changes.append('custom_imports: mmnorm removed')
    hooks = cfg.get('custom_hooks') or []
    kept = [h for h in hooks if not _mentions_mmnorm(h, registries)]
    for hook in hooks:
        if hook not in kept:
            changes.append(
                f"custom_hooks: {hook.get('type')} removed (mmnorm hook; the folded statistics are "
                'the deployed ones)')
    if hooks:
        cfg['custom_hooks'] = kept
    for loop, sections in _LOOP_SECTIONS.items():
        found = next((n for n in (_mentions_mmnorm(cfg.get(s), registries) for s in sections) if n),
                     None)
        if found:
            for section in sections:
                cfg.pop(section, None)
            changes.append(
                f'{", ".join(sections)} removed: they use {found}, which only exists with mmnorm '
                f'(add a {loop} set-up of stock types to {loop} this model)')
    for key in list(cfg):
        if key.endswith('norm_cfg') and isinstance(cfg[key],
                                                   dict):  # config variables such as norm_cfg = ...
            cfg[key] = _fold_model_cfg({key: cfg[key]}, toolbox.MODELS, '', changes)[key]
        found = _mentions_mmnorm(cfg[key], registries)
        # a helper variable (e.g. source_train = dict(type='GTA5Dataset', ...))
        if found and key != 'model':
            cfg.pop(key)
            changes.append(f'{key} removed: it uses {found}, which only exists with mmnorm')
    left = _mentions_mmnorm(cfg, registries)
    if left:
        raise ValueError(
            f'the folded config still names the mmnorm type {left!r}; it cannot be loaded without '
            'mmnorm')
    return cfg, changes
