"""What every subcommand shares: exit codes, argument types, output helpers
and opening a store.

Only the standard library is imported at module level (see
:mod:`tiered.cli`)."""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from typing import TYPE_CHECKING, Any, Iterable

from ..units import UNITS

if TYPE_CHECKING:
    from ..store import Store

PROG = "tiered"

# Exit codes: argparse already uses 2 for usage errors; 1 is for anything the
# store itself rejects (missing store, unknown name, region out of range...).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# -- sizes ---------------------------------------------------------------

_SIZE_RE = re.compile(r"(\d+)([KMGTPE](?:iB)?)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``1M``, ``64KiB``... (binary units)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a number of bytes, optionally "
            "followed by K, M, G, T, P or E (or KiB, MiB...)"
        )
    digits, unit = match.groups()
    return int(digits) << UNITS[(unit or "")[:1].upper()]




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


def parse_size_list(text: str) -> list[int]:
    """``4K,64K``: one size or a comma-separated sweep."""
    return [parse_size(part) for part in text.split(",")]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


# Kept here so that `tiered compare --help` needs no engine import; a test
