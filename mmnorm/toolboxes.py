"""Which OpenMMLab toolboxes are installed. ``import mmnorm`` works with mmseg only, mmdet only
or both: each toolbox-specific module (datasets, metrics, backbones, UDA wrappers) is imported,
and so registered, only when its toolbox is installed; everything else (norm layers, hooks,
recalibration) needs neither."""
import importlib.util

__all__ = ['toolbox_installed']


def toolbox_installed(name: str) -> bool:
    """True if the package ``name`` (``'mmseg'`` or ``'mmdet'``) can be imported (without
    importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False
