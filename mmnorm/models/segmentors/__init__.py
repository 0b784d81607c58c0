"""Segmentors that add a method's loss to mmseg's (imported only when mmseg is installed)."""
from ...toolboxes import toolbox_installed

__all__ = []

if toolbox_installed('mmseg'):
    from .whitening import WhiteningEncoderDecoder
    __all__ += ['WhiteningEncoderDecoder']
