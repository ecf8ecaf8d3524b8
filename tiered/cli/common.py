"""What every subcommand shares: exit codes, argument types, output helpers
and opening a store.

Only the standard library is imported at module level (see
:mod:`tiered.cli`)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import units

if TYPE_CHECKING:
    from ..store import Store

PROG = "tiered"

# Exit codes: argparse already uses 2 for usage errors; 1 is for anything the
# store itself rejects (missing store, unknown name, region out of range...).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# `tiered check`: the store holds damage (after --repair: damage remains).
# The same number as a failure, as fsck and `git fsck` report damage.
EXIT_DAMAGED = 1
EXIT_INTERRUPTED = 130
# -- argument types ----------------------------------------------------------
# Each wraps one parser of ..units (where the rule for K, KiB and kB is
# written down) and turns its ValueError into argparse's usage error.


class UsageError(Exception):
    """Arguments that cannot work together: exit 2, before any work."""


def _argument(parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``64KiB``, ``64kB``, ``1.5G`` (see :mod:`tiered.units`)."""
    return _argument(units.parse_size, text)


def positive_size(text: str) -> int:
    value = parse_size(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def parse_size_list(text: str) -> list[int]:
    """``4K,64K``: one size or a comma-separated sweep, each positive, none twice."""
    return _no_duplicates([positive_size(part) for part in text.split(",")], text)


def _no_duplicates(values: list[Any], text: str) -> list[Any]:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise argparse.ArgumentTypeError(f"{text!r} names {seen[0]!r} twice")
    return values


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma-separated list of some of ``choices``, none twice."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",")]
        for value in values:
            if value not in choices:
                raise argparse.ArgumentTypeError(
                    f"invalid choice {value!r} (choose from {', '.join(choices)})"
                )
        return _no_duplicates(values, text)

    return parse


def positive_int(text: str) -> int:
    """A count: ``100000``, ``100k``, ``1M`` (decimal)."""
    value = _argument(units.parse_count, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _positive(value: float, text: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text!r}")
    return value


def positive_rate(text: str) -> float:
    """Per second: ``2500000``, ``2.5M``, ``800k`` (decimal)."""
    return _positive(_argument(units.parse_rate, text), text)


def positive_seconds(text: str) -> float:
    """Seconds: ``5``, ``0.5``, ``500ms``, ``2m``."""
    return _positive(_argument(lambda t: units.parse_duration(t, 1.0), text), text)


def positive_ms(text: str) -> float:
    """Milliseconds: ``20``, ``20ms``, ``0.5s``."""
    return _positive(_argument(lambda t: units.parse_duration(t, 1e-3), text) * 1e3, text)


def iso_utc(timestamp: float) -> str:
    return (
        datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


# -- output --------------------------------------------------------------


def write_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def write_table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    """Left-aligned text columns, wide enough for their longest cell."""
    cells = [tuple(str(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        sys.stdout.write(line.rstrip() + "\n")


def warn(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {message}\n")

def open_store(path: str) -> "Store":
    import tiered

    # Read-only: inspecting a store must never change it, and must work on a
    # store that a backup or VM process has open for writing.
    return tiered.open(path, readonly=True)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="directory of the store")


def add_volume_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("volume", metavar="VOLUME", help="volume name")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")

