"""Config checks of the tools, run before anything is built, the config key of an argument
error raised while the Runner builds the model and hooks (before any weights load), and
``--cfg-options``, where ``data_roots.<dataset>=PATH`` moves every path of one dataset."""
import difflib
from typing import Dict, Iterator, List, Optional, Tuple

from mmengine.config import Config

from mmnorm.runtime import UserError, get_toolbox
from mmnorm.validation import ArgumentError

__all__ = [
    'available_norms', 'is_norm_layer', 'check_norm_types', 'check_layer_types',
    'check_hook_arguments', 'describe_argument_error', 'merge_cfg_options', 'move_data_roots',
    'config_data_roots'
]

DATA_ROOTS = 'data_roots'


def is_norm_layer(cls) -> bool:
    """Whether the class ``cls`` is a norm layer a ``norm_cfg`` can name (torch's BN / IN / GN /
    LN and their subclasses, or a layer with ``_abbr_`` 'bn', 'in', 'gn' or 'ln', as mmnorm's)."""
    import torch.nn as nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.instancenorm import _InstanceNorm
    if not isinstance(cls, type):
        return False
    torch_norm = issubclass(cls, (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm))
    return torch_norm or getattr(cls, '_abbr_', None) in ('bn', 'in', 'gn', 'ln')


def available_norms(registry=None) -> list:
    """Names of the norm layers a ``norm_cfg`` can name (mmcv's and mmnorm's), sorted."""
    from mmengine.registry import MODELS
    registry = registry or MODELS
    return sorted({name for name, cls in registry.module_dict.items() if is_norm_layer(cls)})


def _walk(node, path: str) -> Iterator[Tuple[str, str, object]]:
    """``(path of the dict, key, value)`` of every entry of the nested dicts / lists ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield path, i, value
            yield from _walk(value, f'{path}.{i}')


def _unknown(key: str,
             value,
             what: str,
             names: List[str],
             tail: str = '',
             label: str = 'valid') -> UserError:
    """``key=value`` is not ``what``, with the nearest of ``names`` and all of them."""
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    return UserError(f'{key}={value!r} is not {what}{hint}; {label}: {", ".join(names)}{tail}')


def check_norm_types(cfg: Config) -> int:
    """Checks that every ``*norm_cfg`` ``type`` under ``cfg.model`` names a registered norm layer.

    Returns:
        int: How many norm configs were checked.

    Raises:
        UserError: Naming the config key, the bad value (unknown, or registered but not a norm
        layer, e.g. ``'Conv2d'``), the nearest norm name and the available norms.
    """
    import importlib

    import mmcv.cnn  # noqa: F401  (registers BN, SyncBN, GN, LN, IN in the root registry)
    scope = get_toolbox(cfg)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    found = [(f'{path}.{key}.type', value['type'])
             for path, key, value in _walk(cfg.get('model'), 'model') if isinstance(key, str)
             and key.endswith('norm_cfg') and isinstance(value, dict) and 'type' in value]
    for key, norm_type in found:
        if not isinstance(norm_type, str):
            continue  # a class given directly
        cls = registry.get(norm_type)
        if cls is None:
            raise _unknown(
                key,
                norm_type,
                'a registered norm layer',
                available_norms(),
                '. mmnorm layers need custom_imports=dict(imports=["mmnorm"]) in the config (or '
                'import mmnorm)',
                label='available norms')
        if isinstance(cls, type) and not is_norm_layer(cls):
            raise _unknown(
                key,
                norm_type,
                f'a norm layer (it names {cls.__module__}.{cls.__name__})',
                available_norms(),
                label='available norms')
    return len(found)


def check_layer_types(cfg: Config) -> int:
    """Checks the layer types of the mmnorm backbones' ``perturb=dict(type=...)`` (a registered
    perturbation layer: MixStyle, EFDMix, DSU), ``ibn=dict(type=...)`` ('a' or 'b') and
    ``whitening=dict(type=...)`` (IW, IRW, ISW), and the arguments of the perturbation and
    whitening layers (each is built once; they have no weights).

    Returns:
        int: How many ``perturb`` / ``ibn`` / ``whitening`` configs were checked.

    Raises:
        UserError: Naming the config key, the bad value, the nearest valid name and the valid names.
    """
    from mmengine.registry import MODELS

    from mmnorm.models.backbones.ibn_resnet import DEFAULT_STAGES
    from mmnorm.models.perturb import StatPerturbation
    perturbations = sorted(name for name, cls in MODELS.module_dict.items()
                           if isinstance(cls, type) and issubclass(cls, StatPerturbation))
    count = 0
    for path, key, value in _walk(cfg.get('model'), 'model'):
        if key not in ('perturb', 'ibn', 'whitening') or not isinstance(value, dict):
            continue
        count += 1
        if key == 'whitening':
            _check_whitening(path, value)
            continue
        if key == 'ibn':
            ibn_type = value.get('type', 'a')
            if ibn_type not in DEFAULT_STAGES:
                raise _unknown(f'{path}.ibn.type', ibn_type, 'an IBN-Net type',
                               list(DEFAULT_STAGES))
            continue
        layer_type = value.get('type')
        if not isinstance(layer_type, str):
            continue  # a class given directly, or no type (the backbone names that)
        if layer_type not in perturbations:
            raise _unknown(f'{path}.perturb.type', layer_type, 'a perturbation layer',
                           perturbations)
        try:
            MODELS.build(dict(value))
        except ArgumentError as err:
            raise UserError(f'{path}.perturb ({layer_type}): {err}') from None
    return count


def _check_whitening(path: str, value: dict) -> None:
    """``<path>.whitening``: an IW / IRW / ISW / SAW config whose arguments build."""
    from mmengine.registry import MODELS

    from mmnorm.models.whitening import WHITENING_TYPES
    if value.get('type') not in WHITENING_TYPES:
        raise _unknown(f'{path}.whitening.type', value.get('type'), 'a whitening loss',
                       list(WHITENING_TYPES))
    try:
        # at a width of 64 channels; each position's own width is checked when the model builds
        MODELS.build(dict(value, num_features=64))
    except ArgumentError as err:
        raise UserError(f'{path}.whitening ({value["type"]}): {err}') from None


def check_hook_arguments(cfg: Config) -> int:
    """Builds the mmnorm hooks of ``cfg.custom_hooks`` (AdaBNHook, TestTimeAdaptHook: their
    ``__init__`` checks every argument that needs no model) so a bad option is refused before the
    Runner builds the model or loads a checkpoint.

    Returns:
        int: How many mmnorm hooks were checked.

    Raises:
        UserError: ``custom_hooks.<i> (<type>): <the hook's message>``.
    """
    from mmengine.registry import HOOKS
    count = 0
    for i, hook in enumerate(cfg.get('custom_hooks') or ()):
        hook_type = hook.get('type') if isinstance(hook, dict) else None
        cls = HOOKS.get(hook_type) if isinstance(hook_type, str) else None
        if not (isinstance(cls, type) and cls.__module__.startswith('mmnorm.')):
            continue
        count += 1
        try:
            HOOKS.build(dict(hook))
        except ArgumentError as err:
            raise UserError(f'custom_hooks.{i} ({hook_type}): {err}') from None
    return count


def describe_argument_error(err: ArgumentError, cfg: Config) -> str:
    """``err``'s message prefixed with the config keys of the mmnorm module that raised it (the
    innermost ``__init__`` of an mmnorm class on the traceback, e.g. ``model.backbone.norm_cfg
    (IBN): ...``); the bare message when no key is found."""
    names = []
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get('self')
        cls = type(owner)
        if tb.tb_frame.f_code.co_name == '__init__' and cls.__module__.startswith('mmnorm.'):
            names.insert(0, cls.__name__)  # innermost first
        tb = tb.tb_next
    for name in names:
        keys = []
        for path, key, value in _walk(dict(cfg.items()), 'cfg'):
            if isinstance(value, dict) and value.get('type') == name:
                keys.append(f'{path}.{key}'[len('cfg.'):])
        if keys:
            return f'{", ".join(keys)} ({name}): {err}'
    return str(err)


def _under(path: str, root: str) -> bool:
    """Whether ``path`` is the folder ``root`` or lies under it (``root`` with or without a
    trailing slash)."""
    root = root.rstrip('/')
    return path == root or path.startswith(root + '/')


def config_data_roots(cfg: Config) -> Dict[str, str]:
    """``{dataset: default root}`` of ``cfg``: its ``data_roots`` dict merged with every top-level
    dict named ``<something>_data_roots`` (a ``_base_`` file combined with another data base, e.g.
    an extra test set, names its dict so: mmengine refuses one key in two bases).

    Raises:
        UserError: One dataset with two different roots.
    """
    roots: Dict[str, str] = {}
    where: Dict[str, str] = {}
    for key, value in cfg.items():
        if not (key == DATA_ROOTS or key.endswith('_' + DATA_ROOTS)) or not isinstance(value, dict):
            continue
        for name, root in value.items():
            if name in roots and roots[name].rstrip('/') != str(root).rstrip('/'):
                raise UserError(f'{where[name]}.{name}={roots[name]!r} and {key}.{name}={root!r}: '
                                'one dataset, two roots; give both the same root in the config')
            roots.setdefault(name, root)
            where.setdefault(name, key)
    return roots


def move_data_roots(cfg: Config, roots: Dict[str, str]) -> int:
    """Moves datasets: for each ``name: new_root``, every string of ``cfg`` (dataloaders, hooks'
    pool loaders, nested dataset wrappers, evaluators' ``ann_file``...) that is the folder
    ``config_data_roots(cfg)[name]`` or a path under it is rebased onto ``new_root``, and the
    ``data_roots`` entries of ``name`` become ``new_root``.

    The shipped configs declare one root per dataset, ``data_roots = dict(cityscapes=
    'data/cityscapes/', ...)`` in their ``_base_`` data configs, and write every data path of that
    dataset under it; the tools call this for ``--cfg-options data_roots.cityscapes=/ssd/cs``
    (mmengine resolves ``{{_base_.x}}`` and variables when the file is parsed, so a variable set
    after loading would move nothing by itself).

    Returns:
        int: How many strings were moved.

    Raises:
        UserError: A name that is not a dataset of :func:`config_data_roots` (the error lists
        them), a root that is not a string, or two datasets whose default roots lie one in the
        other (a path under both could not be told apart).
    """
    if not roots:
        return 0
    defaults = config_data_roots(cfg)
    for name, new in roots.items():
        if name not in defaults:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hint = f' (did you mean {DATA_ROOTS}.{close[0]}?)' if close else ''
            known = ', '.join(f'{DATA_ROOTS}.{k}' for k in defaults) or 'none'
            raise UserError(f'{DATA_ROOTS}.{name}={new!r}: this config reads no dataset {name!r}'
                            f'{hint}; its data roots: {known}')
        if not isinstance(new, str) or not new:
            raise UserError(f'{DATA_ROOTS}.{name}={new!r}: give a folder path')
        for other, default in defaults.items():
            if other != name and (_under(default, defaults[name])
                                  or _under(defaults[name], default)):
                raise UserError(
                    f'{DATA_ROOTS}.{name} ({defaults[name]!r}) and {DATA_ROOTS}.{other} '
                    f'({default!r}) share a folder: give each dataset its own root in '
                    'the config')
    moves = [(defaults[name].rstrip('/'), new.rstrip('/')) for name, new in roots.items()]
    moved = 0

    def rebase(node):
        nonlocal moved
        if isinstance(node, str):
            for old, new in moves:
                if _under(node, old):
                    moved += 1
                    return (new + node[len(old):]) or '/'
            return node
        if isinstance(node, dict):
            for key in list(node):
                node[key] = rebase(node[key])
            return node
        if isinstance(node, list):
            node[:] = [rebase(v) for v in node]
            return node
        if isinstance(node, tuple):
            return type(node)(rebase(v) for v in node)
        return node

    for key in list(cfg.keys()):
        cfg[key] = rebase(cfg[key])
    for key, value in cfg.items():  # the declarations: exactly the roots given
        if key == DATA_ROOTS or key.endswith('_' + DATA_ROOTS):
            value.update({name: new for name, new in roots.items() if name in value})
    return moved


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> int:
    """Merges ``--cfg-options`` into ``cfg`` (mmengine's ``merge_from_dict``), then moves the
    datasets named by ``data_roots.<name>=PATH`` options (:func:`move_data_roots`).

    Returns:
        int: How many data paths were moved.
    """
    options = dict(options or {})
    prefix = DATA_ROOTS + '.'
    roots = {k[len(prefix):]: options.pop(k) for k in list(options) if k.startswith(prefix)}
    if DATA_ROOTS in options:
        raise UserError(f'--cfg-options {DATA_ROOTS}={options[DATA_ROOTS]!r}: set one dataset at a '
                        f'time, e.g. {DATA_ROOTS}.cityscapes=/path/to/cityscapes')
    if options:
        cfg.merge_from_dict(options)
    return move_data_roots(cfg, roots)
