"""The read-only subcommands: volumes, checkpoints, changed, stats.

They open the store read-only, so they never change it and run beside its
writer.  ``changed`` prints the same map as
``nbdinfo --map=qemu:dirty-bitmap:X`` so that scripts written against qemu
dirty bitmaps read it unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..units import format_size
from .common import (
    EXIT_OK, add_json_argument, add_store_argument, add_volume_argument, iso_utc,
    open_store, parse_size, warn, write_json, write_table,
)

if TYPE_CHECKING:
    from ..extents import Extents

# nbdinfo's type numbers for qemu:dirty-bitmap contexts.
CLEAN, DIRTY = 0, 1
_DESCRIPTION = {CLEAN: "clean", DIRTY: "dirty"}


def map_ranges(extents: Iterable[tuple[int, int]], lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """(offset, length, type) covering [lo, hi): dirty extents and the clean gaps."""
    return _coalesce(_pieces(extents, lo, hi))


def _pieces(extents: Iterable[tuple[int, int]], lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    # (start, end, type), possibly empty; _coalesce drops and merges them.
    position = lo
    for offset, length in extents:
        yield position, offset, CLEAN
        yield offset, offset + length, DIRTY
        position = offset + length
    yield position, hi, CLEAN


def _coalesce(pieces: Iterable[tuple[int, int, int]]) -> Iterator[tuple[int, int, int]]:
    # nbdinfo merges adjacent ranges of one type, so the map strictly
    # alternates; do the same rather than rely on the extents being coalesced.
    current: tuple[int, int, int] | None = None
    for start, end, kind in pieces:
        if end <= start:
            continue
        if current is not None and current[2] == kind and current[1] == start:
            current = (current[0], end, kind)
            continue
        if current is not None:
            yield current[0], current[1] - current[0], current[2]
        current = (start, end, kind)
    if current is not None:
        yield current[0], current[1] - current[0], current[2]


def format_map_line(offset: int, length: int, kind: int) -> str:
    # nbdinfo's layout: "%10" PRIu64 "  %10" PRIu64 "  %3" PRIu32 "  %s".
    return f"{offset:10d}  {length:10d}  {kind:3d}  {_DESCRIPTION[kind]}\n"

def add_volumes_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    add_json_argument(parser)


def cmd_volumes(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with open_store(args.store) as store:
        for name in store.volumes():
            vol = store.volume(name)
            rows.append(
                {
                    "name": name,
                    "size": vol.size,
                    "granularity": vol.granularity,
                    "mode": vol.strategy.mode,
                    "durability": vol.durability,
                    "checkpoints": len(vol.checkpoints()),
                    "generation_id": vol.generation_id,
                }
            )
            # Opening a volume loads its history into RAM; release it before
            # the next one so listing a large store stays within one volume.
            vol.close()
    if args.json:
        write_json(rows)
    else:
        write_table(
            ("NAME", "SIZE", "GRANULARITY", "MODE", "DURABILITY", "CHECKPOINTS"),
            (
                (row["name"], format_size(row["size"]), format_size(row["granularity"]),
                 row["mode"], row["durability"], row["checkpoints"])
                for row in rows
            ),
        )
    return EXIT_OK


def add_volume_report_arguments(parser: argparse.ArgumentParser) -> None:
    """STORE VOLUME [--json]: the arguments of the per-volume listings."""
    add_store_argument(parser)
    add_volume_argument(parser)
    add_json_argument(parser)


def cmd_checkpoints(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        checkpoints = store.volume(args.volume).checkpoints()
    if args.json:
        # ISO-8601 for people and jq, the raw float for exact comparisons.
        write_json(
            [
                {
                    "name": c.name,
                    "created": iso_utc(c.created),
                    "created_unix": c.created,
                    "generation_id": c.generation_id,
                }
                for c in checkpoints
            ]
        )
    else:
        write_table(("NAME", "CREATED"), ((c.name, iso_utc(c.created)) for c in checkpoints))
    return EXIT_OK


def add_changed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Sizes are bytes, or take a binary suffix: 64K, 1M, 1G, 1T, 64KiB..."
    add_store_argument(parser)
    add_volume_argument(parser)
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="report writes made after this checkpoint"
    )
    parser.add_argument(
        "--to", metavar="NEWER", help="stop at this later checkpoint instead of the present"
    )
    parser.add_argument(
        "--offset", type=parse_size, default=0, metavar="N", help="start of the region (default 0)"
    )
    parser.add_argument(
        "--length", type=parse_size, metavar="N", help="length of the region (default: to the end)"
    )
    add_json_argument(parser)


def query_changes(args: argparse.Namespace) -> tuple["Extents", int, int, bool]:
    """The dirty extents, the queried region [lo, hi) and the unclean flag."""
    with open_store(args.store) as store:
        vol = store.volume(args.volume)
        if args.to is None:
            extents = vol.changed_since(args.checkpoint, args.offset, args.length)
        else:
            extents = vol.changed_between(args.checkpoint, args.to, args.offset, args.length)
        # The query above validated the region, so [offset, hi) lies in the volume.
        hi = vol.size if args.length is None else args.offset + args.length
        return extents, args.offset, hi, vol.unclean_shutdown


def cmd_changed(args: argparse.Namespace) -> int:
    extents, lo, hi, unclean = query_changes(args)
    if unclean and not extents.exact:
        # The engine cannot tell a crash from a writer that is still running
        # with marks in RAM: both leave the volume flagged, so say both.
        warn(
            f"volume {args.volume!r} was not closed cleanly, or is open for writing "
            "elsewhere; since checkpoints taken before that, the whole region is "
            "reported as changed"
        )
    if args.json:
        write_json(
            {
                "volume": args.volume,
                "since": args.checkpoint,
                "until": args.to,
                "offset": lo,
                "length": hi - lo,
                "unclean_shutdown": unclean,
                **extents.to_dict(),
            }
        )
        return EXIT_OK
    if not extents.exact and not unclean:
        # The text map cannot say so itself (JSON carries it as "exact"); after
        # an unclean shutdown the warning above already explains it.
        warn("the map may include chunks that were not written (exact=false)")
    # One write per batch of lines: a map can hold millions of ranges.
    lines: list[str] = []
    for piece in map_ranges(extents, lo, hi):
        lines.append(format_map_line(*piece))
        if len(lines) >= 4096:
            sys.stdout.writelines(lines)
            lines.clear()
    sys.stdout.writelines(lines)
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        stats = store.volume(args.volume).stats()
    if args.json:
        write_json(stats)
    else:
        width = max(map(len, stats), default=0)
        for key, value in stats.items():
            shown = value if isinstance(value, str) else json.dumps(value)
            sys.stdout.write(f"{key + ':':<{width + 1}} {shown}\n")
    return EXIT_OK


# The one strategy setting each mode takes from the command line.
