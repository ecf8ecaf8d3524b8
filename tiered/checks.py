"""Argument checks shared by the public entry points.

This module imports no kernels: the ``tiered compare`` parent process checks
its configurations with it and never loads numba.
"""

from __future__ import annotations

import operator

from .config import MAX_GRANULARITY, MAX_SIZE, MIN_GRANULARITY
from .errors import InvalidArgumentError


def as_int(value: object, what: str) -> int:
    """``value`` as a Python int, or an error naming ``what`` (bools refused)."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be an integer, got bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(f"{what} must be an integer, got {type(value).__name__}") from None


# The directory keeps one int32 per page of the volume (see tiered/bitmaps/table.py);
# capping the chunk count keeps that below 16 MiB.
MAX_CHUNKS = 1 << 44


def check_granularity(granularity: int) -> None:
    if not MIN_GRANULARITY <= granularity <= MAX_GRANULARITY or granularity & (granularity - 1):
        raise InvalidArgumentError(
            f"granularity must be a power of two from {MIN_GRANULARITY} to {MAX_GRANULARITY}, got {granularity}"
        )


def check_geometry(size: int, granularity: int) -> None:
    """The volume sizes and granularities a store accepts."""
    check_granularity(granularity)
    if not 0 < size <= MAX_SIZE:
        raise InvalidArgumentError(f"size must be from 1 to {MAX_SIZE} bytes, got {size}")
    if -(-size // granularity) > MAX_CHUNKS:
        raise InvalidArgumentError(
            f"size {size} at granularity {granularity} makes more than {MAX_CHUNKS} chunks; "
            "use a larger granularity"
        )
