"""Durability: what ``durability="sync"`` costs against ``"lazy"``, side by side.

Every store here is opened with ``sync=True`` (fsync at every commit), on the
pytest temporary directory's disk.  Four measurements, one per goal:

1. *hot marks*: a 1 TiB / 64 KiB volume whose hot set (1,024 random
   chunks) is already marked, and in sync mode already durable, in the
   current period; timed: a loop of 1,024 single ``mark()`` calls, and a
   loop of 16 ``mark_many()`` calls of 64 writes, lazy and sync in the same
   run.  Goal: sync at least 0.8x lazy's speed.
2. *sync latency*: ``sync(token)`` after ``mark_many`` dirtied 1, 10, 100
   or 1,000 new chunks (untimed), beside two commits on an LMDB
   environment with the store's flags in the same directory: a write
   transaction with no change (LMDB writes nothing for it, not even the
   meta page, so it measures no disk work) and one tiny put.  The goal's
   "empty commit" is the tiny put: the least commit that reaches the disk.
   fsync times on a shared disk drift, so each sync round's untimed setup
   also commits one tiny put, and the goal compares the medians of those
   same moments.  Goal: every sync of up to 1,000 chunks at most 2x that
   commit.
3. *group commit*: 1, 4 and 16 threads each mark a new chunk and sync its
   token, 40 times per round; syncs per second of wall time, and syncs per
   LMDB commit (``sync_waits / sync_commits`` of ``stats()``).  Goal: at
   least 8 syncs per commit with 16 threads.
4. *replay*: the uniform, zipf, sequential and database workloads and the
   MSR Cambridge excerpt of tests/data, replayed in batches of 64 writes
   (a writer's queue depth) in both modes, sync mode calling ``sync(token)``
   after each batch that returns one; the share of writes that needed a
   sync, the syncs made, and with 1, 4 and 16 writer threads (each takes
   every n-th batch) the syncs per second.  Goal: a sync replay at most
   2x (the lazy replay + one tiny-put commit per sync made).

``test_durability_summary`` (last) prints every ratio and asserts the four
goals (ratios of medians measured in the same run, never absolute times).
"""

from __future__ import annotations

import os
import threading
import time

import lmdb
import numpy as np
import pytest
from benchutil import GRANULARITY, SHIFT, VOLUME_SIZE, WRITE_SIZE, check, fmt_time, print_report

import tiered
from tiered.replay.traces import read_trace
from tiered.replay.workloads import CheckpointMark, Workload, generate, schedule_checkpoints

DURABILITIES = ("lazy", "sync")
MODES = ("one-bit", "multi-bit")
HOT = 1024
MANY = 64
NEW_CHUNKS = (1, 10, 100, 1000)
SYNC_ROUNDS = 15
THREADS = (1, 4, 16)
PER_THREAD = 40
REPLAY_BATCH = 64
WORKLOADS = ("uniform", "zipf", "sequential", "database", "msr_hm_1")
TRACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "msr_hm_1.csv")
REPLAY_WRITES = 20_000
REPLAY_EVERY = 5_000


def sync_volume(open_store, mode: str, durability: str, name: str = "store") -> tiered.Volume:
    store = open_store(f"{name}-{mode}-{durability}", sync=True)
    vol = store.create_volume("vol", VOLUME_SIZE, GRANULARITY, strategy=tiered.Strategy(mode), durability=durability)
    vol.checkpoint("base")
    return vol


# -- 1. hot marks -------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("call", ("mark", "mark_many-64"))
@pytest.mark.parametrize("durability", DURABILITIES)
def test_hot_marks(benchmark, record, open_store, mode, call, durability):
    benchmark.group = f"durability: {call} of a durable hot set of {HOT} chunks, {mode} (per round)"
    vol = sync_volume(open_store, mode, durability)
    rng = np.random.default_rng(11)
    offsets = rng.choice(VOLUME_SIZE >> SHIFT, HOT, replace=False).astype(np.int64) << SHIFT
    lengths = np.full(HOT, WRITE_SIZE, np.int64)
    vol.mark_many(offsets, lengths)
    vol.sync()  # sync: every chunk of the hot set durable; lazy: a flush
    vol.mark(int(offsets[0]), WRITE_SIZE)  # lazy: the first mark's "RAM ahead of disk" commit
    if call == "mark":
        pairs = offsets.tolist()
        mark = vol.mark

        def run() -> None:
            for off in pairs:
                mark(off, WRITE_SIZE)

        per_round = HOT
    else:
        batches = [(offsets[i : i + MANY].copy(), lengths[i : i + MANY].copy()) for i in range(0, HOT, MANY)]
        mark_many = vol.mark_many

        def run() -> None:
            for o, l in batches:
                if mark_many(o, l) is not None:
                    raise AssertionError("a hot chunk needed a sync")

        per_round = len(batches)
    run()
    commits = vol.stats()["sync_commits"]
    benchmark(run)
    assert vol.stats()["sync_commits"] == commits  # no hot mark needed a commit
    record(benchmark, f"hot/{mode}/{call}/{durability}", calls=per_round)


# -- 2. sync latency against an empty commit ------------------------------------


@pytest.mark.parametrize("kind", ("empty-txn", "tiny-put"))
def test_empty_commit(benchmark, record, tmp_path, kind):
    benchmark.group = "durability: sync(token) of N new chunks, and commits on the same disk"
    env = lmdb.open(str(tmp_path / "commit-probe"), map_size=1 << 24, sync=True, metasync=True)
    counter = [0]

    def empty() -> None:
        with env.begin(write=True):
            pass

    def put() -> None:
        counter[0] += 1
        with env.begin(write=True) as txn:
            txn.put(b"k", counter[0].to_bytes(8, "little"))

    fn = empty if kind == "empty-txn" else put
    fn()
    if kind == "empty-txn":
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=SYNC_ROUNDS * 2, warmup_rounds=1)
    env.close()
    record(benchmark, f"commit/{kind}")


def tiny_put(env: lmdb.Environment, i: int) -> float:
    """Seconds of one commit of one tiny put."""
    t = time.perf_counter()
    with env.begin(write=True) as txn:
        txn.put(b"k", i.to_bytes(8, "little"))
    return time.perf_counter() - t


@pytest.mark.parametrize("new", NEW_CHUNKS)
def test_sync_latency(benchmark, record, open_store, tmp_path, new):
    benchmark.group = "durability: sync(token) of N new chunks, and commits on the same disk"
    vol = sync_volume(open_store, "one-bit", "sync")
    rng = np.random.default_rng(new)
    sets = iter(
        np.split(rng.choice(VOLUME_SIZE >> SHIFT, new * (SYNC_ROUNDS + 2), replace=False).astype(np.int64) << SHIFT,
                 SYNC_ROUNDS + 2)
    )
    lengths = np.full(new, WRITE_SIZE, np.int64)
    token = [None]
    calls = [0]
    # A tiny-put commit before each sync, untimed by pytest-benchmark: the
    # disk's state (and the machine's load) of the same moments.
    env = lmdb.open(str(tmp_path / "commit-probe"), map_size=1 << 24, sync=True, metasync=True)
    puts: list[float] = []

    def setup() -> None:
        puts.append(tiny_put(env, calls[0]))
        token[0] = vol.mark_many(next(sets), lengths)
        calls[0] += 1
        assert token[0] is not None

    benchmark.pedantic(lambda: vol.sync(token[0]), setup=setup, rounds=SYNC_ROUNDS, warmup_rounds=1)
    assert vol.stats()["sync_writes"] == new * calls[0]
    env.close()
    record(benchmark, f"sync/{new}", new_chunks=new, tiny_put_s=float(np.median(puts[1:] or puts)))


# -- 3. group commit ---------------------------------------------------------------


def marking_threads(vol: tiered.Volume, threads: int, per_thread: int, first_chunk: int) -> None:
    """``threads`` threads, each marking a new chunk and syncing its token
    ``per_thread`` times; started together."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for k in range(per_thread):
                token = vol.mark((first_chunk + k * threads + t) << SHIFT, WRITE_SIZE)
                if token is not None:
                    vol.sync(token)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("threads", THREADS)
def test_group_commit(benchmark, record, open_store, threads):
    benchmark.group = f"durability: {PER_THREAD} x (mark a new chunk, sync) per thread (per round)"
    vol = sync_volume(open_store, "one-bit", "sync")
    state = {"chunk": 0}

    def run() -> None:
        marking_threads(vol, threads, PER_THREAD, state["chunk"])
        state["chunk"] += threads * PER_THREAD

    before = vol.stats()
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    after = vol.stats()
    commits = after["sync_commits"] - before["sync_commits"]
    waits = after["sync_waits"] - before["sync_waits"]
    syncs = threads * PER_THREAD
    median = benchmark.stats.stats.median if benchmark.stats else None
    record(benchmark, f"group/{threads}", threads=threads, syncs_per_round=syncs,
           syncs_per_s=None if not median else round(syncs / median, 1),
           commits=commits, waits=waits, waits_per_commit=round(waits / commits, 2) if commits else None)


# -- 4. replays -------------------------------------------------------------------------


def replay_events(kind: str) -> tuple[list, int]:
    """(events, volume size) of a workload, or of the MSR excerpt."""
    if kind == "msr_hm_1":
        reader = read_trace(TRACE)
        events = list(schedule_checkpoints(iter(reader), REPLAY_EVERY, None))
        extent = max(int((e.offsets + e.lengths).max()) for e in events if not isinstance(e, CheckpointMark))
        return events, -(-extent // GRANULARITY) * GRANULARITY
    w = Workload(kind, volume_size=1 << 36, writes=REPLAY_WRITES, checkpoint_every=REPLAY_EVERY, seed=5)
    return list(generate(w)), w.volume_size


def split(events: list) -> list:
    """Checkpoint marks and batches of at most REPLAY_BATCH writes."""
    out = []
    for e in events:
        if isinstance(e, CheckpointMark):
            out.append(e)
        else:
            for lo in range(0, len(e), REPLAY_BATCH):
                out.append((np.ascontiguousarray(e.offsets[lo : lo + REPLAY_BATCH]),
                            np.ascontiguousarray(e.lengths[lo : lo + REPLAY_BATCH])))
    return out


def replay(vol: tiered.Volume, events: list, threads: int) -> int:
    """Replay; between checkpoints ``threads`` threads take every n-th batch,
    marking and syncing what needs it.  Returns the syncs made."""
    syncs = [0] * threads

    def work(t: int, batches: list) -> None:
        for o, l in batches[t::threads]:
            token = vol.mark_many(o, l)
            if token is not None:
                vol.sync(token)
                syncs[t] += 1

    period: list = []
    n = 0
    for e in events + [None]:
        if isinstance(e, tuple):
            period.append(e)
            continue
        if period:
            if threads == 1:
                work(0, period)
            else:
                pool = [threading.Thread(target=work, args=(t, period)) for t in range(threads)]
                for th in pool:
                    th.start()
                for th in pool:
                    th.join()
            period = []
        if e is not None:
            vol.checkpoint(f"c{n}")
            n += 1
    return sum(syncs)


@pytest.fixture(scope="module")
def replays() -> dict:
    made: dict = {}

    def get(kind: str):
        if kind not in made:
            events, size = replay_events(kind)
            made[kind] = (split(events), size)
        return made[kind]

    return get


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("durability", DURABILITIES)
@pytest.mark.parametrize("workload", WORKLOADS)
def test_replay(benchmark, record, open_store, replays, workload, durability, threads):
    if durability == "lazy" and threads != 1:
        pytest.skip("lazy mode never waits: one writer is its baseline")
    benchmark.group = f"durability: replay of {workload} in batches of {REPLAY_BATCH} (per round)"
    events, size = replays(workload)
    writes = sum(len(e[0]) for e in events if isinstance(e, tuple))
    stores = []
    state: dict = {}

    def setup() -> None:
        store = open_store(f"replay-{workload}-{durability}-{threads}-{len(stores)}", sync=True)
        stores.append(store)
        state["vol"] = store.create_volume("vol", size, GRANULARITY, strategy="one-bit", durability=durability)

    def run() -> None:
        state["syncs"] = replay(state["vol"], events, threads)

    benchmark.pedantic(run, setup=setup, rounds=3, warmup_rounds=0)
    stats = state["vol"].stats()
    median = benchmark.stats.stats.median if benchmark.stats else None
    record(benchmark, f"replay/{workload}/{durability}/{threads}", writes=writes, syncs=state["syncs"],
           sync_writes=stats["sync_writes"], sync_fraction=stats["sync_writes"] / writes,
           commits=stats["sync_commits"],
           syncs_per_s=None if not median else round(state["syncs"] / median, 1))
    for store in stores:
        store.close()
    stores.clear()


# -- the goals, from this run's medians -----------------------------------------------


@pytest.mark.bench_summary
def test_durability_summary(medians, capsys):
    if not any(k.startswith("hot/") for k in medians):
        pytest.skip("durability benchmarks not measured in this run")
    lines: list[str] = []
    verdicts: list[tuple[str, bool]] = []
    lines.append("1. hot marks, durable in the period: per call, and sync's speed relative to lazy")
    for mode in MODES:
        for call in ("mark", "mark_many-64"):
            lazy, sync = medians.get(f"hot/{mode}/{call}/lazy"), medians.get(f"hot/{mode}/{call}/sync")
            if not (lazy and sync):
                continue
            speed = lazy["median"] / sync["median"]
            lines.append(f"  {mode:9s} {call:13s} lazy {fmt_time(lazy['median'] / lazy['calls']):>9s}  "
                         f"sync {fmt_time(sync['median'] / sync['calls']):>9s}  sync at {speed:.2f}x lazy's speed")
            verdicts.append((f"{mode} {call}: sync >= 0.8x lazy (is {speed:.2f}x)", speed >= 0.8))
    put = medians.get("commit/tiny-put")
    empty = medians.get("commit/empty-txn")
    if put:
        lines.append("2. sync(token) of N new chunks against a commit of one tiny put (fsync)")
        if empty:
            lines.append(f"  write txn with no change: {fmt_time(empty['median'])} (LMDB writes nothing)")
        lines.append(f"  tiny put: {fmt_time(put['median'])} (its own benchmark)")
        for n in NEW_CHUNKS:
            s = medians.get(f"sync/{n}")
            if s:
                # against the tiny puts committed between the same rounds
                r = s["median"] / s["tiny_put_s"]
                lines.append(f"  {n:5d} chunks: {fmt_time(s['median']):>9s}  {r:.2f}x the tiny put "
                             f"({fmt_time(s['tiny_put_s'])}) committed before each round")
                verdicts.append((f"sync of {n} new chunks <= 2x a tiny-put commit (is {r:.2f}x)", r <= 2))
    if any(k.startswith("group/") for k in medians):
        lines.append("3. group commit: N threads marking a new chunk and syncing it")
        for t in THREADS:
            g = medians.get(f"group/{t}")
            if g:
                lines.append(f"  {t:2d} threads: {g['syncs_per_s']:8.0f} syncs/s, {g['waits_per_commit']:.2f} syncs per commit")
        g = medians.get("group/16")
        if g:
            verdicts.append((f"16 threads: >= 8 syncs per commit (is {g['waits_per_commit']:.2f})",
                             g["waits_per_commit"] >= 8))
    if any(k.startswith("replay/") for k in medians):
        lines.append(f"4. replays in batches of {REPLAY_BATCH}: lazy, sync with 1/4/16 writers")
        for w in WORKLOADS:
            lazy = medians.get(f"replay/{w}/lazy/1")
            sync = medians.get(f"replay/{w}/sync/1")
            if not (lazy and sync):
                continue
            rates = " / ".join(
                f"{medians[f'replay/{w}/sync/{t}']['syncs_per_s']:.0f}" for t in THREADS if f"replay/{w}/sync/{t}" in medians
            )
            bound = 2 * (lazy["median"] + sync["syncs"] * put["median"]) if put else None
            lines.append(
                f"  {w:10s} writes needing a sync {sync['sync_fraction'] * 100:5.2f}%, {sync['syncs']:5d} syncs, "
                f"lazy {fmt_time(lazy['median'])}, sync {fmt_time(sync['median'])} "
                f"({sync['median'] / lazy['median']:.1f}x lazy), syncs/s with 1/4/16 writers {rates}"
                + (f", goal bound {fmt_time(bound)}" if bound else "")
            )
            if bound:
                verdicts.append((f"{w}: sync replay <= 2x (lazy + syncs x tiny put) "
                                 f"(is {sync['median'] / (bound / 2):.2f}x)", sync["median"] <= bound))
    lines.append("goals:")
    lines += check(verdicts)
    print_report(capsys, "durability: lazy vs sync", lines)
    assert all(ok for _, ok in verdicts), [what for what, ok in verdicts if not ok]
