"""Sizes, counts and durations as people write them, read and printed in
one place.  Standard library only at import time, so the command line can
use it before importing the engine.

The rule (the one GNU ``dd`` and ``ls --block-size`` follow):

* byte sizes: a bare number is bytes; ``K M G T P E`` and ``KiB MiB GiB
  TiB PiB EiB`` are binary (powers of 1024, as in qemu-img: disk geometry
  is binary); ``kB MB GB TB PB EB``, with the ``B``, are decimal (powers of
  1000).  Case does not matter: ``64k`` is ``64K``, ``64kb`` is 64,000
  bytes.  A fraction is allowed when it makes whole bytes: ``1.5G``;
* counts and rates (writes, writes per second): ``k K M G`` are decimal,
  ``1M`` is 1,000,000;
* durations: a bare number is in the option's own unit (seconds for
  ``--checkpoint-seconds``, milliseconds for ``--max-query-ms``); with a
  unit it is what it says: ``20ms``, ``1s``, ``1.5m``, ``2h``, ``500us``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}

# Multipliers by lower-cased suffix.  humanfriendly.parse_size (used for
# durations below) does not fit sizes: its one `binary` switch makes K and
# KB mean the same, it truncates fractional bytes (1.3K -> 1331) and takes
# any word starting with a unit letter ("1Mx").  The rule above is a table.
_SIZE_SUFFIXES = {"": 1, "b": 1}
for _letter, _power in zip("kmgtpe", range(1, 7)):
    _SIZE_SUFFIXES[_letter] = 1024**_power
    _SIZE_SUFFIXES[_letter + "ib"] = 1024**_power
    _SIZE_SUFFIXES[_letter + "b"] = 1000**_power
_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

SIZE_HELP = "bytes, or with a unit: 64K = 64KiB = 65,536; 64kB = 64,000; 1.5G"
COUNT_HELP = "a number, or with k, M or G (decimal: 1M = 1,000,000)"


def _scaled(text: str, suffixes: dict[str, int], what: str, example: str) -> int:
    match = _NUMBER.fullmatch(text)
    if match is None or match.group(2).lower() not in suffixes:
        raise ValueError(f"invalid {what} {text!r}: expected {example}")
    value = Fraction(match.group(1)) * suffixes[match.group(2).lower()]
    if value.denominator != 1:
        raise ValueError(f"invalid {what} {text!r}: {float(value):g} is not a whole number")
    return int(value)


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``64KiB``, ``64kB``, ``1.5G``."""
    return _scaled(text, _SIZE_SUFFIXES, "size", SIZE_HELP)


def parse_count(text: str) -> int:
    """A whole number from ``100000``, ``100k``, ``1.5M`` (decimal)."""
    return _scaled(text, _COUNT_SUFFIXES, "number", COUNT_HELP)


def parse_rate(text: str) -> float:
    """Per second, from ``2500000``, ``2.5M``, ``800k`` (decimal)."""
    match = _NUMBER.fullmatch(text)
    if match is None or match.group(2).lower() not in _COUNT_SUFFIXES:
        raise ValueError(f"invalid rate {text!r}: expected {COUNT_HELP}")
    return float(match.group(1)) * _COUNT_SUFFIXES[match.group(2).lower()]


def parse_duration(text: str, unit_seconds: float) -> float:
    """Seconds, from a bare number in ``unit_seconds`` or ``20ms``, ``1s``, ``2m``..."""
    match = _NUMBER.fullmatch(text)
    if match is not None and not match.group(2):
        return float(match.group(1)) * unit_seconds
    from humanfriendly import InvalidTimespan, parse_timespan

    try:
        if match is None:
            raise InvalidTimespan(text)
        return float(parse_timespan(text.strip()))
    except InvalidTimespan:
        raise ValueError(
            f"invalid duration {text!r}: expected a number or one with a unit (20ms, 1s, 1.5m, 2h)"
        ) from None


def format_size(n: int) -> str:
    """The shortest exact spelling (``64K``, ``1T``), so that it parses back."""
    for unit, shift in sorted(UNITS.items(), key=lambda item: -item[1]):
        if shift and n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def format_bytes(n: float, sep: str = " ") -> str:
    """An approximate size for reading: ``5.7 MiB``, ``812 bytes``."""
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            return f"{n / (1 << shift):.1f}{sep}{unit}"
    return f"{n:.0f}{sep}bytes"


def format_ms(ms: float, sep: str = " ") -> str:
    """Milliseconds for reading, with three significant digits at most."""
    if not math.isfinite(ms):
        return f"{ms}{sep}ms"
    return f"{ms:.1f}{sep}ms" if abs(ms) >= 10 else f"{ms:.2f}{sep}ms"


def format_rate(per_s: float) -> str:
    """``2.5M`` (decimal, as rates are read)."""
    return f"{per_s / 1e6:.1f}M" if per_s >= 1e5 else f"{per_s / 1e3:.1f}k"


def format_seconds(seconds: float) -> str:
    """``43s``, ``2m05s``, ``1h02m``: for progress lines."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
