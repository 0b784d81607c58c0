"""Argument checks of test-time adaptation (messages name the argument, the value and what to
do)."""
import inspect
from typing import Any, Optional, Sequence

import torch

from ..validation import check_positive_int

__all__ = ['check_method_arguments']


def check_method_arguments(method: Any,
                           methods: Sequence[str],
                           *,
                           prior: Any,
                           optimizer: Any,
                           steps: Any,
                           num_classes: Optional[Any] = None) -> None:
    """ValueError / TypeError for an unknown ``method``, ``prior < 0``, ``steps < 1``, an
    optimizer config that is not ``dict(type=<torch.optim class name>, lr=<number > 0>, ...)``."""
    if method not in methods:
        raise ValueError(f'method must be one of {tuple(methods)}, got {method!r}')
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or prior < 0:
        raise ValueError(
            f'prior must be a number >= 0 (pseudo-samples of the source statistics), got {prior!r}')
    check_positive_int(steps, 'steps')
    check_positive_int(num_classes, 'num_classes', optional=True, minimum=2)
    if not isinstance(optimizer, dict) or 'type' not in optimizer:
        raise TypeError(
            f"optimizer must be a dict with a 'type' (a torch.optim class name), got {optimizer!r}")
    name = optimizer['type']
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(
            f"optimizer type must name a torch.optim optimizer (e.g. 'SGD', 'Adam'), got {name!r}")
    default = inspect.signature(cls).parameters.get('lr')
    lr = optimizer.get('lr', None if default is None else default.default)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f'optimizer lr must be a number > 0, got lr={lr!r}')
