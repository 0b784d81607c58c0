"""Hooks, registered in the root mmengine ``HOOKS`` registry."""
__all__ = []
