"""Numba kernels over segment tables and span lists.

Nothing here validates or allocates policy: the callers in ``table.py`` and
``storage/codec.py`` check arguments, size the arrays and grow them when a kernel
reports that it ran out of room.  Every kernel that may run out of room is
idempotent from the item it stopped at, so the caller grows and resumes.

A *segment table* is two arrays:

``index`` (int32)
    ``index[:DIR_HEADER]`` holds counters; then one *top* entry per page of the
    volume; then the pages in use, ``PAGE_SEGMENTS`` entries each.  An entry
    is ``ABSENT`` (-1, all zero), a row number ``>= 0`` in ``pool``, or
    ``<= -2``: the whole page or segment holds the value ``-entry - 2``
    (for bitmaps the only such value is 1, "full").
``pool`` (uint64 words for bitmaps, uint8/16/32 generations)
    One row per materialised segment.

A *span list* describes a set of segments in ascending order: ``first`` and
``count`` (a count above one only for uniform whole pages) and ``ref``, a row
number into a separate ``rows`` array or a uniform entry as above.  Tables
export span lists, stored pages decode to span lists, and all merging kernels
consume them, so one code path serves RAM tables and sealed pages alike.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_SHIFT

DIR_HEADER = 8
PAGES_USED = 0
PAGES_CAP = 1
SLOTS_USED = 2
SLOTS_CAP = 3
ABSENT = -1
FULL_ENTRY = -3  # uniform value 1: the entry of a full bitmap segment or page
NO_LIMIT = 1 << 62  # above every generation any table can hold

ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

_jit = dict(cache=True, nogil=True, boundscheck=False)

# Calls between kernels pass scalars as plain int64 and bool, never as
# constants: numba compiles a callee once per distinct argument type, and a
# constant argument (``1``, ``True``) has a type of its own per value.  Each
# helper then compiles once per pool dtype, not once per call site.
I64 = np.int64
BOOL = np.bool_


@njit(inline="always", **_jit)
def uniform_entry(value):
    return -value - 2


@njit(inline="always", **_jit)
def uniform_value(entry):
    return -entry - 2


@njit(inline="always", **_jit)
def _popcount(x):
    # SWAR popcount: numba exposes no portable intrinsic.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


# --------------------------------------------------------------------------
# directory
# --------------------------------------------------------------------------


# The directory helpers are inlined: as calls they cost more than the row
# work of a merge (about 75 ns per segment, measured on or_spans).
@njit(inline="always", **_jit)
def _entry_pos(index, n_top, seg):
    """Position in ``index`` of the entry of ``seg``, materialising its page.

    Returns -1 when a page is needed and none is free.
    """
    t = seg >> PAGE_SHIFT
    e = index[DIR_HEADER + t]
    if e < 0:
        p = index[PAGES_USED]
        if p == index[PAGES_CAP]:
            return -1
        index[PAGES_USED] = p + 1
        base = DIR_HEADER + n_top + p * PAGE_SEGMENTS
        # A uniform page becomes a page of uniform segments.
        for j in range(PAGE_SEGMENTS):
            index[base + j] = e
        index[DIR_HEADER + t] = p
        e = p
    return DIR_HEADER + n_top + e * PAGE_SEGMENTS + (seg & (PAGE_SEGMENTS - 1))


@njit(**_jit)
def _fill_row(pool, slot, value, is_bits):
    # Element loops, not slice assignment: a slice is an array view, and
    # views cost reference counting on the hottest path.
    if is_bits:
        word = ALL_ONES if value else np.uint64(0)
        for w in range(pool.shape[1]):
            pool[slot, w] = word
    else:
        for k in range(pool.shape[1]):
            pool[slot, k] = value


@njit(**_jit)
def _materialise(index, pool, pos, is_bits):
    """Give the absent or uniform entry at ``pos`` a row; -1 if none is free."""
    s = index[SLOTS_USED]
    if s == index[SLOTS_CAP]:
        return -1
    index[SLOTS_USED] = s + 1
    e = index[pos]
    if e == ABSENT:
        _fill_row(pool, s, I64(0), is_bits)
    else:
        _fill_row(pool, s, I64(uniform_value(e)), is_bits)
    index[pos] = s
    return s


@njit(**_jit)
def _set_bits(pool, slot, a, b):
    """Set bits a..b (inclusive) of one bitmap row."""
    w0 = a >> 6
    w1 = b >> 6
    lo = ALL_ONES << np.uint64(a & 63)
    hi = ALL_ONES >> np.uint64(63 - (b & 63))
    if w0 == w1:
        pool[slot, w0] |= lo & hi
        return
    pool[slot, w0] |= lo
    for w in range(w0 + 1, w1):
        pool[slot, w] = ALL_ONES
    pool[slot, w1] |= hi


@njit(**_jit)
def set_range(index, pool, n_top, c0, c1, value, is_bits):
    """Give chunks c0..c1 (inclusive) the value (1 for bitmaps).

    Whole pages and segments become uniform entries without rows.  Returns
    False when it ran out of room; calling again after growing is safe.
    """
    want = uniform_entry(value)
    c = c0
    while c <= c1:
        seg = c >> SEG_SHIFT
        page_chunks = PAGE_SEGMENTS * SEG_CHUNKS
        if (c & (page_chunks - 1)) == 0 and c + page_chunks - 1 <= c1:
            t = seg >> PAGE_SHIFT
            if index[DIR_HEADER + t] < 0:
                index[DIR_HEADER + t] = want
                c += page_chunks
                continue
        seg_lo = seg << SEG_SHIFT
        seg_hi = seg_lo + SEG_CHUNKS - 1
        hi = min(c1, seg_hi)
        pos = _entry_pos(index, n_top, seg)
        if pos < 0:
            return False
        e = index[pos]
        if c == seg_lo and hi == seg_hi:
            if e >= 0:
                _fill_row(pool, e, value, is_bits)
            else:
                index[pos] = want
        elif e != want:
            slot = e
            if e < 0:
                slot = _materialise(index, pool, pos, is_bits)
                if slot < 0:
                    return False
            if is_bits:
                _set_bits(pool, slot, c - seg_lo, hi - seg_lo)
            else:
                for k in range(c - seg_lo, hi - seg_lo + 1):
                    pool[slot, k] = value
        c = hi + 1
    return True


# The two mark kernels below write the common case, a write inside one
# segment that already has a row, inline: passing arrays to a helper costs
# reference counting that would dominate the loop.  Index arithmetic is
# unsigned so numba emits no negative-index wraparound checks.  Both return
# how many writes are done; fewer than ``len(offsets)`` means the table must
# grow before resuming from there.

_U6 = np.uint64(6)
_U63 = np.uint64(63)
_USEG = np.uint64(SEG_SHIFT)
_USEG_MASK = np.uint64(SEG_CHUNKS - 1)
_UPAGE = np.uint64(PAGE_SHIFT)
_UPAGE_MASK = np.uint64(PAGE_SEGMENTS - 1)
_UPAGE_SEGS = np.uint64(PAGE_SEGMENTS)
_UDIR_HEADER = np.uint64(DIR_HEADER)


@njit(**_jit)
def mark_bits(index, pool, n_top, offsets, lengths, start, shift):
    """Set the bits of every chunk touched by each write [offset, offset + length)."""
    n = offsets.shape[0]
    pages_base = np.uint64(DIR_HEADER + n_top)
    for i in range(start, n):
        length = lengths[i]
        if length == 0:
            continue
        off = offsets[i]
        c0 = np.uint64(off >> shift)
        c1 = np.uint64((off + length - 1) >> shift)
        seg = c0 >> _USEG
        if (c1 >> _USEG) == seg:
            page = index[_UDIR_HEADER + (seg >> _UPAGE)]
            if page >= 0:
                slot = index[pages_base + np.uint64(page) * _UPAGE_SEGS + (seg & _UPAGE_MASK)]
                if slot >= 0:
                    row = np.uint64(slot)
                    a = c0 & _USEG_MASK
                    if c0 == c1:  # the usual small write: one chunk, one bit
                        pool[row, a >> _U6] |= np.uint64(1) << (a & _U63)
                        continue
                    b = c1 & _USEG_MASK
                    w0 = a >> _U6
                    w1 = b >> _U6
                    lo = ALL_ONES << (a & _U63)
                    hi = ALL_ONES >> (_U63 - (b & _U63))
                    if w0 == w1:
                        pool[row, w0] |= lo & hi
                    else:
                        pool[row, w0] |= lo
                        for w in range(w0 + np.uint64(1), w1):
                            pool[row, w] = ALL_ONES
                        pool[row, w1] |= hi
                    continue
        if not set_range(index, pool, n_top, I64(c0), I64(c1), I64(1), BOOL(True)):
            return i
    return n


@njit(**_jit)
def mark_gens(index, pool, n_top, offsets, lengths, start, shift, value):
    """Give every chunk touched by each write the generation ``value``."""
    n = offsets.shape[0]
    pages_base = np.uint64(DIR_HEADER + n_top)
    gen = pool.dtype.type(value)
    for i in range(start, n):
        length = lengths[i]
        if length == 0:
            continue
        off = offsets[i]
        c0 = np.uint64(off >> shift)
        c1 = np.uint64((off + length - 1) >> shift)
        seg = c0 >> _USEG
        if (c1 >> _USEG) == seg:
            page = index[_UDIR_HEADER + (seg >> _UPAGE)]
            if page >= 0:
                slot = index[pages_base + np.uint64(page) * _UPAGE_SEGS + (seg & _UPAGE_MASK)]
                if slot >= 0:
                    row = np.uint64(slot)
                    if c0 == c1:
                        pool[row, c0 & _USEG_MASK] = gen
                        continue
                    for k in range(c0 & _USEG_MASK, (c1 & _USEG_MASK) + np.uint64(1)):
                        pool[row, k] = gen
                    continue
        if not set_range(index, pool, n_top, I64(c0), I64(c1), I64(value), BOOL(False)):
            return i
    return n



@njit(**_jit)
def check_writes(offsets, lengths, size):
    """(index of the first write outside [0, size) or -1, whether any write
    is non-empty), in one pass."""
    any_data = False
    for i in range(offsets.shape[0]):
        off = offsets[i]
        length = lengths[i]
        if off < 0 or length < 0 or off > size or length > size - off:
            return i, any_data
        any_data |= length > 0
    return -1, any_data
