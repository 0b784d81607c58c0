"""The toolbox a config runs in (its ``default_scope``)."""
from mmengine.config import Config

__all__ = ['TOOLBOXES', 'get_toolbox']

# default_scope -> toolbox the config runs in.
TOOLBOXES = {'mmseg': 'mmsegmentation', 'mmdet': 'mmdetection'}


def get_toolbox(cfg: Config) -> str:
    """Returns the config's ``default_scope`` (``'mmseg'`` or ``'mmdet'``); raises ValueError
    otherwise."""
    scope = cfg.get('default_scope', None)
    if scope is None:
        raise ValueError(f'config {cfg.filename!r} has no default_scope; mmnorm tools need '
                         f"default_scope='mmseg' or 'mmdet' to know the toolbox")
    if scope not in TOOLBOXES:
        raise ValueError(
            f'config {cfg.filename!r} has default_scope={scope!r}; mmnorm tools support '
            f'{sorted(TOOLBOXES)}')
    return scope
