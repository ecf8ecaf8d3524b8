"""``tiered compare``: replay a workload or trace through each configuration,
measure, and recommend one."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..units import format_size
from .common import (
    EXIT_FAILURE, EXIT_OK, add_json_argument, parse_size, parse_size_list, positive_float, positive_int, warn,
    write_json,
)

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
    from ..replay import compare
    from ..replay.workloads import Workload, schedule_checkpoints

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
    from ..replay.traces import read_trace

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

    from ..replay import advisor, compare, report
    from ..replay.children import Children

    limits = advisor.Limits(args.max_ram, args.max_query_ms, args.max_checkpoint_ms, args.min_writes_per_s)
    modes = [m.strip() for m in args.mode.split(",")]
    configs = compare.configurations(modes, args.granularity, cache_budgets(args), args.width, args.recent)
    progress = not args.no_progress
    if args.plot:
        from ..replay import plot

        plot.check_target(args.plot)
    workdir = tempfile.mkdtemp(prefix="tiered-compare-", dir=args.dir)
    # The children start, and load or compile their kernels, while the writes are recorded.
    children = Children(configs, workdir)
    try:
        rec = _compare_recording(args, configs, os.path.join(workdir, "writes.bin"), progress)
        if not args.json:
            sys.stdout.write(
                f"replaying {rec.description}: {rec.writes:,} writes, {len(rec.marks)} checkpoints, "
                f"volume {format_size(rec.size)}; {len(configs)} configurations, one at a time\n\n"
            )
            sys.stdout.flush()
        results = compare.compare(
            rec, configs, workdir=workdir, sync=not args.no_sync, progress=progress, repeat=args.repeat,
            children=children,
        )
    finally:
        children.close()
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


