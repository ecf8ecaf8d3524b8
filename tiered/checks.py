"""Argument checks shared by the public entry points."""

from __future__ import annotations

import operator

from .errors import InvalidArgumentError


def as_int(value: object, what: str) -> int:
    """``value`` as a Python int, or an error naming ``what`` (bools refused)."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(f"{what} must be an integer, got {type(value).__name__}") from None
