"""``tiered compare``: replay a workload or trace through each configuration,
measure, and recommend one.

Every argument is checked before the first replay (:func:`check_arguments`);
each configuration's row is printed as soon as it is measured; a stop signal
removes the temporary files, ends the child process, and still prints (or
writes as JSON) the rows that finished."""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
from typing import Any

from ..units import format_size
from .common import (
    EXIT_FAILURE, EXIT_OK, UsageError, add_json_argument, choice_list, parse_size_list, positive_int, positive_ms,
    positive_rate, positive_seconds, positive_size, warn, write_json,
)
from .stopping import Stopped, held, signals_raise_stopped

WORKLOAD_KINDS = ("uniform", "zipf", "sequential", "database")
TRACE_FORMATS = ("fio", "blkparse", "msr")
# The engine's strategy modes, kept here so that `--help` and argument
# errors need no engine import; a test checks they match.
MODES = ("one-bit", "multi-bit", "hybrid")
DURABILITIES = ("lazy", "sync")
DEFAULT_WORKLOAD = "zipf"
DEFAULT_VOLUME = 1 << 40
DEFAULT_WRITES = 10_000_000
DEFAULT_SEED = 1
DEFAULT_CHECKPOINT_EVERY = 100_000
DEFAULT_CACHE = 64 << 20
# More checkpoints than this need --force: a replay that is mostly
# checkpoints measures little else, and takes long.
MAX_CHECKPOINTS = 10_000


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Sizes: K, M, G, T and KiB, MiB... are binary, kB, MB, GB... decimal (64K = 64KiB = 65,536 "
        "bytes; 64kB = 64,000).  Counts and rates: k, M, G are decimal (1M = 1,000,000).  Times: a "
        "bare number is in the option's unit, or say it: 20ms, 1.5s, 2m.  Lists are comma-separated "
        "and swept: every combination of --mode, --granularity and --cache is measured.  Exit status: "
        "0 with a recommendation, 1 if no configuration meets the limits or answers differ, 2 for "
        "bad arguments (nothing is replayed), 128+N when stopped by signal N.  "
        "Example: tiered compare --trace app.iolog --max-ram 32MiB --max-query-ms 20ms"
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
    source.add_argument("--size", type=positive_size, metavar="SIZE",
                        help="volume size (default: 1T for a workload, the last byte written for a trace)")
    source.add_argument("--writes", type=positive_int, metavar="N", help=f"writes of a workload (default: {DEFAULT_WRITES:,}; 100k, 10M)")
    source.add_argument("--write-size", type=positive_size, metavar="SIZE", help="bytes per write of a workload (default: 4K, 8K for database)")
    source.add_argument("--seed", type=int, help=f"workload seed (default: {DEFAULT_SEED})")
    source.add_argument("--iops", type=positive_rate, metavar="RATE", help="give workload writes Poisson arrival times at this rate (writes/s: 50k, 1M)")
    clock = source.add_mutually_exclusive_group()
    clock.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                       help=f"writes between checkpoints (default: {DEFAULT_CHECKPOINT_EVERY:,})")
    clock.add_argument("--checkpoint-seconds", type=positive_seconds, metavar="TIME",
                       help="trace time between checkpoints, in seconds or with a unit (500ms, 1m); a timed trace, "
                            "or a workload with --iops")
    source.add_argument("--force", action="store_true",
                        help=f"run a schedule of more than {MAX_CHECKPOINTS:,} checkpoints (refused otherwise)")
    configs = parser.add_argument_group("what to compare")
    configs.add_argument("--mode", type=choice_list(MODES), default=",".join(MODES), metavar="MODES",
                         help="strategies (default: one-bit,multi-bit,hybrid)")
    configs.add_argument("--granularity", type=parse_size_list, default=[64 << 10], metavar="SIZES",
                         help="bytes per tracked chunk (default: 64K)")
    configs.add_argument("--cache", type=parse_size_list, metavar="SIZES",
                         help="page-cache budget per volume (default: 64M, or half of --max-ram if less)")
    configs.add_argument("--width", type=int, choices=(8, 16, 32), default=16, help="multi-bit generation bits (default: 16)")
    configs.add_argument("--recent", type=positive_int, default=8, metavar="N", help="hybrid's one-bit writesets (default: 8)")
    configs.add_argument("--durability", type=choice_list(DURABILITIES), default=["lazy"], metavar="MODES",
                         help="lazy, sync or lazy,sync (default: lazy). sync replays into a durability=\"sync\" "
                              "volume and syncs each batch whose marks return a token; the table then shows the "
                              "share of writes that needed a sync, syncs/s, and the replay time against lazy")
    limits = parser.add_argument_group("your limits, for the recommendation")
    limits.add_argument("--max-ram", type=positive_size, metavar="SIZE", help="peak RAM (32MiB, 1G)")
    limits.add_argument("--max-query-ms", type=positive_ms, metavar="TIME",
                        help="cold changed_since of the oldest checkpoint, in ms or with a unit (20ms, 1s)")
    limits.add_argument("--max-checkpoint-ms", type=positive_ms, metavar="TIME", help="the slowest checkpoint (ms, or 20ms, 1s)")
    limits.add_argument("--min-writes-per-s", type=positive_rate, metavar="RATE", help="mark throughput (2M, 500k)")
    limits.add_argument("--require-exact-after-crash", action="store_true",
                        help="recommend only a sync-mode configuration (needs --durability sync or lazy,sync)")
    output = parser.add_argument_group("output")
    add_json_argument(output)
    output.add_argument("--plot", metavar="FILE.png",
                        help="also draw each configuration's RAM, query and checkpoint latency and throughput "
                             "(.png, .svg, .pdf: any type matplotlib writes)")
    output.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="time each query N times, cold and warm, and report the median (default: 3)")
    output.add_argument("--batch", type=positive_int, metavar="N",
                        help="writes per mark_many call, and per sync in sync mode (default: 65,536; 64, a writer's "
                             "queue depth, when --durability has sync, for every configuration of the run)")
    output.add_argument("--dir", metavar="DIR", help="where the temporary stores go (default: the system's temp dir)")
    output.add_argument("--no-sync", action="store_true", help="do not fsync at checkpoints (faster, not crash-safe)")
    output.add_argument("--no-progress", action="store_true",
                        help="no progress on stderr (a bar on a terminal, a status line every few seconds otherwise)")


def check_arguments(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """Everything that can be refused before recording and replaying:
    (limits, configurations), or :class:`UsageError`."""
    from ..errors import InvalidArgumentError
    from ..replay import advisor, compare

    if args.trace is not None:
        given = [flag for flag, value in (("--writes", args.writes), ("--seed", args.seed), ("--iops", args.iops),
                                          ("--write-size", args.write_size)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} describe a workload and do not apply to --trace")
    else:
        given = [flag for flag, value in (("--format", args.format), ("--skip-bad", args.skip_bad)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --trace only")
        if args.checkpoint_seconds is not None and args.iops is None:
            raise UsageError("--checkpoint-seconds on a workload needs --iops, the write rate that gives writes times")
    if args.require_exact_after_crash and "sync" not in args.durability:
        raise UsageError("--require-exact-after-crash recommends only sync-mode configurations: "
                         "add --durability sync (or lazy,sync)")
    try:
        limits = advisor.Limits(args.max_ram, args.max_query_ms, args.max_checkpoint_ms, args.min_writes_per_s,
                                args.require_exact_after_crash)
        configs = compare.configurations(args.mode, args.granularity, cache_budgets(args), args.width, args.recent,
                                         args.durability)
        if args.trace is None:
            compare.check_volume_size(_volume(args), configs)
        elif args.size is not None:
            compare.check_volume_size(args.size, configs)
        if args.plot:
            from ..replay import plot

            plot.check_target(args.plot)
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None
    if args.trace is None and not args.force:
        _check_workload_schedule(args)
    return limits, configs


def _volume(args: argparse.Namespace) -> int:
    return DEFAULT_VOLUME if args.size is None else args.size


def _checkpoint_every(args: argparse.Namespace) -> int | None:
    if args.checkpoint_every is None and args.checkpoint_seconds is None:
        return DEFAULT_CHECKPOINT_EVERY
    return args.checkpoint_every


def _check_workload_schedule(args: argparse.Namespace) -> None:
    """A workload's checkpoint count is known beforehand: refuse an absurd one
    before generating a single write (a trace's is checked once it is read)."""
    writes = args.writes or DEFAULT_WRITES
    every = _checkpoint_every(args)
    if every is not None:
        count, how = 1 + (writes - 1) // every, f"one every {every:,} writes"
    else:
        count = 1 + math.floor(writes / args.iops / args.checkpoint_seconds)
        how = f"one every {args.checkpoint_seconds:g} s of {writes / args.iops:g} s of writes at {args.iops:g}/s"
    if count > MAX_CHECKPOINTS:
        raise UsageError(_too_many_checkpoints(count, how))


def _too_many_checkpoints(count: int, how: str) -> str:
    return (
        f"the checkpoint schedule makes {count:,} checkpoints ({how}), more than {MAX_CHECKPOINTS:,}: "
        "checkpoint less often, or add --force to run it anyway"
    )


def _trace_lines(path: str) -> int | None:
    """About how many lines a plain-text trace has, from its size and its
    first MiB; None if it does not look like plain text."""
    try:
        # Only a regular file can be sampled: reading a pipe here would take
        # lines away from the trace reader.
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            sample = f.read(1 << 20)
    except OSError:
        return None
    head = sample[: sample.rfind(b"\n", 0, 4096) + 1] or sample[:4096]
    try:
        if not sample or "\0" in head.decode("utf-8"):
            return None
    except UnicodeDecodeError:  # compressed, or not a trace at all
        return None
    lines = sample.count(b"\n") or 1
    return max(1, round(size * lines / len(sample)))


def _compare_recording(args: argparse.Namespace, configs: Any, path: str, progress: Any) -> Any:
    from ..replay import compare
    from ..replay.workloads import Workload, schedule_checkpoints

    every = _checkpoint_every(args)
    limit = None if args.force else MAX_CHECKPOINTS
    if args.trace is None:
        workload = Workload(
            args.workload or DEFAULT_WORKLOAD,
            volume_size=_volume(args),
            writes=args.writes or DEFAULT_WRITES,
            write_size=args.write_size,
            seed=DEFAULT_SEED if args.seed is None else args.seed,
            checkpoint_every=every,
            checkpoint_seconds=args.checkpoint_seconds,
            iops=args.iops,
        )
        progress.stage("generating the workload", workload.writes, "writes")
        return compare.record_workload(workload, path, progress.set, limit)
    from ..replay.traces import read_trace

    reader = read_trace(args.trace, args.format, skip_bad=args.skip_bad)
    events = schedule_checkpoints(_writes_required(reader), every, args.checkpoint_seconds)
    progress.stage(f"reading {os.path.basename(reader.name)}", _trace_lines(args.trace), "lines")
    try:
        rec = compare.record(
            events, path, args.size, f"trace {reader.name} ({reader.format})", lambda _: progress.set(reader.lines),
            limit,
        )
    except compare.CheckpointScheduleError as exc:
        how = (f"one every {every:,} writes" if every is not None
               else f"one every {args.checkpoint_seconds:g} s of trace time")
        raise UsageError(_too_many_checkpoints(exc.count, how)) from None
    if reader.skipped:
        warn(f"skipped {reader.skipped:,} malformed lines of {reader.name}")
    return rec


def _writes_required(reader: Any) -> Any:
    """The reader's batches; a trace without a single write says so in one line."""
    yield from reader
    if not reader.writes:
        from ..errors import TraceFormatError

        raise TraceFormatError(
            f"{reader.name}: no writes to replay in {reader.lines:,} lines "
            f"({reader.ignored:,} reads, syncs and other I/Os that write nothing)"
        )


def cache_budgets(args: argparse.Namespace) -> list[int]:
    """--cache, or by default 64M, but at most half of --max-ram: the page
    cache fills up to its budget and counts in the measured RAM."""
    if args.cache is not None:
        return args.cache
    if args.max_ram is not None:
        return [min(DEFAULT_CACHE, args.max_ram // 2)]
    return [DEFAULT_CACHE]


class _Run:
    """What a comparison has produced so far (all of it, if it finished)."""

    def __init__(self, configs: list[Any]) -> None:
        self.configs = configs
        self.rec: Any = None
        self.results: list[Any] = []
        self.stopped: Stopped | None = None


def cmd_compare(args: argparse.Namespace) -> int:
    from ..replay.progress import Progress

    limits, configs = check_arguments(args)
    run = _Run(configs)
    progress = Progress(not args.no_progress)
    with signals_raise_stopped():
        try:
            _measure_all(args, run, progress)
        except Stopped as exc:
            run.stopped = exc
        try:
            if run.stopped is not None:
                return _report_stopped(args, run, limits)
            return _report(args, run, limits)
        except Stopped as exc:  # stopped while printing the verdict
            return 128 + exc.signum


def _measure_all(args: argparse.Namespace, run: _Run, progress: Any) -> None:
    import shutil
    import tempfile

    from ..replay import report, runner

    workdir = children = None
    try:
        with held():  # made and remembered at once: a signal cannot come between
            workdir = tempfile.mkdtemp(prefix="tiered-compare-", dir=args.dir)
            # The children start, and load or compile their kernels, while
            # the writes are recorded.
            children = runner.Children(run.configs, workdir)
        run.rec = rec = _compare_recording(args, run.configs, os.path.join(workdir, "writes.bin"), progress)
        progress.close()  # the recording's bar goes before the header comes
        widths = report.column_widths([c.label for c in run.configs],
                                      report.durability_columns([c.durability for c in run.configs]))
        if not args.json:
            progress.print(
                f"replaying {rec.description}: {rec.writes:,} writes, {len(rec.marks)} checkpoints, "
                f"volume {format_size(rec.size)}; {len(run.configs)} configurations, one at a time\n\n"
                + report.header_line(widths),
                sys.stdout,
            )
        results = runner.run_each(rec, run.configs, workdir=workdir, sync=not args.no_sync, repeat=args.repeat,
                                  progress=progress, children=children, batch=args.batch)
        for m in results:
            run.results.append(m)
            if args.json:
                progress.note(f"measured {len(run.results)}/{len(run.configs)}: {m.label}")
            else:
                progress.print(report.row_line(m, widths), sys.stdout)
    finally:
        with held():  # the cleanup runs to its end, whatever arrives
            progress.close()
            if children is not None:
                children.close()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)


def _report(args: argparse.Namespace, run: _Run, limits: Any) -> int:
    from ..replay import advisor, compare, report

    results = run.results
    problems = compare.disagreements(results)
    advice = advisor.recommend(results, limits)
    if args.plot:
        from ..replay import plot

        chosen = None if advice.choice is None else advice.choice.label
        plot.draw(results, args.plot, limits, run.rec.description, chosen)
    if args.json:
        write_json(report.document(run.rec, results, limits, advice, problems))
    else:
        report.write_verdict(sys.stdout, results, advice, problems)
        if args.plot:
            sys.stdout.write(f"\nplot written to {args.plot}\n")
    return EXIT_FAILURE if problems or advice.choice is None else EXIT_OK


def _report_stopped(args: argparse.Namespace, run: _Run, limits: Any) -> int:
    """The rows that finished are already printed; say what happened."""
    from ..replay import report

    assert run.stopped is not None
    done, total = len(run.results), len(run.configs)
    try:
        if args.json:
            write_json(report.stopped_document(run.rec, run.results, limits, run.stopped.name, total))
        sys.stdout.flush()
    except OSError:  # the terminal is gone (SIGHUP): nothing to print to
        pass
    try:
        sys.stderr.write(
            f"tiered: {run.stopped}: {done} of {total} configurations measured, no recommendation; "
            "temporary files removed\n"
        )
    except OSError:
        pass
    return 128 + run.stopped.signum
