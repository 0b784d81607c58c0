"""Hooks, registered in the root mmengine ``HOOKS`` registry."""
from .adabn_hook import AdaBNHook
from .isw_hook import ISWStatisticsHook
from .tta_hook import TestTimeAdaptHook

__all__ = ['AdaBNHook', 'ISWStatisticsHook', 'TestTimeAdaptHook']
