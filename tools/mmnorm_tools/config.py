"""Config checks of the tools, run before anything is built."""
from mmengine.config import Config

from mmnorm.runtime import get_toolbox

__all__ = ['available_norms', 'check_norm_types']


def available_norms(registry=None) -> list:
    """Names of the norm layers a ``norm_cfg`` can name (mmcv's and mmnorm's), sorted."""
    import torch.nn as nn
    from mmengine.registry import MODELS
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm
    registry = registry or MODELS
    names = []
    for name, cls in registry.module_dict.items():
        if not isinstance(cls, type):
            continue
        torch_norm = issubclass(cls, (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm))
        if torch_norm or getattr(cls, '_abbr_', None) in ('bn', 'in', 'gn', 'ln'):
            names.append(name)
    return sorted(set(names))


def check_norm_types(cfg: Config) -> int:
    """Checks that every ``*norm_cfg`` ``type`` under ``cfg.model`` names a registered layer.

    Returns:
        int: How many norm configs were checked.

    Raises:
        ValueError: Naming the config key, the bad value, the available norms and the nearest name.
    """
    import difflib
    import importlib

    import mmcv.cnn  # noqa: F401  (registers BN, SyncBN, GN, LN, IN in the root registry)
    scope = get_toolbox(cfg)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                is_norm_cfg = isinstance(key, str) and key.endswith('norm_cfg')
                if is_norm_cfg and isinstance(value, dict) and 'type' in value:
                    found.append((f'{path}{key}.type', value['type']))
                walk(value, f'{path}{key}.')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}{i}.')

    walk(cfg.get('model'), 'model.')
    for key, norm_type in found:
        if not isinstance(norm_type, str):
            continue  # a class given directly
        if registry.get(norm_type) is None:
            names = available_norms()
            close = difflib.get_close_matches(norm_type, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ''
            raise ValueError(
                f'{key}={norm_type!r} is not a registered norm layer{hint}; available '
                f'norms: {", ".join(names)}. mmnorm layers need '
                'custom_imports=dict(imports=["mmnorm"]) in the config (or import mmnorm)')
    return len(found)
