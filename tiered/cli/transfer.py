"""``tiered dump``, ``load``, ``backup`` and ``compact``: move a volume's
tracking state between stores, copy a whole store, shrink its data file.

``dump`` and ``backup`` open the store read-only, so they run beside its
writer; ``load`` opens it for writing (creating a missing store), and
``compact`` needs the store to itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, BinaryIO

from .common import (
    EXIT_OK, UsageError, add_json_argument, add_store_argument, add_volume_argument, open_store, write_json,
)

STDIO = "-"


def _binary(stream: Any, what: str) -> BinaryIO:
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        raise UsageError(f"FILE '-' needs a binary {what}, and this one is not")
    return buffer


def _report(args: argparse.Namespace, document: dict[str, Any], text: str, to_stderr: bool = False) -> None:
    if args.json and not to_stderr:
        write_json(document)
    else:
        (sys.stderr if to_stderr else sys.stdout).write(text + "\n")


def add_dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "FILE '-' writes the stream to stdout. A dump of a volume a writer process holds with "
        "unflushed marks loads as after an unclean shutdown (conservative answers)."
    )
    add_store_argument(parser)
    add_volume_argument(parser)
    parser.add_argument("file", metavar="FILE", help="where to write the dump ('-' for stdout)")
    add_json_argument(parser)


def cmd_dump(args: argparse.Namespace) -> int:
    to_stdout = args.file == STDIO
    target = _binary(sys.stdout, "stdout") if to_stdout else args.file
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a binary dump to a terminal; redirect stdout or name a FILE")
    if to_stdout:
        sys.stdout.flush()
    with open_store(args.store) as store:
        report = store.volume(args.volume).dump(target)
    if to_stdout:
        target.flush()
    text = (
        f"dumped volume {report['volume']!r}: {report['checkpoints']} checkpoints, "
        f"{report['pages']} pages, {report['bytes']} bytes"
    )
    # With '-' stdout is the stream: say nothing there.
    if not to_stdout:
        _report(args, report, text)
    return EXIT_OK


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "All or nothing: a truncated, damaged or foreign stream, or a name already taken, "
        "loads nothing. Opens the store for writing and creates it if missing."
    )
    add_store_argument(parser)
    parser.add_argument("file", metavar="FILE", help="the dump to read ('-' for stdin)")
    parser.add_argument("--as", dest="name", metavar="NAME", help="load under this name instead of the dumped one")
    add_json_argument(parser)


def cmd_load(args: argparse.Namespace) -> int:
    import tiered

    source = _binary(sys.stdin, "stdin") if args.file == STDIO else args.file
    with tiered.open(args.store) as store:
        vol = store.load(source, args.name)
        report = {
            "volume": vol.name,
            "mode": vol.strategy.mode,
            "checkpoints": len(vol.checkpoints()),
            "unclean_shutdown": vol.unclean_shutdown,
            "durability": vol.durability,
            "generation_id": vol.generation_id,
        }
    text = f"loaded volume {report['volume']!r} ({report['mode']}, {report['checkpoints']} checkpoints)"
    if report["unclean_shutdown"] and report["durability"] == "sync":
        text += "; it was dumped after an unclean shutdown, and its journal kept every synced mark"
    elif report["unclean_shutdown"]:
        text += "; it was dumped with marks lost or unflushed, so older checkpoints answer conservatively"
    _report(args, report, text)
    return EXIT_OK


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "A consistent, compacted copy taken from one read transaction, while a writer may work; "
        "DEST must be missing or an empty directory."
    )
    add_store_argument(parser)
    parser.add_argument("dest", metavar="DEST", help="directory of the copy (missing or empty)")
    add_json_argument(parser)


def cmd_backup(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        report = store.backup(args.dest)
    _report(args, report, f"backed up {args.store} to {report['path']}: {report['bytes']} bytes")
    return EXIT_OK


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Gives back the space of removed volumes and checkpoints. Needs the store to itself "
        "(no writer or reader process); a failure leaves the store as it was."
    )
    add_store_argument(parser)
    add_json_argument(parser)


def cmd_compact(args: argparse.Namespace) -> int:
    import tiered

    report = tiered.compact(args.store)
    _report(
        args, report,
        f"compacted {report['path']}: data.mdb {report['before']} -> {report['after']} bytes",
    )
    return EXIT_OK
