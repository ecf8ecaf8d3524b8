"""Constants, data generators, the history builder, the numba floor kernels
and report helpers shared by the benchmark modules (fixtures are in
conftest.py).

Nothing here holds state: only constants, functions and jitted kernels.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

import tiered

# -- the workload of the issue ---------------------------------------------

VOLUME_SIZE = 1 << 40  # 1 TiB
GRANULARITY = 64 << 10  # 64 KiB
SHIFT = GRANULARITY.bit_length() - 1
N_CHUNKS = VOLUME_SIZE // GRANULARITY  # 16,777,216 chunks
WRITE_SIZE = 4 << 10
N_WRITES = 1_000_000
SEED = 20251125
MODES = ("one-bit", "hybrid", "multi-bit")

# Set TIERED_BENCH_ENFORCE=1 to turn the reported targets into assertions.
ENFORCE_ENV = "TIERED_BENCH_ENFORCE"


# -- data -------------------------------------------------------------------


@dataclass(frozen=True)
class WriteBatch:
    """1,000,000 random 4 KiB writes on the 1 TiB volume, in every input form.

    Each contender gets the form it is fastest with, prepared outside the
    timing: tiered takes byte offsets and lengths (int64), the numba and numpy
    peers chunk indices (int64), pyroaring an ``array('I')`` of chunk
    indices, bitarray a list of Python ints.  All name the same chunks.
    """

    offsets: np.ndarray
    lengths: np.ndarray
    chunks: np.ndarray
    chunks_u32: array
    chunks_list: list
    unique_chunks: int


def make_write_batch(seed: int = SEED) -> WriteBatch:
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, VOLUME_SIZE // WRITE_SIZE, N_WRITES, dtype=np.int64) * WRITE_SIZE
    lengths = np.full(N_WRITES, WRITE_SIZE, np.int64)
    chunks = offsets >> SHIFT
    u32 = array("I")
    u32.frombytes(chunks.astype(np.uint32).tobytes())
    for a in (offsets, lengths, chunks):
        a.setflags(write=False)
    return WriteBatch(
        offsets=offsets,
        lengths=lengths,
        chunks=chunks,
        chunks_u32=u32,
        chunks_list=chunks.tolist(),
        unique_chunks=int(np.unique(chunks).size),
    )


def random_chunks(fraction: float, seed: int, n_chunks: int = N_CHUNKS) -> np.ndarray:
    """``fraction`` of the chunks of ``n_chunks``, distinct, in random order."""
    rng = np.random.default_rng(seed)
    k = round(n_chunks * fraction)
    return rng.choice(n_chunks, size=k, replace=False).astype(np.int64)


def clustered_chunks(fraction: float, extent: int, seed: int, n_chunks: int) -> np.ndarray:
    """``fraction`` of the chunks as non-overlapping runs of ``extent`` chunks
    at random (unaligned) positions; sorted."""
    rng = np.random.default_rng(seed)
    m = round(n_chunks * fraction / extent)
    # m distinct sorted picks from n - m*(extent-1) slots, spread by their rank
    picks = np.sort(rng.choice(n_chunks - m * (extent - 1), size=m, replace=False)).astype(np.int64)
    starts = picks + np.arange(m, dtype=np.int64) * (extent - 1)
    return (starts[:, None] + np.arange(extent, dtype=np.int64)[None, :]).ravel()


def dirty_offsets(fraction: float, seed: int) -> np.ndarray:
    """Byte offsets (one per chunk) of a random ``fraction`` of the 1 TiB volume."""
    offs = random_chunks(fraction, seed) << SHIFT
    offs.setflags(write=False)
    return offs


# -- stored histories -------------------------------------------------------

HISTORY_FRACTION = 0.01  # of the chunks written in every period
HISTORY_LENGTHS = (1, 10, 100)


def ckpt_name(i: int) -> str:
    return f"c{i:03d}"


def positions(length: int) -> dict[str, int]:
    """Indices of the oldest, middle and newest checkpoint of a history."""
    return {"oldest": 0, "middle": length // 2, "newest": length - 1}


@dataclass(frozen=True)
class History:
    """A closed store holding one volume ("vol") with checkpoints
    c000 .. c{length-1} and one dirty set written after each.

    ``expected_chunks[i]`` is how many chunks changed since checkpoint i, for
    every i next to an oldest, middle or newest position (the answers the
    benchmarks check, before and after removing a checkpoint)."""

    path: str
    mode: str
    length: int
    build_seconds: float
    expected_chunks: dict[int, int]


def build_history(path: str, mode: str, length: int, period: Callable[[int], np.ndarray]) -> History:
    """Write a history: after checkpoint i, one 4 KiB write at each byte
    offset of ``period(i)``; then close the store (sync=False)."""
    # changed since c_i = union of the periods from i on: keep, per chunk,
    # the newest period that wrote it.
    newest_period = np.full(N_CHUNKS, -1, np.int32)
    started = time.perf_counter()
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("vol", VOLUME_SIZE, GRANULARITY, strategy=tiered.Strategy(mode))
        for i in range(length):
            vol.checkpoint(ckpt_name(i))
            offs = period(i)
            vol.mark_many(offs, np.full(len(offs), WRITE_SIZE, np.int64))
            newest_period[offs >> SHIFT] = i
    build = time.perf_counter() - started
    probes = {j for i in positions(length).values() for j in (i - 1, i, i + 1) if 0 <= j < length}
    expected = {i: int((newest_period >= i).sum()) for i in sorted(probes)}
    return History(path, mode, length, build, expected)


# -- the numba floor --------------------------------------------------------

_jit = {"cache": False, "nogil": True, "boundscheck": False}


@njit(**_jit)
def floor_set_chunks(flat, chunks):
    """The floor: set bit ``c`` of a flat uint64 bitmap for each chunk index."""
    for i in range(chunks.shape[0]):
        c = chunks[i]
        flat[c >> 6] |= np.uint64(1) << np.uint64(c & 63)


@njit(**_jit)
def floor_set_byte_ranges(flat, offsets, lengths, shift):
    """The same flat bitmap fed byte ranges like ``mark_many``: each write
    (offset, length) may span several chunks.  No validation, no directory."""
    for i in range(offsets.shape[0]):
        length = lengths[i]
        if length == 0:
            continue
        off = offsets[i]
        c0 = off >> shift
        c1 = (off + length - 1) >> shift
        for c in range(c0, c1 + 1):
            flat[c >> 6] |= np.uint64(1) << np.uint64(c & 63)


@njit(**_jit)
def floor_set_one(flat, c):
    """One bit per call: what a single numba call from Python costs."""
    flat[c >> 6] |= np.uint64(1) << np.uint64(c & 63)


def compile_floor() -> None:
    """Compile the floor kernels (one small call each) before any timing."""
    flat = np.zeros(2, np.uint64)
    floor_set_chunks(flat, np.array([1, 70], np.int64))
    floor_set_byte_ranges(flat, np.array([4096], np.int64), np.array([4096], np.int64), SHIFT)
    floor_set_one(flat, 3)


def numpy_set_chunks_ufunc_at(flat: np.ndarray, chunks: np.ndarray) -> None:
    """numpy, in place on the uint64 bitmap: ``bitwise_or.at`` is the
    unbuffered form, correct when several chunks share a word (the buffered
    ``flat[words] |= bits`` silently drops all but one of them)."""
    np.bitwise_or.at(flat, chunks >> 6, np.left_shift(np.uint64(1), (chunks & 63).astype(np.uint64)))


def numpy_set_chunks_bytemap(bytemap: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """numpy's fastest correct way found: one byte per chunk (16 MiB for 16M
    chunks), plain fancy-index assignment (idempotent, so duplicates are
    fine), then ``packbits`` to the same little-endian uint64 bitmap."""
    bytemap[chunks] = True
    return np.packbits(bytemap, bitorder="little").view(np.uint64)


# -- reports ----------------------------------------------------------------


def enforce_targets() -> bool:
    return os.environ.get(ENFORCE_ENV, "") not in ("", "0")


def print_report(capsys, title: str, lines: list[str]) -> None:
    """Print a summary past pytest's capture, so -q runs show it too."""
    with capsys.disabled():
        print()
        print(f"== {title} ==")
        for line in lines:
            print(line)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def check(results: list[tuple[str, bool]]) -> list[str]:
    """Lines 'MET'/'MISSED' for (description, ok) pairs."""
    return [f"  [{'MET   ' if ok else 'MISSED'}] {what}" for what, ok in results]


Recorder = Callable[..., None]
