"""Replay one workload through several configurations and measure each.

A configuration is a strategy (mode, width or recent, cache budget) and a
granularity.  The writes are first recorded once to a file, so every
configuration replays exactly the same input and none pays for generating
or parsing it.  Each configuration then runs alone in a fresh child process
with its own temporary store: RAM and CPU are the process's own, measured
by the kernel, not estimated, and one configuration's leftovers cannot
inflate the next one's numbers.  Configurations are measured one after
another so they never compete for the CPU; the children start, and warm up,
side by side before the first measurement (:mod:`tiered.replay.runner`).

What is measured, per configuration (all in :class:`Measurement`):

* mark throughput: writes per second of wall time spent in ``mark_many``,
  fed batches of up to 64 Ki writes;
* checkpoint latency: median and worst of every ``checkpoint()``;
* ``changed_since`` of the newest and of the oldest checkpoint, warm (in the
  writer, right after the replay) and cold (after reopening the store, with
  an empty cache), and the cost of that reopen;
* RAM: the growth of the process's anonymous resident memory over its
  baseline after a warm-up, at its peak (sampled every 2 ms and after every
  call) and in the steady state after the replay; ``stats()["ram_bytes"]``
  alongside, and the peak of the whole resident set (which also counts the
  store's pages mapped in by reads);
* disk: the volume's bytes in the store and the size of the store's file;
* CPU seconds of the child, and its wall time.

Durability is a dimension of the configurations too.  A ``"sync"``
configuration replays the same batches into a volume created with
``durability="sync"``: each batch is marked with ``mark_many``, and when the
batch returns a token the replay calls ``sync(token)`` before the next
batch, so one sync serves the whole batch (at most one per batch, as a
writer that issues a batch of I/Os and waits for its marks before writing
them; a run that compares durabilities replays batches of SYNC_BATCH
writes, every configuration alike).  It reports, beside everything above: the
writes that needed a sync (those that dirtied a chunk not yet marked in the
period, counted by the volume), the syncs made and the seconds spent in
them, the replay's wall time, and the cost of one small LMDB commit (one
tiny put, fsynced when the store is) in the same directory, taken now and
then during the replay (:class:`CommitProbe`).  The parent
relates each sync configuration's replay time to the lazy configuration
of the same strategy and granularity measured in the same run.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .batches import WriteBatch
from ..config import Strategy
from ..errors import InvalidArgumentError, OutOfRangeError, TieredError
from .progress import Progress
from .memory import PeakSampler, anon_rss, reset_rss_high_water_mark, rss_high_water_mark, rss_now
from ..units import format_size
from .workloads import CheckpointMark, Event, Workload, generate

# Writes handed to one mark_many call during a replay.
REPLAY_BATCH = 65536
# The default of a run that compares durabilities: a writer's I/O queue
# depth, so that a sync serves the writes issued together, not a whole
# period (every configuration of the run, lazy too, replays these batches).
SYNC_BATCH = 64


DURABILITIES = ("lazy", "sync")


@dataclasses.dataclass(frozen=True)
class Config:
    """One thing to measure: a strategy at a granularity, with a durability."""

    strategy: Strategy
    granularity: int
    durability: str = "lazy"

    @property
    def label(self) -> str:
        s = self.strategy
        extra = {"multi-bit": f" w{s.width}", "hybrid": f" r{s.recent}"}.get(s.mode, "")
        # lazy is the default: its labels are those of a run without durabilities
        tail = "" if self.durability == "lazy" else f" {self.durability}"
        return f"{s.mode}{extra} {format_size(self.granularity)} cache {format_size(s.cache_bytes)}{tail}"


@dataclasses.dataclass(frozen=True)
class Recording:
    """Writes recorded to a file, with the points where checkpoints go.

    ``path`` holds int64 (offset, length) pairs; checkpoint ``k`` is taken
    before write ``marks[k]``.
    """

    path: str
    writes: int
    marks: tuple[int, ...]
    size: int
    #: One past the last byte any write touches.
    extent: int
    description: str


class CheckpointScheduleError(InvalidArgumentError):
    """The schedule would make more checkpoints than a comparison can take."""

    def __init__(self, count: int, limit: int, description: str) -> None:
        self.count, self.limit = count, limit
        super().__init__(
            f"{description}: the checkpoint schedule makes {count:,} checkpoints, more than {limit:,}; "
            "the replay would measure little but checkpoints"
        )


def record(
    events: Iterable[Event],
    path: str,
    size: int | None,
    description: str,
    progress: bool | Callable[[int], None] = False,
    max_checkpoints: int | None = None,
) -> Recording:
    """Write ``events`` to ``path`` once; ``size`` None: the writes' extent.

    ``progress`` True shows a bar of the writes recorded on stderr; a
    callable is called with the writes recorded so far after each batch.
    More than ``max_checkpoints`` marks raises
    :class:`CheckpointScheduleError` once all are counted (the writes past
    that point are counted, not recorded).
    """
    report: Callable[[int], None] | None
    bar = None
    if progress is True:
        bar = Progress()
        bar.stage("recording", None, "writes")
        report = bar.set
    else:
        report = progress or None
    marks: list[int] = []
    count = writes = extent = 0
    try:
        with open(path, "wb") as f:
            for event in events:
                if isinstance(event, CheckpointMark):
                    count += 1
                    if max_checkpoints is None or count <= max_checkpoints:
                        marks.append(writes)
                    continue
                if not len(event):
                    continue
                if int(event.offsets.min()) < 0 or int(event.lengths.min()) < 0:
                    raise InvalidArgumentError(f"{description}: a write has a negative offset or length")
                extent = max(extent, int((event.offsets + event.lengths).max()))
                if size is not None and extent > size:
                    raise OutOfRangeError(f"{description}: writes reach byte {extent}, past the volume size {size}")
                if count <= len(marks):
                    np.stack((event.offsets, event.lengths), axis=1).tofile(f)
                writes += len(event)
                if report is not None:
                    report(writes)
    finally:
        if bar is not None:
            bar.close()
    if max_checkpoints is not None and count > max_checkpoints:
        raise CheckpointScheduleError(count, max_checkpoints, description)
    if not writes:
        raise InvalidArgumentError(f"{description}: no writes to replay")
    if size is None:
        size = extent
    return Recording(path, writes, tuple(marks), size, extent, description)


def record_workload(
    workload: Workload, path: str, progress: bool | Callable[[int], None] = False, max_checkpoints: int | None = None
) -> Recording:
    w = workload
    sizes = ", ".join(format_size(int(s)) for s in w.size_choices()[0])
    text = f"the {w.kind} workload ({sizes} writes, seed {w.seed})"
    return record(generate(w), path, w.volume_size, text, progress, max_checkpoints)


def read_recording(rec: Recording) -> Iterator[Event]:
    """The recorded events, in batches of at most REPLAY_BATCH writes."""
    marks = list(rec.marks)
    k = done = 0
    with open(rec.path, "rb") as f:
        while done < rec.writes or k < len(marks):
            while k < len(marks) and marks[k] == done:
                yield CheckpointMark(k)
                k += 1
            stop = min(rec.writes, done + REPLAY_BATCH, marks[k] if k < len(marks) else rec.writes)
            if stop == done:
                break
            pairs = np.fromfile(f, np.int64, 2 * (stop - done)).reshape(-1, 2)
            yield WriteBatch(np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]))
            done = stop


# -- one configuration, in a child process -----------------------------------


@dataclasses.dataclass
class Measurement:
    label: str
    mode: str
    width: int | None
    recent: int | None
    granularity: int
    cache_bytes: int
    error: str | None = None
    writes: int = 0
    checkpoints: int = 0
    writes_per_s: float = 0.0
    checkpoint_p50_ms: float = 0.0
    checkpoint_max_ms: float = 0.0
    query_newest_ms: float = 0.0
    query_oldest_ms: float = 0.0
    query_newest_warm_ms: float = 0.0
    query_oldest_warm_ms: float = 0.0
    reopen_ms: float = 0.0
    ram_peak_bytes: int = 0
    #: The peak during the replay alone: the write path, before any query.
    ram_replay_peak_bytes: int = 0
    ram_steady_bytes: int = 0
    ram_engine_bytes: int = 0
    rss_peak_bytes: int = 0
    disk_bytes: int = 0
    store_file_bytes: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    changed_bytes: int = 0
    extents: int = 0
    digest: str = ""
    durability: str = "lazy"
    #: Writes per mark_many call (and so per sync) in the replay.
    batch: int = 0
    #: Wall seconds of the whole replay: marks, syncs and checkpoints.
    replay_s: float = 0.0
    #: sync mode: writes that dirtied a chunk new in its period, and their share.
    sync_writes: int = 0
    sync_fraction: float = 0.0
    #: sync mode: sync() calls made (at most one per batch), the LMDB commits
    #: they took, the seconds spent in them, and syncs per second of that time.
    syncs: int = 0
    sync_commits: int = 0
    sync_s: float = 0.0
    syncs_per_s: float = 0.0
    #: sync mode: the median commit of one tiny put on this disk, taken
    #: during the replay (after the first sync and every 32nd).
    commit_ms: float = 0.0
    #: sync mode: replay_s over that of the lazy configuration of the same
    #: strategy and granularity in the same run (None: not measured).
    replay_vs_lazy: float | None = None

    @property
    def key(self) -> tuple:
        """What identifies the configuration but its durability."""
        return (self.mode, self.width, self.recent, self.granularity, self.cache_bytes)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _empty_measurement(config: Config) -> Measurement:
    s = config.strategy
    return Measurement(
        label=config.label,
        mode=s.mode,
        width=s.width if s.mode == "multi-bit" else None,
        recent=s.recent if s.mode == "hybrid" else None,
        granularity=config.granularity,
        cache_bytes=s.cache_bytes,
        durability=config.durability,
    )


# (configuration, root) pairs this process has warmed up for.
_warmed: set[tuple[Config, str]] = set()


def warm_up(config: Config, root: str) -> None:
    """Compile or load every kernel the measured run will use, outside it,
    once per process (the child may have warmed up before the replay)."""
    if (config, root) not in _warmed:
        _warm_up(config, root)
        _warmed.add((config, root))


def _warm_up(config: Config, root: str) -> None:
    """Compile or load every kernel the measured run will use, outside it."""
    from .. import store as store_module

    # Enough checkpoints for hybrid to finish a fold and start the next one,
    # which reads back the generation array the first one wrote.
    s = config.strategy
    checkpoints = min(64, 4 * s.recent + 4) if s.mode == "hybrid" else 20
    w = Workload("uniform", volume_size=1 << 30, writes=500 * checkpoints, checkpoint_every=500, seed=1)
    path = os.path.join(root, "warm")
    with store_module.open(path, sync=False) as store:
        vol = store.create_volume("warm", size=w.volume_size, granularity=config.granularity,
                                  strategy=config.strategy, durability=config.durability)
        for event in generate(w):
            if isinstance(event, CheckpointMark):
                vol.checkpoint(f"c{event.index}")
            else:
                token = vol.mark_many(event.offsets, event.lengths)
                if token is not None:
                    vol.sync(token)
        vol.changed_since("c0")
        vol.changed_between("c0", "c1")
    with store_module.open(path, readonly=True) as store:
        store.volume("warm").changed_since("c0")
    shutil.rmtree(path)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _digest(extents: Any) -> str:
    h = hashlib.sha256()
    h.update(extents.offsets.tobytes())
    h.update(extents.lengths.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    sync: bool = True
    #: Times each query is measured; the median is reported.
    repeat: int = 3
    #: Writes per mark_many call (and per sync, in sync mode).
    batch: int = REPLAY_BATCH


def measure(
    config: Config, rec: Recording, root: str, options: RunOptions, report: Callable[[int], None] | None = None
) -> Measurement:
    """Replay ``rec`` into a fresh store under ``root``: run in a child process.
    ``report`` is called with the writes replayed so far after each batch."""
    result = _empty_measurement(config)
    try:
        warm_up(config, root)
        gc.collect()
        base = anon_rss()
        rss_base = rss_now() if reset_rss_high_water_mark() else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        path = os.path.join(root, "store")
        with PeakSampler() as sampler:
            names = _write_phase(config, rec, path, options, sampler, base, result, report)
            gc.collect()  # the writer's cache must not outlive it into the cold phase
            _cold_phase(config, path, names, options.repeat, sampler, result)
        result.cpu_s = time.process_time() - cpu0
        result.wall_s = time.perf_counter() - wall0
        result.ram_peak_bytes = sampler.peak - base
        if rss_base is not None:
            result.rss_peak_bytes = rss_high_water_mark() - rss_base
        result.store_file_bytes = os.path.getsize(os.path.join(path, "data.mdb"))
    except TieredError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _write_phase(
    config: Config, rec: Recording, path: str, options: RunOptions, sampler: PeakSampler, base: int,
    result: Measurement, report: Callable[[int], None] | None,
) -> list[str]:
    """Replay, then query in the writer (warm); returns the checkpoint names."""
    from .. import store as store_module

    probe = CommitProbe(path + "-commit-probe", options.sync) if config.durability == "sync" else None
    with store_module.open(path, sync=options.sync) as store:
        vol = store.create_volume("replay", size=rec.size, granularity=config.granularity, strategy=config.strategy,
                                  durability=config.durability)
        result.batch = options.batch
        replay0 = time.perf_counter()
        try:
            mark_s, ckpt_s, syncs, sync_s = _replay(vol, rec, sampler, report, options.batch, probe)
        finally:
            if probe is not None:
                probe.close()
        # The probe's commits are not the replay's.
        result.replay_s = time.perf_counter() - replay0 - (probe.total_s if probe is not None else 0.0)
        if probe is not None:
            result.commit_ms = probe.median_ms()
        result.ram_replay_peak_bytes = sampler.peak - base
        result.writes = rec.writes
        result.checkpoints = len(ckpt_s)
        # A sync-mode write waits for its sync too: both count.
        result.writes_per_s = rec.writes / (mark_s + sync_s) if mark_s + sync_s else 0.0
        if config.durability == "sync":
            stats = vol.stats()
            result.sync_writes = stats["sync_writes"]
            result.sync_fraction = result.sync_writes / rec.writes if rec.writes else 0.0
            result.syncs, result.sync_commits, result.sync_s = syncs, stats["sync_commits"], sync_s
            result.syncs_per_s = syncs / sync_s if sync_s else 0.0
        result.checkpoint_p50_ms = float(np.median(ckpt_s)) * 1e3
        result.checkpoint_max_ms = float(np.max(ckpt_s)) * 1e3
        gc.collect()
        result.ram_steady_bytes = sampler.sample() - base
        result.ram_engine_bytes = vol.stats()["ram_bytes"]
        names = [c.name for c in vol.checkpoints()]
        newest, oldest = [], []
        for _ in range(options.repeat):
            newest.append(_timed(vol.changed_since, names[-1])[1])
            oldest.append(_timed(vol.changed_since, names[0])[1])
            sampler.sample()
        result.query_newest_warm_ms = _median_ms(newest)
        result.query_oldest_warm_ms = _median_ms(oldest)
    return names


def _cold_phase(
    config: Config, path: str, names: list[str], repeat: int, sampler: PeakSampler, result: Measurement
) -> None:
    """Reopen with nothing cached and query, ``repeat`` times; record the answers' digest."""
    from .. import store as store_module

    reopen, newest_s, oldest_s = [], [], []
    for _ in range(repeat):
        store, open_s = _timed(store_module.open, path, False)
        with store:
            # The cache budget is not stored: pass the configured one again.
            vol, open_vol_s = _timed(store.volume, "replay", config.strategy)
            reopen.append(open_s + open_vol_s)
            newest, seconds = _timed(vol.changed_since, names[-1])
            newest_s.append(seconds)
            oldest, seconds = _timed(vol.changed_since, names[0])
            oldest_s.append(seconds)
            sampler.sample()
            result.disk_bytes = vol.stats()["disk_bytes"]
            result.digest = f"{_digest(newest)}:{_digest(oldest)}"
            result.changed_bytes = oldest.total_bytes
            result.extents = len(oldest)
            del vol, newest, oldest
        gc.collect()  # each round starts cold
    result.reopen_ms = _median_ms(reopen)
    result.query_newest_ms = _median_ms(newest_s)
    result.query_oldest_ms = _median_ms(oldest_s)


def _median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds)) * 1e3


def _replay(
    vol: Any, rec: Recording, sampler: PeakSampler, report: Callable[[int], None] | None, batch: int = REPLAY_BATCH,
    probe: "CommitProbe | None" = None,
) -> tuple[float, list[float], int, float]:
    """Feed the recording to the volume, ``batch`` writes per mark_many:
    (seconds in mark_many, seconds per checkpoint, sync() calls, seconds in
    them).  A batch whose marks return a token is synced before the next
    one (sync mode); after the first sync and every PROBE_EVERY-th, the
    ``probe`` commits once."""
    mark_s = sync_s = 0.0
    syncs = 0
    ckpt_s: list[float] = []
    done = 0
    for event in read_recording(rec):
        if isinstance(event, CheckpointMark):
            _, seconds = _timed(vol.checkpoint, f"c{event.index}")
            ckpt_s.append(seconds)
        else:
            for lo in range(0, len(event), batch):
                offsets, lengths = event.offsets[lo : lo + batch], event.lengths[lo : lo + batch]
                token, seconds = _timed(vol.mark_many, offsets, lengths)
                mark_s += seconds
                if token is not None:
                    _, seconds = _timed(vol.sync, token)
                    sync_s += seconds
                    syncs += 1
                    if probe is not None and syncs % PROBE_EVERY == 1:
                        probe.commit()
            done += len(event)
            if report is not None:
                report(done)
        sampler.sample()
    return mark_s, ckpt_s, syncs, sync_s


# A sync replay times one small commit after this many syncs (and after the first).
PROBE_EVERY = 32


class CommitProbe:
    """Commits of one tiny put in an LMDB environment of their own, beside
    the store (same disk, same flags): what one sync costs at the least.
    (A transaction with no change is no yardstick: LMDB writes nothing for
    it.)  Taken during the replay, since fsync times drift on a shared disk;
    ``total_s`` is what they took, which the replay time leaves out."""

    def __init__(self, path: str, sync: bool) -> None:
        import lmdb

        self.path = path
        self.env = lmdb.open(path, map_size=1 << 20, sync=sync, metasync=sync)
        self.times: list[float] = []
        self.total_s = 0.0
        self.commit()  # the file's first pages: not counted
        self.times.clear()
        self.total_s = 0.0

    def commit(self) -> None:
        t = time.perf_counter()
        with self.env.begin(write=True) as txn:
            txn.put(b"k", len(self.times).to_bytes(8, "little"))
        seconds = time.perf_counter() - t
        self.times.append(seconds)
        self.total_s += seconds

    def median_ms(self) -> float:
        return _median_ms(self.times) if self.times else 0.0

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.path, ignore_errors=True)


def relate_to_lazy(result: Measurement, earlier: Sequence[Measurement]) -> None:
    """Set a sync configuration's replay time relative to the lazy one of
    the same strategy and granularity among ``earlier`` results, if any."""
    if result.durability == "lazy" or not result.ok:
        return
    for m in earlier:
        if m.ok and m.durability == "lazy" and m.key == result.key and m.replay_s > 0:
            result.replay_vs_lazy = result.replay_s / m.replay_s
            return


# -- the comparison ------------------------------------------------------------


def configurations(
    modes: Sequence[str],
    granularities: Sequence[int],
    cache_budgets: Sequence[int],
    width: int = 16,
    recent: int = 8,
    durabilities: Sequence[str] = ("lazy",),
) -> list[Config]:
    """Every combination, in the order given (mode varies slowest), but
    durability varies fastest and lazy comes first, so that each sync
    configuration follows the lazy one it is related to; checked here, so
    that a bad one fails before any replay."""
    from ..checks import check_granularity

    for granularity in granularities:
        check_granularity(granularity)
    for durability in durabilities:
        if durability not in DURABILITIES:
            raise InvalidArgumentError(f"durability must be one of {', '.join(DURABILITIES)}, got {durability!r}")
    order = [d for d in DURABILITIES if d in durabilities]
    out = []
    for mode in modes:
        for granularity in granularities:
            for cache in cache_budgets:
                strategy = Strategy(mode, width=width, recent=recent, cache_bytes=cache)
                out.extend(Config(strategy, granularity, durability) for durability in order)
    return out


def check_volume_size(size: int, configs: Sequence[Config]) -> None:
    """Fail before any replay if a store would refuse the volume."""
    from ..checks import check_geometry

    for config in configs:
        check_geometry(size, config.granularity)


def compare(
    rec: Recording,
    configs: Sequence[Config],
    *,
    workdir: str | None = None,
    sync: bool = True,
    progress: bool = True,
    repeat: int = 3,
    children: Any = None,
    batch: int | None = None,
) -> list[Measurement]:
    """Measure every configuration on the recording, one child process each;
    each query is timed ``repeat`` times and the median reported.
    ``children``: a :class:`~tiered.replay.runner.Children` of these
    configurations, started earlier (default: started here).  See
    :func:`tiered.replay.runner.run_each` to have each result as it comes."""
    from .runner import run_each

    with Progress(progress) as bar:
        return list(run_each(rec, configs, workdir=workdir, sync=sync, repeat=repeat, progress=bar, children=children,
                             batch=batch))


def default_batch(configs: Sequence[Config]) -> int:
    """Writes per mark_many call: SYNC_BATCH when a configuration is not
    lazy, else REPLAY_BATCH."""
    return SYNC_BATCH if any(c.durability != "lazy" for c in configs) else REPLAY_BATCH


def disagreements(results: Sequence[Measurement]) -> list[str]:
    """Configurations of one granularity whose answers differ: a bug if any."""
    problems = []
    by_granularity: dict[int, list[Measurement]] = {}
    for m in results:
        if m.ok:
            by_granularity.setdefault(m.granularity, []).append(m)
    for group in by_granularity.values():
        first = group[0]
        for other in group[1:]:
            if other.digest != first.digest:
                problems.append(f"{other.label} answered differently from {first.label}")
    return problems
