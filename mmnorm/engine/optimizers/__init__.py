"""Optimizer wrapper constructors (root ``OPTIM_WRAPPER_CONSTRUCTORS``), CPU AMP wrapper (root
``OPTIM_WRAPPERS``)."""
from .cpu_amp import CPUAmpOptimWrapper
from .norm_aware_constructor import NormAwareOptimWrapperConstructor, is_norm

__all__ = ['CPUAmpOptimWrapper', 'NormAwareOptimWrapperConstructor', 'is_norm']
