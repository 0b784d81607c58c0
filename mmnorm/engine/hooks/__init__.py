"""Hooks, registered in the root mmengine ``HOOKS`` registry."""
from .adabn_hook import AdaBNHook

__all__ = ['AdaBNHook']
