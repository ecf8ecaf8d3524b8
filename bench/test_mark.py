"""Write path: tiered's mark_many and mark against a numba floor and peers.

1,000,000 random 4 KiB writes (fixed seed) on a 1 TiB volume at 64 KiB
granularity (16,777,216 chunks), for each mode, side by side with:

* the floor: a plain numba loop setting bits in a flat uint64 bitmap of 16M
  bits (and, for reference, the same loop fed byte ranges like mark_many);
* numpy: ``np.bitwise_or.at`` in place on the uint64 bitmap, and the fastest
  correct numpy way found, a byte map plus ``packbits``;
* pyroaring: ``BitMap.update`` with an ``array('I')`` of chunk indices, as
  given (random order) and sorted first (sort timed);
* bitarray: ``ba[list_of_indices] = 1``.

Two states: *steady* repeats the batch on a structure that already holds it
(tiered's segments exist, the period is dirty); *fresh* starts every round
from an empty structure (tiered: right after a checkpoint, so rows are
re-materialised; the checkpoint and the first mark's small LMDB transaction
are in the untimed setup).

``test_write_summary`` (last) turns the medians into the ratios of the
issue's targets and prints them; TIERED_BENCH_ENFORCE=1 makes it assert them.
"""

from __future__ import annotations

from array import array

import numpy as np
import pyroaring
import pytest
from benchutil import (
    GRANULARITY,
    MODES,
    N_CHUNKS,
    SHIFT,
    WRITE_SIZE,
    check,
    enforce_targets,
    floor_set_byte_ranges,
    floor_set_chunks,
    floor_set_one,
    fmt_time,
    numpy_set_chunks_bytemap,
    numpy_set_chunks_ufunc_at,
    print_report,
)
from bitarray import bitarray

PEERS = (
    "numba-floor",
    "numba-floor-byte-ranges",
    "numpy-bitwise_or.at",
    "numpy-bytemap+packbits",
    "pyroaring-update",
    "pyroaring-sort+update",
    "bitarray-index-list",
)
CONTENDERS = tuple(f"tiered-{m}" for m in MODES) + PEERS
NUMPY = ("numpy-bitwise_or.at", "numpy-bytemap+packbits")
ROARING = ("pyroaring-update", "pyroaring-sort+update")

FRESH_ROUNDS = 20
LOOP_CALLS = 100_000


def popcount(words: np.ndarray) -> int:
    return int(np.bitwise_count(words).sum())


class Contender:
    """One way of marking the batch: ``run()`` does the timed work,
    ``reset()`` empties the structure (fresh rounds), ``count()`` says how
    many chunks it holds (checked after timing)."""

    def __init__(self, name: str, batch, tracked_volume) -> None:
        self.name = name
        b = batch
        if name.startswith("tiered-"):
            vol = tracked_volume(name[len("tiered-") :])
            self.periods = 0

            def reset() -> None:
                self.periods += 1
                vol.checkpoint(f"period-{self.periods}")
                # The first mark after a checkpoint records "RAM is ahead of
                # disk" in a small LMDB transaction: paid here, untimed.
                vol.mark_many(b.offsets[:1], b.lengths[:1])

            self.run = lambda: vol.mark_many(b.offsets, b.lengths)
            self.reset = reset
            newest = lambda: vol.checkpoints()[-1].name
            self.count = lambda: vol.changed_since(newest()).total_bytes // GRANULARITY
            self.vol = vol
        elif name.startswith("numba-floor"):
            flat = np.zeros(N_CHUNKS // 64, np.uint64)
            if name == "numba-floor":
                self.run = lambda: floor_set_chunks(flat, b.chunks)
            else:
                self.run = lambda: floor_set_byte_ranges(flat, b.offsets, b.lengths, SHIFT)
            self.reset = lambda: flat.fill(0)
            self.count = lambda: popcount(flat)
        elif name == "numpy-bitwise_or.at":
            flat = np.zeros(N_CHUNKS // 64, np.uint64)
            self.run = lambda: numpy_set_chunks_ufunc_at(flat, b.chunks)
            self.reset = lambda: flat.fill(0)
            self.count = lambda: popcount(flat)
        elif name == "numpy-bytemap+packbits":
            bytemap = np.zeros(N_CHUNKS, np.bool_)
            self.run = lambda: numpy_set_chunks_bytemap(bytemap, b.chunks)
            self.reset = lambda: bytemap.fill(False)
            self.count = lambda: popcount(np.packbits(bytemap, bitorder="little").view(np.uint64))
        elif name.startswith("pyroaring"):
            holder = [pyroaring.BitMap()]
            if name == "pyroaring-update":
                self.run = lambda: holder[0].update(b.chunks_u32)
            else:
                as_np = np.frombuffer(b.chunks_u32, np.uint32)

                def sort_update() -> None:
                    ordered = array("I")
                    ordered.frombytes(np.sort(as_np).tobytes())
                    holder[0].update(ordered)

                self.run = sort_update
            self.reset = lambda: holder.__setitem__(0, pyroaring.BitMap())
            self.count = lambda: len(holder[0])
        elif name == "bitarray-index-list":
            bits = bitarray(N_CHUNKS, endian="little")
            bits.setall(0)

            def set_list() -> None:
                bits[b.chunks_list] = 1

            self.run = set_list
            self.reset = lambda: bits.setall(0)
            self.count = lambda: bits.count()
        else:  # pragma: no cover
            raise ValueError(name)


@pytest.mark.benchmark(group="write: mark_many 1M random 4 KiB, 1 TiB @ 64 KiB, steady")
@pytest.mark.parametrize("contender", CONTENDERS)
def test_mark_many_steady(benchmark, record, write_batch, tracked_volume, floor_compiled, contender):
    c = Contender(contender, write_batch, tracked_volume)
    c.run()  # steady state: segments exist, the period is already dirty
    benchmark(c.run)
    assert c.count() == write_batch.unique_chunks
    record(benchmark, f"steady/{contender}", writes=len(write_batch.offsets),
           unique_chunks=write_batch.unique_chunks)


@pytest.mark.benchmark(group="write: mark_many 1M random 4 KiB, 1 TiB @ 64 KiB, fresh period")
@pytest.mark.parametrize("contender", CONTENDERS)
def test_mark_many_fresh(benchmark, record, write_batch, tracked_volume, floor_compiled, contender):
    c = Contender(contender, write_batch, tracked_volume)
    c.run()
    benchmark.pedantic(c.run, setup=c.reset, rounds=FRESH_ROUNDS, warmup_rounds=1)
    assert c.count() == write_batch.unique_chunks
    record(benchmark, f"fresh/{contender}", writes=len(write_batch.offsets),
           unique_chunks=write_batch.unique_chunks)


# -- single marks -------------------------------------------------------------

SINGLE = tuple(f"tiered-{m}" for m in MODES) + (
    "python-call-baseline",
    "numba-floor-call",
    "pyroaring-add",
    "bitarray-setitem",
)


def single_marker(name: str, tracked_volume):
    """A callable f(offset) marking one 4 KiB write the contender's way."""
    if name.startswith("tiered-"):
        vol = tracked_volume(name[len("tiered-") :])
        # Mark once before timing: the first mark after a checkpoint writes
        # one small LMDB transaction ("RAM is ahead of disk").
        vol.mark(0, WRITE_SIZE)
        mark = vol.mark
        return lambda off: mark(off, WRITE_SIZE), vol
    if name == "python-call-baseline":

        def noop(offset, length):
            pass

        return lambda off: noop(off, WRITE_SIZE), None
    if name == "numba-floor-call":
        flat = np.zeros(N_CHUNKS // 64, np.uint64)
        return lambda off: floor_set_one(flat, off >> SHIFT), None
    if name == "pyroaring-add":
        bm = pyroaring.BitMap()
        return lambda off: bm.add(off >> SHIFT), None
    if name == "bitarray-setitem":
        bits = bitarray(N_CHUNKS, endian="little")
        bits.setall(0)
        return lambda off: bits.__setitem__(off >> SHIFT, 1), None
    raise ValueError(name)  # pragma: no cover


@pytest.mark.benchmark(group="write: one call, one 4 KiB write (same offset, calibrated)")
@pytest.mark.parametrize("contender", SINGLE)
def test_mark_one_call(benchmark, record, tracked_volume, floor_compiled, contender):
    """Per-call time as pytest-benchmark calibrates it (many iterations per
    round).  tiered is called directly as vol.mark(offset, 4096); the peers
    (a chunk index) and the baseline go through one lambda, as written."""
    offset = 123_456 * GRANULARITY
    if contender.startswith("tiered-"):
        vol = tracked_volume(contender[len("tiered-") :])
        vol.mark(0, WRITE_SIZE)  # the first mark's LMDB transaction, untimed
        benchmark(vol.mark, offset, WRITE_SIZE)
        assert len(vol.changed_since("base")) == 2
    else:
        fn, _ = single_marker(contender, tracked_volume)
        benchmark(fn, offset)
    record(benchmark, f"one-call/{contender}")


@pytest.mark.benchmark(group="write: 100,000 calls in a loop, random 4 KiB writes (per round)")
@pytest.mark.parametrize("contender", SINGLE + ("empty-loop-baseline",))
def test_mark_loop(benchmark, record, write_batch, tracked_volume, floor_compiled, contender):
    """A Python loop of 100,000 single marks at distinct random offsets per
    round; per-call time = median / 100,000 (extra_info.per_call_ns).  The
    loop overhead itself is the empty-loop baseline."""
    offsets = write_batch.offsets[:LOOP_CALLS].tolist()
    if contender == "empty-loop-baseline":

        def run() -> None:
            for off in offsets:
                pass

    elif contender.startswith("tiered-"):
        _, vol = single_marker(contender, tracked_volume)
        mark = vol.mark

        def run() -> None:
            for off in offsets:
                mark(off, WRITE_SIZE)

    else:
        fn, _ = single_marker(contender, tracked_volume)

        def run() -> None:
            for off in offsets:
                fn(off)

    benchmark(run)
    if contender.startswith("tiered-"):
        expected = np.unique(np.append(write_batch.chunks[:LOOP_CALLS], 0)).size  # + chunk 0
        assert vol.changed_since("base").total_bytes == expected * GRANULARITY
    per_call = benchmark.stats.stats.median / LOOP_CALLS if benchmark.stats else None
    record(benchmark, f"loop/{contender}", calls=LOOP_CALLS,
           per_call_ns=None if per_call is None else round(per_call * 1e9, 1))


# -- the targets, from this run's medians -----------------------------


@pytest.mark.bench_summary
def test_write_summary(medians, capsys):
    needed = [f"steady/{c}" for c in CONTENDERS]
    missing = [k for k in needed if k not in medians]
    if missing:
        pytest.skip(f"write benchmarks not measured in this run: {missing[:3]}...")
    lines: list[str] = []
    verdicts: list[tuple[str, bool]] = []
    for state in ("steady", "fresh"):
        med = {c: medians[f"{state}/{c}"]["median"] for c in CONTENDERS if f"{state}/{c}" in medians}
        if "numba-floor" not in med:
            continue
        floor = med["numba-floor"]
        numpy_best = min(med[k] for k in NUMPY if k in med)
        roaring_best = min(med[k] for k in ROARING if k in med)
        lines.append(f"{state}: median per 1M-write batch, and speed relative to tiered "
                     "(peer time / tiered time; the floor column is floor time / tiered time)")
        lines.append(f"  {'contender':28s} {'median':>10s}  {'floor/x':>8s}")
        for name, t in sorted(med.items(), key=lambda kv: kv[1]):
            lines.append(f"  {name:28s} {fmt_time(t):>10s}  {floor / t:8.2f}")
        for mode in MODES:
            t = med.get(f"tiered-{mode}")
            if t is None:
                continue
            r_floor, r_np, r_rb = floor / t, numpy_best / t, roaring_best / t
            r_np_at = med["numpy-bitwise_or.at"] / t
            r_rb_plain = med["pyroaring-update"] / t
            lines.append(
                f"  tiered-{mode:9s}: {r_floor:.2f}x the floor, {r_np:.1f}x fastest numpy "
                f"({r_np_at:.1f}x bitwise_or.at), {r_rb:.1f}x fastest pyroaring "
                f"({r_rb_plain:.1f}x plain update), {med['bitarray-index-list'] / t:.1f}x bitarray"
            )
            if state != "steady":
                continue
            if mode in ("one-bit", "hybrid"):
                verdicts += [
                    (f"{mode}: >= 0.5x the numba floor (is {r_floor:.2f}x)", r_floor >= 0.5),
                    (f"{mode}: >= 10x the fastest numpy (is {r_np:.1f}x)", r_np >= 10),
                    (f"{mode}: >= 30x the fastest pyroaring (is {r_rb:.1f}x)", r_rb >= 30),
                ]
            else:
                verdicts.append((f"{mode}: >= 1/3 of the numba floor (is {r_floor:.2f}x)", r_floor >= 1 / 3))
    loop_base = medians.get("loop/empty-loop-baseline", {}).get("median")
    for mode in MODES:
        one = medians.get(f"one-call/tiered-{mode}")
        loop = medians.get(f"loop/tiered-{mode}")
        if loop is not None:
            per = loop["median"] / LOOP_CALLS
            net = per - (loop_base / LOOP_CALLS if loop_base else 0.0)
            extra = f", {fmt_time(one['median'])} calibrated same-offset" if one else ""
            lines.append(f"  mark() tiered-{mode}: {fmt_time(per)} per call in a loop "
                         f"({fmt_time(net)} net of the loop itself){extra}")
            verdicts.append((f"{mode}: mark() < 400 ns per call (is {per * 1e9:.0f} ns in a loop)",
                             per < 400e-9))
    lines.append("targets (steady state):")
    lines += check(verdicts)
    print_report(capsys, "write path vs the issue's targets", lines)
    if enforce_targets():
        assert all(ok for _, ok in verdicts), [what for what, ok in verdicts if not ok]
