"""Argument checks of test-time adaptation (messages name the argument, the value and what to
do)."""
import inspect
from typing import Any, Optional, Sequence

import torch

from ..validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = ['check_method_arguments', 'check_adapter_arguments']


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
        raise ArgumentError(f'method must be one of {tuple(methods)}, got {method!r}')
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or prior < 0:
        raise ArgumentError(
            f'prior must be a number >= 0 (pseudo-samples of the source statistics), got {prior!r}')
    check_positive_int(steps, 'steps')
    check_positive_int(num_classes, 'num_classes', optional=True, minimum=2)
    if not isinstance(optimizer, dict) or 'type' not in optimizer:
        raise ArgumentTypeError(
            f"optimizer must be a dict with a 'type' (a torch.optim class name), got {optimizer!r}")
    name = optimizer['type']
    cls = getattr(torch.optim, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ArgumentError(
            f"optimizer type must name a torch.optim optimizer (e.g. 'SGD', 'Adam'), got {name!r}")
    default = inspect.signature(cls).parameters.get('lr')
    lr = optimizer.get('lr', None if default is None else default.default)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ArgumentError(f'optimizer lr must be a number > 0, got lr={lr!r}')


def check_adapter_arguments(method: Any, adapter_args: dict) -> None:
    """The model-free checks of ``TestTimeAdapter(model, method, **adapter_args)``, for a config
    to be refused before any model or checkpoint is built (``TestTimeAdaptHook.__init__``).

    Raises:
        ArgumentError: A value out of range; ArgumentTypeError: an unknown argument name.
    """
    from .adapter import DEFAULT_OPTIMIZER, METHODS, TestTimeAdapter
    from .safeguards import RESET_SIGNALS, CollapseMonitor, check_fraction
    signature = inspect.signature(TestTimeAdapter)
    try:
        bound = signature.bind(None, method, **adapter_args)
    except TypeError as err:
        names = [n for n in signature.parameters if n not in ('model', 'method', 'logger')]
        raise ArgumentTypeError(
            f'test-time adaptation: {err}; the arguments are {", ".join(names)}') from None
    args = {name: p.default for name, p in signature.parameters.items()}
    args.update(bound.arguments)
    optimizer = DEFAULT_OPTIMIZER if args['optimizer'] is None else args['optimizer']
    check_method_arguments(
        method,
        METHODS,
        prior=args['prior'],
        optimizer=optimizer,
        steps=args['steps'],
        num_classes=args['num_classes'])
    check_fraction(args['reliable'], 'reliable', closed_right=True)
    if args['reset_signal'] not in RESET_SIGNALS:
        raise ArgumentError(
            f"reset_signal must be one of {RESET_SIGNALS}, got {args['reset_signal']!r}")
    CollapseMonitor(args['reset_threshold'], args['reset_momentum'], args['reset_every'])
