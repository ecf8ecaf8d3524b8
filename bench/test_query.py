"""changed_since() and opening over histories of 1, 10 and 100 checkpoints,
and the union of K sealed writesets against pyroaring, bitarray and numpy.

The histories come from the session fixture ``histories`` (conftest.py):
for each mode and length, a store (sync=False, in a pytest tmp dir) whose
1 TiB / 64 KiB volume has checkpoints c000 .. c{N-1}, with 1% of the chunks
(167,772 distinct random chunks, one 4 KiB write each,
``dirty_sets(0.01, i)``) marked after checkpoint i; the store is then
closed.  Every mode gets the same history (same seeds).

Cold queries: each round opens the store afresh (``tiered.open`` after
close, so the decoded-page cache is empty) in the untimed setup and times
one ``vol.changed_since(name)``; the store is closed in the untimed
teardown.  "Cold" is tiered's cold: the LMDB file stays in the OS page
cache (nothing here drops it).  The checkpoints asked about:

* the oldest (c000) of 1, 10 and 100 checkpoints, which shows how a query
  grows with the history behind it: the union of 1, 10 or 100 periods
  (1%, ~9.6% and ~63% of the chunks);
* with 100 checkpoints also the middle (c050, ~39%) and the newest (c099,
  1%).

The answer for the oldest and middle of 100 checkpoints is ~4M extents,
two uint64 arrays of ~31 MB each; whether the allocator hands the query
fresh pages (page faults, ~16K per query) or reuses freed ones moves the
time by ~20 ms on the machine measured, so extra_info keeps the minor page
faults of every timed round.

Warm queries repeat the question on one open volume with the default cache
(64 MiB).  One-bit's 100 writesets decode to ~207 MiB, more than that
budget, so its "warm" query over 100 checkpoints decodes nearly every page again
(extra_info: pages decoded per warm query).  Opening itself (store plus
volume: the catalog of pages for one-bit and hybrid, the whole generation
array for multi-bit) is measured separately, for every history length.

The union groups time what a one-bit query does at its core, merging K
sealed writesets (K = 10, 100: periods 0 .. K-1 of the histories above,
16,777,216 chunks), against peers given the same sets:

* tiered: ``changed_since`` of the oldest of K checkpoints on a one-bit
  volume opened with a cache large enough to hold every decoded page
  (warm: nothing is decoded in the timed rounds; the answer is extracted
  as extents); and the bare ``SegmentTable.or_spans`` loop over K tables
  into a fresh table (tiered.bitmaps.table, internal);
* pyroaring: ``BitMap.union(*maps)``, and ``acc |= m`` over the K maps;
* bitarray: a copy of the first, then ``acc |= b`` over the others (16M
  bits each);
* numpy: ``np.bitwise_or.reduce`` over a (K, 262144) uint64 array.

Each result is checked to hold exactly the union's chunks.  The peers
stop at a bitmap; tiered's query also turns it into extents.

``test_query_summary`` prints the query medians against the target
(< 50 ms cold for hybrid and multi-bit) and their growth with the history
length; ``test_union_summary`` the union medians and their ratios.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

import numpy as np
import pyroaring
import pytest
from benchutil import (
    GRANULARITY,
    HISTORY_FRACTION,
    HISTORY_LENGTHS,
    MODES,
    N_CHUNKS,
    SHIFT,
    VOLUME_SIZE,
    check,
    ckpt_name,
    enforce_targets,
    fmt_time,
    numpy_set_chunks_ufunc_at,
    positions,
    print_report,
)
from bitarray import bitarray

import tiered
from tiered.bitmaps.table import SegmentTable

LONGEST = max(HISTORY_LENGTHS)
# (history length, which checkpoint): the oldest of every length, and the
# three positions of the longest history.
QUERY_CASES = [(n, "oldest") for n in HISTORY_LENGTHS] + [(LONGEST, "middle"), (LONGEST, "newest")]
QUERY_PARAMS = [
    pytest.param(mode, n, which, id=f"{mode}-{n}-{which}") for n, which in QUERY_CASES for mode in MODES
]
OPEN_PARAMS = [pytest.param(mode, n, id=f"{mode}-{n}") for n in HISTORY_LENGTHS for mode in MODES]
COLD_ROUNDS = 7
# hybrid folds every 9 checkpoints of this history: lengths 100 .. 108 put
# the cold query at each point of one fold cycle.
FOLD_PHASES = range(LONGEST, LONGEST + 9)

UNION_KS = (10, 100)
UNION_CONTENDERS = (
    "tiered-one-bit-changed_since",
    "tiered-SegmentTable.or_spans",
    "pyroaring-BitMap.union",
    "pyroaring-ior-loop",
    "bitarray-ior-loop",
    "numpy-bitwise_or.reduce",
)
UNION_CACHE_BYTES = 1 << 30  # every decoded page of 100 writesets (~207 MiB) fits


def history_label(n: int) -> str:
    return f"{n} checkpoint{'s' if n != 1 else ''} x 1% dirty"


def open_volume(path: str, strategy: tiered.Strategy | None = None):
    store = tiered.open(path, sync=False)
    return store, store.volume("vol", strategy)


# -- changed_since ----------------------------------------------------------


def query_target(histories, mode: str, length: int, which: str) -> tuple:
    """The history, and the index and name of the checkpoint to query."""
    history = histories(mode, length)
    index = positions(length)[which]
    return history, index, ckpt_name(index)


@pytest.mark.parametrize("mode,length,which", QUERY_PARAMS)
def test_changed_since_cold(benchmark, record, histories, mode, length, which):
    benchmark.group = f"changed_since: cold (fresh open), {history_label(length)}, {which}"
    history, index, name = query_target(histories, mode, length, which)
    live: list = []  # (store, volume) opened by setup, closed by teardown
    results: list = []
    misses: list = []
    faults: list = []

    def setup():
        store, vol = open_volume(history.path)
        live.append((store, vol))
        return (vol, name), {}

    def query(vol, ckpt):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ext = vol.changed_since(ckpt)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        results.append(ext)
        return ext

    def teardown(vol, ckpt):
        store, _ = live.pop()
        misses.append(vol.stats()["cache_misses"])  # pages decoded by the query
        ext = results[-1]
        results[-1] = (len(ext), ext.total_bytes)  # free the answer before the next round
        store.close()

    try:
        benchmark.pedantic(query, setup=setup, teardown=teardown, rounds=COLD_ROUNDS, warmup_rounds=1)
        if live:  # --benchmark-disable runs setup and query once, never teardown
            teardown(live[-1][1], name)
    finally:
        while live:
            live.pop()[0].close()
    extents, total = results[-1]
    assert total == history.expected_chunks[index] * GRANULARITY
    record(
        benchmark,
        f"cold/{mode}/{length}/{which}",
        mode=mode,
        length=length,
        which=which,
        checkpoint=name,
        extents=extents,
        changed_fraction=round(total / VOLUME_SIZE, 4),
        pages_read=misses[-1],
        # Page faults taken during each timed query: the answer's arrays
        # (16 bytes per extent) are fresh memory unless the allocator reuses
        # what the previous round freed, which shows as bimodal timings.
        minor_faults_per_round=faults[1:],
        round_ms=[round(t * 1e3, 2) for t in benchmark.stats.stats.data] if benchmark.stats else None,
        build_seconds=round(history.build_seconds, 2),
    )


def fold_state(path: str) -> dict:
    """Where a hybrid history's fold stands (read from its volume)."""
    store, vol = open_volume(path)
    with store:
        h = vol._history
        return {"writesets": len(h.writesets(0)), "folded_through": h.folded_through, "fold_upto": h.fold_upto,
                "fold_state": f"{h.fold_next}/{len(h.io.pages(b'G', 0))} pages" if h.fold_upto else "none"}


@pytest.mark.parametrize("length", FOLD_PHASES)
def test_changed_since_cold_through_a_fold(benchmark, record, histories, length):
    """The oldest checkpoint, cold, at each checkpoint of one fold cycle:
    the writesets being folded stay until the fold's last page is written,
    so the number a query reads depends on where the fold stands."""
    benchmark.group = "changed_since: cold, hybrid, oldest of N (one fold cycle)"
    history = histories("hybrid", length)
    live: list = []  # (store, volume) opened by setup, closed by teardown
    misses: list = []
    result: list = []

    def setup():
        live.append(open_volume(history.path))
        return (live[-1][1], ckpt_name(0)), {}

    def teardown(vol, ckpt):
        misses.append(vol.stats()["cache_misses"])
        live.pop()[0].close()

    def query(vol, ckpt):
        result[:] = [vol.changed_since(ckpt).total_bytes]

    try:
        benchmark.pedantic(query, setup=setup, teardown=teardown, rounds=COLD_ROUNDS, warmup_rounds=1)
    finally:
        while live:
            live.pop()[0].close()
    assert result[0] == history.expected_chunks[0] * GRANULARITY
    record(benchmark, f"cold-fold/{length:04d}", mode="hybrid", length=length, pages_read=misses[-1] if misses else None,
           round_ms=[round(t * 1e3, 2) for t in benchmark.stats.stats.data] if benchmark.stats else None,
           **fold_state(history.path))


@pytest.mark.parametrize("mode,length,which", QUERY_PARAMS)
def test_changed_since_warm(benchmark, record, histories, mode, length, which):
    benchmark.group = f"changed_since: warm (same open volume), {history_label(length)}, {which}"
    history, index, name = query_target(histories, mode, length, which)
    store, vol = open_volume(history.path)
    try:
        vol.changed_since(name)  # fill the page cache
        ext = benchmark(vol.changed_since, name)
        assert ext.total_bytes == history.expected_chunks[index] * GRANULARITY
        before = vol.stats()["cache_misses"]
        vol.changed_since(name)
        stats = vol.stats()
        record(benchmark, f"warm/{mode}/{length}/{which}", mode=mode, length=length, which=which,
               extents=len(ext), cache_bytes=stats["cache_bytes"],
               pages_decoded_per_query=stats["cache_misses"] - before)
    finally:
        store.close()


@pytest.mark.parametrize("mode,length", OPEN_PARAMS)
def test_open(benchmark, record, histories, mode, length):
    benchmark.group = f"open: tiered.open + store.volume, {history_label(length)}"
    history = histories(mode, length)
    opened: list = []

    def run():
        store, vol = open_volume(history.path)
        opened.append(store)
        return vol

    def teardown(*_):
        opened.pop().close()

    try:
        benchmark.pedantic(run, teardown=teardown, rounds=COLD_ROUNDS, warmup_rounds=1)
    finally:
        while opened:  # --benchmark-disable never runs the teardown
            opened.pop().close()
    store, vol = open_volume(history.path)
    try:
        stats = vol.stats()
    finally:
        store.close()
    record(benchmark, f"open/{mode}/{length}", mode=mode, length=length,
           ram_bytes=stats["ram_bytes"], disk_bytes=stats["disk_bytes"], checkpoints=stats["checkpoints"])


def query_rows(medians: dict[str, dict]) -> list[str]:
    """The longest history: every position, cold and warm, and opening."""
    header = (f"  {'mode':10s} {'which':7s} {'cold':>10s} {'no-fault':>10s} {'warm':>10s} {'extents':>9s} "
              f"{'changed':>8s} pages read")
    lines = [header]
    for mode in MODES:
        for which in positions(LONGEST):
            cold = medians.get(f"cold/{mode}/{LONGEST}/{which}")
            warm = medians.get(f"warm/{mode}/{LONGEST}/{which}")
            if not cold:
                continue
            quiet = [t for t, f in zip(cold["data"], cold["minor_faults_per_round"]) if f < 1000]
            no_fault = fmt_time(float(np.median(quiet))) if quiet else "-"
            lines.append(
                f"  {mode:10s} {which:7s} {fmt_time(cold['median']):>10s} {no_fault:>10s} "
                f"{fmt_time(warm['median']) if warm else '-':>10s} {cold['extents']:>9d} "
                f"{cold['changed_fraction'] * 100:7.1f}% {cold['pages_read']}"
            )
        op = medians.get(f"open/{mode}/{LONGEST}")
        if op:
            lines.append(f"  {mode:10s} open    {fmt_time(op['median']):>10s}  (store + volume; "
                         f"RAM {op['ram_bytes'] / 2**20:.1f} MiB, LMDB {op['disk_bytes'] / 2**20:.1f} MiB)")
    lines.append("  (no-fault: median of the cold rounds that took < 1000 minor page faults)")
    return lines


def growth_rows(medians: dict[str, dict]) -> list[str]:
    """The oldest checkpoint of 1, 10 and 100: cold, warm and open, and
    each one's ratio to the shortest history."""
    header = (f"  {'mode':10s} {'length':>6s} {'cold':>10s} {'warm':>10s} {'open':>10s} {'changed':>8s} "
              f"{'extents':>9s}  x length {HISTORY_LENGTHS[0]} (cold / warm / open)")
    lines = [header]
    for mode in MODES:
        keys = {n: (f"cold/{mode}/{n}/oldest", f"warm/{mode}/{n}/oldest", f"open/{mode}/{n}")
                for n in HISTORY_LENGTHS}
        base = [medians.get(k) for k in keys[HISTORY_LENGTHS[0]]]
        for n in HISTORY_LENGTHS:
            row = [medians.get(k) for k in keys[n]]
            if not row[0]:
                continue
            times = " ".join(f"{fmt_time(m['median']) if m else '-':>10s}" for m in row)
            ratios = " / ".join(
                f"{m['median'] / b['median']:.1f}" if m and b else "-" for m, b in zip(row, base)
            )
            lines.append(f"  {mode:10s} {n:>6d} {times} {row[0]['changed_fraction'] * 100:7.1f}% "
                         f"{row[0]['extents']:>9d}  {ratios}")
    return lines


@pytest.mark.bench_summary
def test_query_summary(medians, capsys):
    if not any(k.split("/")[0] in ("cold", "warm", "open") for k in medians):
        pytest.skip("no query benchmark measured in this run")
    lines = [f"{LONGEST} checkpoints:"] + query_rows(medians)
    lines += ["growth with the history length (changed since the oldest checkpoint):"] + growth_rows(medians)
    phases = [medians[k] for k in sorted(medians) if k.startswith("cold-fold/")]
    if phases:
        lines.append("hybrid, oldest checkpoint, through one fold cycle (history of N checkpoints):")
        lines.append(f"  {'N':>4s} {'writesets':>9s} {'fold':>16s} {'median':>10s} {'worst':>10s} pages read")
        for m in phases:
            lines.append(f"  {m['length']:>4d} {m['writesets']:>9d} {m['fold_state']:>16s} "
                         f"{fmt_time(m['median']):>10s} {fmt_time(m['max']):>10s} {m['pages_read']}")
    verdicts = []
    for mode in ("hybrid", "multi-bit"):
        for which in positions(LONGEST):
            cold = medians.get(f"cold/{mode}/{LONGEST}/{which}")
            if cold:
                # Every round, not only the median: rounds with page faults
                # are the slow ones.
                verdicts.append((f"{mode} {which}: every cold round < 50 ms (worst {fmt_time(cold['max'])}, "
                                 f"median {fmt_time(cold['median'])})", cold["max"] < 50e-3))
    if phases:
        worst = max(phases, key=lambda m: m["max"])
        verdicts.append((f"hybrid oldest, every cold round of every fold phase < 50 ms (worst "
                         f"{fmt_time(worst['max'])} with {worst['length']} checkpoints)", worst["max"] < 50e-3))
    lines.append("targets:")
    lines += check(verdicts)
    print_report(capsys, "changed_since() vs the issue's targets", lines)
    if enforce_targets():
        assert all(ok for _, ok in verdicts), [what for what, ok in verdicts if not ok]


# -- union of K sealed writesets ---------------------------------------------


def period_chunks(dirty_sets, k: int) -> list[np.ndarray]:
    """Chunk indices written in periods 0 .. k-1 of the stored histories."""
    return [dirty_sets(HISTORY_FRACTION, i) >> SHIFT for i in range(k)]


def packed_bitmap(chunks: np.ndarray) -> np.ndarray:
    """The chunks as a flat little-endian uint64 bitmap of the volume."""
    flat = np.zeros(N_CHUNKS // 64, np.uint64)
    numpy_set_chunks_ufunc_at(flat, chunks)
    return flat


def bitmap_table(chunks: np.ndarray) -> SegmentTable:
    """The chunks as tiered holds a writeset (granularity 1 byte, so byte
    offsets are chunk numbers)."""
    table = SegmentTable(N_CHUNKS)
    table.mark_many(chunks, np.ones(len(chunks), np.int64), 0, 1)
    return table


Union = tuple[Callable[[], object], Callable[[object], int]]  # (timed run, chunks in its result)


def union_or_spans(sets: list[np.ndarray]) -> Union:
    spans = [bitmap_table(c).spans() for c in sets]  # each keeps its table's rows alive

    def run() -> SegmentTable:
        acc = SegmentTable(N_CHUNKS)
        for s in spans:
            acc.or_spans(s)
        return acc

    return run, lambda acc: acc.spans().count_bits()


def union_roaring(sets: list[np.ndarray], in_place: bool) -> Union:
    maps = [pyroaring.BitMap(c.astype(np.uint32)) for c in sets]

    def union() -> pyroaring.BitMap:
        return pyroaring.BitMap.union(*maps)

    def ior_loop() -> pyroaring.BitMap:
        acc = pyroaring.BitMap()
        for m in maps:
            acc |= m
        return acc

    return (ior_loop if in_place else union), len


def union_bitarray(sets: list[np.ndarray]) -> Union:
    bits = []
    for c in sets:
        b = bitarray(endian="little")
        b.frombytes(packed_bitmap(c).tobytes())
        bits.append(b)

    def run() -> bitarray:
        acc = bits[0].copy()
        for b in bits[1:]:
            acc |= b
        return acc

    return run, lambda acc: acc.count()


def union_numpy(sets: list[np.ndarray]) -> Union:
    stack = np.stack([packed_bitmap(c) for c in sets])  # (K, words): the peer's natural layout

    def run() -> np.ndarray:
        return np.bitwise_or.reduce(stack, axis=0)

    return run, lambda flat: int(np.bitwise_count(flat).sum())


def union_peer(contender: str, sets: list[np.ndarray]) -> Union:
    return {
        "tiered-SegmentTable.or_spans": lambda: union_or_spans(sets),
        "pyroaring-BitMap.union": lambda: union_roaring(sets, in_place=False),
        "pyroaring-ior-loop": lambda: union_roaring(sets, in_place=True),
        "bitarray-ior-loop": lambda: union_bitarray(sets),
        "numpy-bitwise_or.reduce": lambda: union_numpy(sets),
    }[contender]()


def time_tiered_union(benchmark, history) -> dict:
    """changed_since of the oldest checkpoint, every page already decoded."""
    store, vol = open_volume(history.path, tiered.Strategy("one-bit", cache_bytes=UNION_CACHE_BYTES))
    try:
        vol.changed_since(ckpt_name(0))  # decode every page into the cache
        before = vol.stats()["cache_misses"]
        ext = benchmark(vol.changed_since, ckpt_name(0))
        stats = vol.stats()
        assert stats["cache_misses"] == before, "warm union decoded pages: the cache is too small"
        return {"chunks": ext.total_bytes // GRANULARITY, "extents": len(ext), "cache_bytes": stats["cache_bytes"]}
    finally:
        store.close()


@pytest.mark.parametrize("contender", UNION_CONTENDERS)
@pytest.mark.parametrize("k", UNION_KS)
def test_union(benchmark, record, histories, dirty_sets, k, contender):
    benchmark.group = f"union of K sealed writesets, 1% random each, 16M chunks: K={k}"
    history = histories("one-bit", k)
    expected = history.expected_chunks[0]
    if contender == "tiered-one-bit-changed_since":
        info = time_tiered_union(benchmark, history)
    else:
        run, count = union_peer(contender, period_chunks(dirty_sets, k))
        info = {"chunks": count(benchmark(run))}
    assert info["chunks"] == expected
    record(benchmark, f"union/{k}/{contender}", k=k, contender=contender, **info)


@pytest.mark.bench_summary
def test_union_summary(medians, capsys):
    if not any(key.startswith("union/") for key in medians):
        pytest.skip("no union benchmark measured in this run")
    lines = [f"  {'contender':30s} " + " ".join(f"{f'K={k}':>10s} {'x best':>7s}" for k in UNION_KS)]
    best = {k: min((m["median"] for key, m in medians.items() if key.startswith(f"union/{k}/")), default=None)
            for k in UNION_KS}
    for contender in UNION_CONTENDERS:
        cells = []
        for k in UNION_KS:
            m = medians.get(f"union/{k}/{contender}")
            cells.append(f"{fmt_time(m['median']):>10s} {m['median'] / best[k]:>6.1f}x" if m else f"{'-':>10s} {'-':>7s}")
        lines.append(f"  {contender:30s} " + " ".join(cells))
    for k in UNION_KS:
        ours = medians.get(f"union/{k}/tiered-SegmentTable.or_spans")
        peers = {c: medians.get(f"union/{k}/{c}") for c in UNION_CONTENDERS if not c.startswith("tiered-")}
        peers = {c: m for c, m in peers.items() if m}
        if ours and peers:
            name, fastest = min(peers.items(), key=lambda item: item[1]["median"])
            lines.append(f"  K={k}: tiered or_spans / fastest peer ({name}) = "
                         f"{ours['median'] / fastest['median']:.2f} (> 1: tiered slower)")
    lines.append("  (x best: median / the fastest median for that K; the peers stop at a bitmap,")
    lines.append("   tiered's changed_since also extracts the extents)")
    print_report(capsys, "union of K sealed writesets (1% random each) vs peers", lines)
