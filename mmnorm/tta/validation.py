"""Argument checks of test-time adaptation (messages name the argument, the value and what to
do)."""
import inspect
from typing import Any, Optional, Sequence

import torch

from ..validation import ArgumentError, ArgumentTypeError, check_positive_int

__all__ = ['check_method_arguments', 'check_method_options', 'check_adapter_arguments']


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


def _number(value: Any,
            name: str,
            low: float,
            high: float,
            *,
            low_open: bool,
            high_open: bool,
            what: str = '') -> float:
    """``value`` as a float in the interval, else ArgumentError naming ``name`` and the value."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
        interval = (f'{"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
                    if high != float('inf') else f'{">" if low_open else ">="} {low}')
        raise ArgumentError(f'{name} must be a number {"in " if high != float("inf") else ""}'
                            f'{interval}{what}, got {value!r}')
    return float(value)


def check_method_options(*, params, sar_rho, sar_margin, sar_reset, sar_momentum, eata_margin,
                         eata_redundancy, eata_momentum, fisher_alpha, cotta_momentum,
                         cotta_restore, cotta_threshold, cotta_scales, cotta_flip, cotta_augment,
                         seed) -> dict:
    """The checked options of sar / eata / cotta and ``params`` (model-free), as a dict."""
    from .params import check_params_option
    inf = float('inf')
    check_params_option(params)
    opts = dict(
        sar_rho=_number(
            sar_rho,
            'sar_rho',
            0,
            inf,
            low_open=True,
            high_open=True,
            what=" (SAM's radius; SAR uses 0.05)"),
        sar_margin=_number(
            sar_margin,
            'sar_margin',
            0,
            1,
            low_open=True,
            high_open=False,
            what=' (E0 = sar_margin * ln K)'),
        sar_reset=_number(sar_reset, 'sar_reset', 0, inf, low_open=True, high_open=True),
        sar_momentum=_number(sar_momentum, 'sar_momentum', 0, 1, low_open=True, high_open=True),
        eata_margin=_number(
            eata_margin,
            'eata_margin',
            0,
            1,
            low_open=True,
            high_open=False,
            what=' (E0 = eata_margin * ln K)'),
        eata_redundancy=None if eata_redundancy is None else _number(
            eata_redundancy,
            'eata_redundancy',
            0,
            1,
            low_open=True,
            high_open=False,
            what=' or None (no redundancy filter)'),
        eata_momentum=_number(eata_momentum, 'eata_momentum', 0, 1, low_open=True, high_open=True),
        fisher_alpha=_number(fisher_alpha, 'fisher_alpha', 0, inf, low_open=False, high_open=True),
        cotta_momentum=_number(
            cotta_momentum, 'cotta_momentum', 0, 1, low_open=True, high_open=True),
        cotta_restore=_number(
            cotta_restore, 'cotta_restore', 0, 1, low_open=False, high_open=False),
        cotta_threshold=_number(
            cotta_threshold, 'cotta_threshold', 0, 1, low_open=False, high_open=False),
        cotta_flip=bool(cotta_flip),
        cotta_augment=bool(cotta_augment))
    scales = cotta_scales if isinstance(cotta_scales, (list, tuple)) else None
    if not scales or not all(not isinstance(v, bool) and isinstance(v, (int, float)) and v > 0
                             for v in scales):
        raise ArgumentError(
            f'cotta_scales must be a non-empty list of numbers > 0 (the teacher\'s view scales, '
            f'e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]), got {cotta_scales!r}')
    opts['cotta_scales'] = tuple(float(v) for v in scales)
    opts['seed'] = check_positive_int(seed, 'seed', minimum=0)
    return opts


def check_adapter_arguments(method: Any, adapter_args: dict) -> None:
    """The model-free checks of ``TestTimeAdapter(model, method, **adapter_args)``, for a config
    to be refused before any model or checkpoint is built (``TestTimeAdaptHook.__init__``).

    Raises:
        ArgumentError: A value out of range; ArgumentTypeError: an unknown argument name.
    """
    from .adapter import DEFAULT_OPTIMIZER, DEFAULT_OPTIMIZERS, METHODS, TestTimeAdapter
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
    optimizer = args['optimizer']
    if optimizer is None:
        optimizer = DEFAULT_OPTIMIZERS.get(method, DEFAULT_OPTIMIZER)
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
    check_method_options(
        **{name: args[name]
           for name in inspect.signature(check_method_options).parameters})
