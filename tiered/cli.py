"""The ``tiered`` command: inspect a change-tracking store, or convert its volumes.

    tiered volumes STORE
    tiered checkpoints STORE VOLUME
    tiered changed STORE VOLUME CHECKPOINT [--to NEWER] [--offset N] [--length N]
    tiered stats STORE VOLUME
    tiered convert STORE VOLUME MODE [--width {8,16,32}] [--recent N]

Every command is a thin layer over the public API.  The inspecting commands
open the store read-only, so they never change it and run beside its writer;
``convert`` opens it as the store's single writer.  ``changed`` prints the
same map as ``nbdinfo --map=qemu:dirty-bitmap:X`` so that scripts written
against qemu dirty bitmaps read it unchanged.

Only the standard library is imported at module level: the engine (numpy,
numba, lmdb) is imported inside the handlers, so ``tiered --help`` and usage
errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn

from .units import UNITS, format_size

if TYPE_CHECKING:
    from .extents import Extents
    from .store import Store

PROG = "tiered"

# Exit codes: argparse already uses 2 for usage errors; 1 is for anything the
# store itself rejects (missing store, unknown name, region out of range...).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# nbdinfo's type numbers for qemu:dirty-bitmap contexts.
CLEAN, DIRTY = 0, 1
_DESCRIPTION = {CLEAN: "clean", DIRTY: "dirty"}


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


# -- subcommands ---------------------------------------------------------
#
# Each subcommand is an `add_<name>_arguments` function that declares its
# options and a `cmd_<name>` function that runs it and returns an exit code;
# COMMANDS below lists them.  To add one, write those
# two functions and append a Command to COMMANDS: main() needs no change.
# Handlers import the engine themselves (see the module docstring).


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
                    "checkpoints": len(vol.checkpoints()),
                }
            )
            # Opening a volume loads its history into RAM; release it before
            # the next one so listing a large store stays within one volume.
            vol.close()
    if args.json:
        write_json(rows)
    else:
        write_table(
            ("NAME", "SIZE", "GRANULARITY", "MODE", "CHECKPOINTS"),
            (
                (row["name"], format_size(row["size"]), format_size(row["granularity"]),
                 row["mode"], row["checkpoints"])
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
                {"name": c.name, "created": iso_utc(c.created), "created_unix": c.created}
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
    if unclean:
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
_MODE_OPTION = {"multi-bit": "width", "hybrid": "recent"}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    # tiered.config needs only the standard library and tiered.errors; it
    # keeps the modes, widths and defaults in one place.
    from .config import DEFAULT_RECENT, DEFAULT_WIDTH, GEN_WIDTHS, MODES

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
        before = vol.stats()
        start = time.perf_counter()
        vol.convert(target)
        seconds = time.perf_counter() - start
        after = vol.stats()
    return {
        "volume": args.volume,
        "from": old,
        "to": target.fixed(),
        "checkpoints": after["checkpoints"],
        "seconds": round(seconds, 6),
        "disk_bytes": {"before": before["disk_bytes"], "after": after["disk_bytes"]},
        "ram_bytes": {"before": before["ram_bytes"], "after": after["ram_bytes"]},
    }


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
        "seconds": f"{report['seconds']:.3f}",
        "disk_bytes": f"{report['disk_bytes']['before']} -> {report['disk_bytes']['after']}",
        "ram_bytes": f"{report['ram_bytes']['before']} -> {report['ram_bytes']['after']}",
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        sys.stdout.write(f"{key + ':':<{width + 1}} {value}\n")
    return EXIT_OK


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
# checks them against tiered.workloads.KINDS and tiered.traces.FORMATS.
WORKLOAD_KINDS = ("uniform", "zipf", "sequential", "database")
TRACE_FORMATS = ("fio", "blkparse", "msr")
DEFAULT_WORKLOAD = "zipf"
DEFAULT_VOLUME = 1 << 40
DEFAULT_WRITES = 10_000_000
DEFAULT_CHECKPOINT_EVERY = 100_000
DEFAULT_CACHE = 64 << 20


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Sizes are bytes or take a binary suffix (64K, 32M, 1T).  Lists are comma-separated and "
        "swept: every combination of --mode, --granularity and --cache is measured.  Exit status: "
        "0 with a recommendation, 1 if no configuration meets the limits or answers differ.  "
        "Example: tiered compare --trace app.iolog --max-ram 32M --max-query-ms 20"
    )
    source = parser.add_argument_group(
        "what to replay",
        f"default: the built-in workload, {DEFAULT_WRITES:,} zipf-skewed 4 KiB writes on a 1 TiB "
        f"volume with a checkpoint every {DEFAULT_CHECKPOINT_EVERY:,} writes",
    )
    which = source.add_mutually_exclusive_group()
    which.add_argument("--trace", metavar="FILE", help="a block trace: fio iolog (v2, v3), blkparse text or MSR Cambridge CSV")
    which.add_argument("--workload", choices=WORKLOAD_KINDS, help=f"a synthetic workload (default: {DEFAULT_WORKLOAD})")
    source.add_argument("--format", choices=TRACE_FORMATS, help="the trace's format (default: detected)")
    source.add_argument("--skip-bad", action="store_true", help="skip malformed trace lines instead of stopping")
    source.add_argument("--size", type=parse_size, metavar="SIZE",
                        help="volume size (default: 1T for a workload, the last byte written for a trace)")
    source.add_argument("--writes", type=positive_int, default=DEFAULT_WRITES, metavar="N", help=f"writes of a workload (default: {DEFAULT_WRITES:,})")
    source.add_argument("--write-size", type=parse_size, metavar="SIZE", help="bytes per write of a workload (default: 4K, 8K for database)")
    source.add_argument("--seed", type=int, default=1, help="workload seed (default: 1)")
    source.add_argument("--iops", type=positive_float, metavar="RATE", help="give workload writes Poisson arrival times at this rate")
    clock = source.add_mutually_exclusive_group()
    clock.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                       help=f"writes between checkpoints (default: {DEFAULT_CHECKPOINT_EVERY:,})")
    clock.add_argument("--checkpoint-seconds", type=positive_float, metavar="S",
                       help="seconds of trace time between checkpoints (a timed trace, or a workload with --iops)")
    configs = parser.add_argument_group("what to compare")
    configs.add_argument("--mode", default="one-bit,multi-bit,hybrid", metavar="MODES",
                         help="strategies (default: one-bit,multi-bit,hybrid)")
    configs.add_argument("--granularity", type=parse_size_list, default=[64 << 10], metavar="SIZES",
                         help="bytes per tracked chunk (default: 64K)")
    configs.add_argument("--cache", type=parse_size_list, metavar="SIZES",
                         help="page-cache budget per volume (default: 64M, or half of --max-ram if less)")
    configs.add_argument("--width", type=int, choices=(8, 16, 32), default=16, help="multi-bit generation bits (default: 16)")
    configs.add_argument("--recent", type=positive_int, default=8, metavar="N", help="hybrid's one-bit writesets (default: 8)")
    limits = parser.add_argument_group("your limits, for the recommendation")
    limits.add_argument("--max-ram", type=parse_size, metavar="SIZE", help="peak RAM")
    limits.add_argument("--max-query-ms", type=positive_float, metavar="MS", help="cold changed_since of the oldest checkpoint")
    limits.add_argument("--max-checkpoint-ms", type=positive_float, metavar="MS", help="the slowest checkpoint")
    limits.add_argument("--min-writes-per-s", type=positive_float, metavar="RATE", help="mark throughput")
    output = parser.add_argument_group("output")
    add_json_argument(output)
    output.add_argument("--plot", metavar="FILE.png", help="also draw RAM against query latency, and throughput")
    output.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="time each query N times, cold and warm, and report the median (default: 3)")
    output.add_argument("--dir", metavar="DIR", help="where the temporary stores go (default: the system's temp dir)")
    output.add_argument("--no-sync", action="store_true", help="do not fsync at checkpoints (faster, not crash-safe)")
    output.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _compare_recording(args: argparse.Namespace, configs: Any, path: str, progress: bool) -> Any:
    from . import compare
    from .workloads import Workload, schedule_checkpoints

    every = args.checkpoint_every
    if every is None and args.checkpoint_seconds is None:
        every = DEFAULT_CHECKPOINT_EVERY
    if args.trace is None:
        if args.format or args.skip_bad:
            raise ValueError("--format and --skip-bad apply to --trace only")
        workload = Workload(
            args.workload or DEFAULT_WORKLOAD,
            volume_size=args.size or DEFAULT_VOLUME,
            writes=args.writes,
            write_size=args.write_size,
            seed=args.seed,
            checkpoint_every=every,
            checkpoint_seconds=args.checkpoint_seconds,
            iops=args.iops,
        )
        compare.check_volume_size(workload.volume_size, configs)
        return compare.record_workload(workload, path, progress)
    if args.iops or args.write_size:
        raise ValueError("--iops and --write-size apply to workloads, not to --trace")
    from .traces import read_trace

    if args.size is not None:
        compare.check_volume_size(args.size, configs)
    reader = read_trace(args.trace, args.format, skip_bad=args.skip_bad)
    events = schedule_checkpoints(reader, every, args.checkpoint_seconds)
    rec = compare.record(events, path, args.size, f"trace {args.trace} ({reader.format})", progress)
    if reader.skipped:
        warn(f"skipped {reader.skipped:,} malformed lines of {args.trace}")
    return rec


def cache_budgets(args: argparse.Namespace) -> list[int]:
    """--cache, or by default 64M, but at most half of --max-ram: the page
    cache fills up to its budget and counts in the measured RAM."""
    if args.cache is not None:
        return args.cache
    if args.max_ram is not None:
        return [min(DEFAULT_CACHE, args.max_ram // 2)]
    return [DEFAULT_CACHE]


def cmd_compare(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from . import advisor, compare, report

    limits = advisor.Limits(args.max_ram, args.max_query_ms, args.max_checkpoint_ms, args.min_writes_per_s)
    modes = [m.strip() for m in args.mode.split(",")]
    configs = compare.configurations(modes, args.granularity, cache_budgets(args), args.width, args.recent)
    progress = not args.no_progress
    if args.plot:
        from . import plot

        plot.check_target(args.plot)
    workdir = tempfile.mkdtemp(prefix="tiered-compare-", dir=args.dir)
    try:
        rec = _compare_recording(args, configs, os.path.join(workdir, "writes.bin"), progress)
        if not args.json:
            sys.stdout.write(
                f"replaying {rec.description}: {rec.writes:,} writes, {len(rec.marks)} checkpoints, "
                f"volume {format_size(rec.size)}; {len(configs)} configurations, one at a time\n\n"
            )
            sys.stdout.flush()
        results = compare.compare(
            rec, configs, workdir=workdir, sync=not args.no_sync, progress=progress, repeat=args.repeat
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    problems = compare.disagreements(results)
    advice = advisor.recommend(results, limits)
    if args.plot:
        chosen = None if advice.choice is None else advice.choice.label
        plot.draw(results, args.plot, limits, rec.description, chosen)
    if args.json:
        write_json(report.document(rec, results, limits, advice, problems))
    else:
        report.write_table(sys.stdout, results)
        report.write_verdict(sys.stdout, results, advice, problems)
        if args.plot:
            sys.stdout.write(f"\nplot written to {args.plot}\n")
    return EXIT_FAILURE if problems or advice.choice is None else EXIT_OK


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help and its two functions."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# The subcommand registry, in the order `tiered --help` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("volumes", "list the volumes of a store", add_volumes_arguments, cmd_volumes),
    Command(
        "checkpoints",
        "list the checkpoints of a volume, oldest first",
        add_volume_report_arguments,
        cmd_checkpoints,
    ),
    Command("changed", "map the ranges written since a checkpoint", add_changed_arguments, cmd_changed),
    Command("stats", "show the costs and counters of a volume", add_volume_report_arguments, cmd_stats),
    Command(
        "convert",
        "switch a volume to another strategy, keeping every checkpoint (opens the store for writing)",
        add_convert_arguments,
        cmd_convert,
    ),
    Command(
        "compare",
        "replay a workload or trace through each strategy, measure the costs, and recommend one",
        add_compare_arguments,
        cmd_compare,
    ),
)


# -- entry point ---------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description=(
            "Change-block tracking: inspect a tiered store (read-only), convert a volume "
            "to another strategy, or compare the strategies on a workload."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command, turning expected failures into one-line errors."""
    # Imported here, not at module level, to keep this module's import free
    # of the package's modules: several of them pull in the engine.
    from .errors import TieredError

    try:
        code = args.run(args)
        # Flush inside the try: a short output sits in the buffer, and a
        # closed pipe would otherwise surface at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly.  Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except (TieredError, OSError, ValueError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # --help, --version and usage errors: return their code, so that
        # main() always returns rather than exiting under a caller.
        code = exc.code
        return code if isinstance(code, int) else EXIT_OK if code is None else EXIT_USAGE
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
