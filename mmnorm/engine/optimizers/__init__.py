"""Optimizer wrapper constructors, registered in the root mmengine ``OPTIM_WRAPPER_CONSTRUCTORS`` registry."""
from .norm_aware_constructor import NormAwareOptimWrapperConstructor, is_norm

__all__ = ['NormAwareOptimWrapperConstructor', 'is_norm']
