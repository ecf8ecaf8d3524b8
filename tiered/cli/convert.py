"""``tiered convert``: switch a volume to another strategy, keeping every
checkpoint (opens the store as its single writer)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .common import (
    EXIT_OK, EXIT_USAGE, PROG, add_json_argument, add_store_argument, add_volume_argument,
    positive_int, write_json,
)

if TYPE_CHECKING:
    from ..store import Store

_MODE_OPTION = {"multi-bit": "width", "hybrid": "recent"}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    # tiered.config needs only the standard library and tiered.errors; it
    # keeps the modes, widths and defaults in one place.
    from ..config import DEFAULT_RECENT, DEFAULT_WIDTH, GEN_WIDTHS, MODES

    parser.epilog = (
        "Every checkpoint and every answer is kept. The conversion is one "
        "transaction: a crash leaves the old strategy or the new one, never a mix."
    )
    add_store_argument(parser)
    add_volume_argument(parser)
    parser.add_argument("mode", metavar="MODE", choices=MODES, help=f"the new strategy: {', '.join(MODES)}")
    parser.add_argument(
        "--width", type=int, choices=GEN_WIDTHS,
        help=f"multi-bit only: bits per generation number (default: {DEFAULT_WIDTH})",
    )
    parser.add_argument(
        "--recent", type=positive_int, metavar="N",
        help=f"hybrid only: sealed writesets kept one-bit before folding (default: {DEFAULT_RECENT})",
    )
    parser.add_argument(
        "--durability", choices=("lazy", "sync"),
        help="also switch durability in the same transaction: sync makes answers exact after a crash "
             "(writes that dirty a new chunk wait for sync()); default: keep the volume's",
    )
    add_json_argument(parser)


def misplaced_option(args: argparse.Namespace) -> str | None:
    """Why --width or --recent does not fit MODE, if it does not."""
    for mode, option in _MODE_OPTION.items():
        if getattr(args, option) is not None and args.mode != mode:
            return f"--{option} applies only to {mode}, not to {args.mode}"
    return None


def describe_strategy(fixed: dict[str, Any]) -> str:
    """``multi-bit (width 8)`` from a strategy's stored settings."""
    option = _MODE_OPTION.get(fixed["mode"])
    return fixed["mode"] if option is None else f"{fixed['mode']} ({option} {fixed[option]})"


def open_store_for_writing(path: str) -> "Store":
    import tiered

    # A writer creates a missing store; converting must not, so a reader
    # first checks that a store is there (and fails with its clear message).
    tiered.open(path, readonly=True).close()
    return tiered.open(path)


def convert_volume(args: argparse.Namespace) -> dict[str, Any]:
    """Convert the volume; the report, as a JSON document."""
    import time

    import tiered

    option = _MODE_OPTION.get(args.mode)
    value = None if option is None else getattr(args, option)
    target = tiered.Strategy(args.mode, **({} if value is None else {option: value}))
    with open_store_for_writing(args.store) as store:
        vol = store.volume(args.volume)
        old = vol.strategy.fixed()
        old_durability = vol.durability
        before = vol.stats()
        start = time.perf_counter()
        vol.convert(target, durability=getattr(args, "durability", None))
        seconds = time.perf_counter() - start
        after = vol.stats()
    report = {
        "volume": args.volume,
        "from": old,
        "to": target.fixed(),
        "checkpoints": after["checkpoints"],
        "seconds": round(seconds, 6),
        "disk_bytes": {"before": before["disk_bytes"], "after": after["disk_bytes"]},
        "ram_bytes": {"before": before["ram_bytes"], "after": after["ram_bytes"]},
    }
    if getattr(args, "durability", None) is not None:
        report["durability"] = {"before": old_durability, "after": after["durability"]}
    return report


def cmd_convert(args: argparse.Namespace) -> int:
    problem = misplaced_option(args)
    if problem is not None:
        # argparse cannot tie an option to a positional's value: report it
        # as the same one-line usage error (see _Parser.error).
        sys.stderr.write(f"{PROG}: error: {problem} (see '{PROG} convert --help')\n")
        return EXIT_USAGE
    report = convert_volume(args)
    if args.json:
        write_json(report)
        return EXIT_OK
    rows = {
        "volume": report["volume"],
        "strategy": f"{describe_strategy(report['from'])} -> {describe_strategy(report['to'])}",
        "checkpoints kept": str(report["checkpoints"]),
        **({"durability": f"{report['durability']['before']} -> {report['durability']['after']}"}
           if "durability" in report else {}),
        "seconds": f"{report['seconds']:.3f}",
        "disk_bytes": f"{report['disk_bytes']['before']} -> {report['disk_bytes']['after']}",
        "ram_bytes": f"{report['ram_bytes']['before']} -> {report['ram_bytes']['after']}",
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        sys.stdout.write(f"{key + ':':<{width + 1}} {value}\n")
    return EXIT_OK


