"""Byte sizes as people write them: binary multiples, as in qemu-img and
nbdkit (disk geometry is never decimal).  Standard library only, so the
command line can use it before importing the engine."""

from __future__ import annotations

UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


def format_size(n: int) -> str:
    """The shortest exact spelling (``64K``, ``1T``), so that it parses back."""
    for unit, shift in sorted(UNITS.items(), key=lambda item: -item[1]):
        if shift and n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)
