"""Argument checks shared by mmnorm's layers, functions and hooks (messages name the argument and
the value).

A failed check raises :class:`ArgumentError` (a ``ValueError``) or :class:`ArgumentTypeError` (also
a ``TypeError``): the tools report these as one line with exit status 2, while any other exception
keeps its traceback.

Momentum rule of every mmnorm layer (as torch's BN documents it): a number in [0, 1], or None for
a cumulative average where the layer keeps one (``PBN`` needs a number). ``eps`` is a finite number
> 0 everywhere.
"""
import math
from numbers import Real
from typing import Any, Optional

__all__ = [
    'ArgumentError', 'ArgumentTypeError', 'check_positive_int', 'check_eps', 'check_momentum'
]


class ArgumentError(ValueError):
    """An argument of an mmnorm layer, hook or function is out of range (one-line message)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of an mmnorm layer, hook or function has the wrong type (one-line message)."""


def check_positive_int(value: Any,
                       name: str,
                       *,
                       optional: bool = False,
                       minimum: int = 1) -> Optional[int]:
    """Returns ``value`` if it is an int >= ``minimum`` (or None when ``optional``); raises
    :class:`ArgumentError` otherwise.

    ``bool`` is refused although it is an ``int`` subclass (``num_iters=True`` is a mistake, not 1).
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = 'a positive int' if minimum == 1 else f'an int >= {minimum}'
        raise ArgumentError(f'{name} must be {what}{" or None" if optional else ""}, got {value!r}')
    return value


def check_eps(value: Any, layer: str) -> float:
    """Returns ``value`` as a float if it is a finite number > 0; :class:`ArgumentError` naming
    ``layer`` and the value otherwise."""
    if (isinstance(value, bool) or not isinstance(value, Real)
            or not (value > 0 and math.isfinite(value))):
        raise ArgumentError(f'{layer} eps must be a finite number > 0, got eps={value!r}')
    return float(value)


def check_momentum(value: Any, layer: str, *, allow_none: bool = True) -> Optional[float]:
    """Returns ``value`` if it is a number in [0, 1] (or None, a cumulative average, when
    ``allow_none``); :class:`ArgumentError` naming ``layer`` and the value otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        what = 'a number in [0, 1]' + (' or None (cumulative average)' if allow_none else '')
        raise ArgumentError(f'{layer} momentum must be {what}, got momentum={value!r}')
    return float(value)
