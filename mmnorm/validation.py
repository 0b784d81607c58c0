"""Argument checks shared by mmnorm's layers, functions and hooks (messages name the argument and
the value)."""
from typing import Any, Optional

__all__ = ['check_positive_int']


def check_positive_int(value: Any,
                       name: str,
                       *,
                       optional: bool = False,
                       minimum: int = 1) -> Optional[int]:
    """Returns ``value`` if it is an int >= ``minimum`` (or None when ``optional``); raises
    ValueError otherwise.

    ``bool`` is refused although it is an ``int`` subclass (``num_iters=True`` is a mistake, not 1).
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = 'a positive int' if minimum == 1 else f'an int >= {minimum}'
        raise ValueError(f'{name} must be {what}{" or None" if optional else ""}, got {value!r}')
    return value
