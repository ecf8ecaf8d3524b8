"""Numba kernels over span lists: export a table's spans, merge spans into a
table (OR, threshold, assign, load), and turn spans into byte extents.

See :mod:`tiered.bitmaps.kernels` for the table and span-list layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_SHIFT, SEG_WORDS
from .kernels import (
    ABSENT, ALL_ONES, BOOL, FULL_ENTRY, DIR_HEADER, I64, PAGES_USED, SLOTS_USED, _U63, _entry_pos, _jit,
    _materialise, _popcount, set_range, uniform_entry, uniform_value,
)
# --------------------------------------------------------------------------
# span lists
# --------------------------------------------------------------------------


@njit(**_jit)
def table_spans(index, n_top, seg_lo, seg_hi):
    """Span list of the non-empty segments of a table in [seg_lo, seg_hi)."""
    n = 0
    first = np.empty(0, np.int64)
    count = np.empty(0, np.int64)
    ref = np.empty(0, np.int64)
    for phase in range(2):
        if phase == 1:
            first = np.empty(n, np.int64)
            count = np.empty(n, np.int64)
            ref = np.empty(n, np.int64)
            n = 0
        t_lo = seg_lo >> PAGE_SHIFT
        t_hi = min(n_top, (seg_hi + PAGE_SEGMENTS - 1) >> PAGE_SHIFT)
        for t in range(t_lo, t_hi):
            e = index[DIR_HEADER + t]
            if e == ABSENT:
                continue
            p_lo = t << PAGE_SHIFT
            if e < 0:
                a = max(p_lo, seg_lo)
                b = min(p_lo + PAGE_SEGMENTS, seg_hi)
                if phase == 1:
                    first[n] = a
                    count[n] = b - a
                    ref[n] = e
                n += 1
                continue
            base = DIR_HEADER + n_top + e * PAGE_SEGMENTS
            for j in range(max(0, seg_lo - p_lo), min(PAGE_SEGMENTS, seg_hi - p_lo)):
                s = index[base + j]
                if s == ABSENT:
                    continue
                if phase == 1:
                    first[n] = p_lo + j
                    count[n] = 1
                    ref[n] = s
                n += 1
    return first, count, ref


NO_ROOM = -1
NOTHING_TO_DO = -2
NEVER = np.int64(1) << 40  # no directory entry equals this


@njit(**_jit)
def _set_span(index, pool, n_top, first, count, value, is_bits):
    """Give the value to every chunk of ``count`` segments from ``first``."""
    return set_range(index, pool, n_top, first << SEG_SHIFT, ((first + count) << SEG_SHIFT) - 1, value, is_bits)


@njit(inline="always", **_jit)
def _writable_row(index, pool, n_top, seg, is_bits, done_entry):
    """The row of ``seg``, materialised if needed.

    Returns NO_ROOM when the table must grow, NOTHING_TO_DO when the entry
    already is ``done_entry`` (a full segment, say).
    """
    pos = _entry_pos(index, n_top, seg)
    if pos < 0:
        return NO_ROOM
    e = index[pos]
    if e == done_entry:
        return NOTHING_TO_DO
    if e < 0:
        e = _materialise(index, pool, pos, is_bits)
    return e


@njit(**_jit)
def or_spans(index, pool, n_top, first, count, ref, rows, start):
    """OR a bitmap span list into a bitmap table.  Returns spans done."""
    for i in range(start, first.shape[0]):
        r = ref[i]
        if r < 0:
            if not _set_span(index, pool, n_top, first[i], count[i], I64(1), BOOL(True)):
                return i
            continue
        e = _writable_row(index, pool, n_top, first[i], BOOL(True), FULL_ENTRY)
        if e == NO_ROOM:
            return i
        if e == NOTHING_TO_DO:
            continue
        for w in range(SEG_WORDS):
            pool[e, w] |= rows[r, w]
    return first.shape[0]


@njit(**_jit)
def threshold_spans(index, pool, n_top, first, count, ref, rows, gen, below, start):
    """OR into a bitmap table the chunks of a generation span list with
    ``gen <= generation < below``."""
    bits = np.empty(SEG_WORDS, np.uint64)
    for i in range(start, first.shape[0]):
        r = ref[i]
        if r < 0:
            v = uniform_value(r)
            if gen <= v < below and not _set_span(index, pool, n_top, first[i], count[i], I64(1), BOOL(True)):
                return i
            continue
        # One branch-free pass builds the segment's bits; only a segment
        # with some chunk in the band gets a row.
        hit = np.uint64(0)
        for w in range(SEG_WORDS):
            word = np.uint64(0)
            for b in range(64):
                v = rows[r, w * 64 + b]
                word |= np.uint64((v >= gen) & (v < below)) << np.uint64(b)
            bits[w] = word
            hit |= word
        if not hit:
            continue
        e = _writable_row(index, pool, n_top, first[i], BOOL(True), FULL_ENTRY)
        if e == NO_ROOM:
            return i
        if e == NOTHING_TO_DO:
            continue
        for w in range(SEG_WORDS):
            pool[e, w] |= bits[w]
    return first.shape[0]


@njit(**_jit)
def assign_spans(index, pool, n_top, first, count, ref, rows, gen, start):
    """Set to ``gen`` every chunk of a bitmap span list in a generation table."""
    for i in range(start, first.shape[0]):
        r = ref[i]
        if r < 0:
            if not _set_span(index, pool, n_top, first[i], count[i], I64(gen), BOOL(False)):
                return i
            continue
        e = _writable_row(index, pool, n_top, first[i], BOOL(False), uniform_entry(gen))
        if e == NO_ROOM:
            return i
        if e == NOTHING_TO_DO:
            continue
        for w in range(SEG_WORDS):
            word = rows[r, w]
            while word:
                low = word & (~word + np.uint64(1))
                pool[e, w * 64 + _popcount(low - np.uint64(1))] = gen
                word ^= low
    return first.shape[0]


@njit(**_jit)
def load_spans(index, pool, n_top, first, count, ref, rows, start, is_bits):
    """Copy a span list into an empty region of a table (same kind)."""
    for i in range(start, first.shape[0]):
        r = ref[i]
        if r < 0:
            if not _set_span(index, pool, n_top, first[i], count[i], I64(uniform_value(r)), is_bits):
                return i
            continue
        e = _writable_row(index, pool, n_top, first[i], is_bits, NEVER)
        if e == NO_ROOM:
            return i
        for k in range(pool.shape[1]):
            pool[e, k] = rows[r, k]
    return first.shape[0]


@njit(inline="always", **_jit)
def _ctz(x):
    """Trailing zeros of a non-zero word."""
    return _popcount((x & (~x + np.uint64(1))) - np.uint64(1))


@njit(**_jit)
def _clipped_word(rows, r, w, wbase, c_lo, c_hi):
    """Word ``w`` of row ``r`` with the chunks outside [c_lo, c_hi) cleared."""
    if wbase + 64 <= c_lo or wbase >= c_hi:
        return np.uint64(0)
    x = rows[r, w]
    if wbase < c_lo:
        x &= ALL_ONES << np.uint64(c_lo - wbase)
    if wbase + 64 > c_hi:
        x &= ALL_ONES >> np.uint64(wbase + 64 - c_hi)
    return x


@njit(**_jit)
def count_runs(first, count, ref, rows, c_lo, c_hi):
    """How many runs span_runs will emit, counted a word at a time."""
    n = 0
    run_end = np.int64(-1)  # end of the last set chunk seen, if a run may go on
    for i in range(first.shape[0]):
        base = first[i] << SEG_SHIFT
        seg_end = (first[i] + count[i]) << SEG_SHIFT
        if seg_end <= c_lo or base >= c_hi:
            continue
        r = ref[i]
        if r < 0:
            a = max(base, c_lo)
            if a != run_end:
                n += 1
            run_end = min(seg_end, c_hi)
            continue
        for w in range(SEG_WORDS):
            wbase = base + w * 64
            x = _clipped_word(rows, r, w, wbase, c_lo, c_hi)
            if x == 0:
                continue
            # run starts: set bits whose lower neighbour is clear
            n += _popcount(x & ~(x << np.uint64(1)))
            if (x & np.uint64(1)) and run_end == wbase:
                n -= 1  # continues the run that reached this word
            run_end = wbase + 64 if x >> _U63 else np.int64(-1)
    return n


@njit(**_jit)
def span_runs(first, count, ref, rows, c_lo, c_hi, shift, lo, hi, offsets, lengths):
    """Runs of set chunks of a bitmap span list inside chunks [c_lo, c_hi).

    Runs are coalesced across segments and written to (offsets, lengths),
    uint64 arrays of exactly ``count_runs`` entries, in units of ``2**shift``
    per chunk (0: chunks; the granularity's log2: bytes) and clipped to
    [lo, hi) in those units.  The caller allocates them: numpy asks the
    kernel for huge pages for large arrays, which numba's allocator does
    not, and an answer of millions of extents otherwise spends much of its
    time in page faults.
    """
    n = 0
    run_start = np.int64(-1)
    run_end = np.int64(-1)  # exclusive, in chunks
    for i in range(first.shape[0]):
        base = first[i] << SEG_SHIFT
        seg_end = (first[i] + count[i]) << SEG_SHIFT
        if seg_end <= c_lo or base >= c_hi:
            continue
        r = ref[i]
        for w in range(SEG_WORDS if r >= 0 else 1):
            if r < 0:
                a = max(base, c_lo)
                z = min(seg_end, c_hi)
            else:
                wbase = base + w * 64
                x = _clipped_word(rows, r, w, wbase, c_lo, c_hi)
                if x == 0:
                    continue
                b = 0
                a = np.int64(-1)
                z = np.int64(-1)
            # A uniform span is one run; a word yields its runs one by one.
            while True:
                if r >= 0:
                    if b >= 64:
                        break
                    y = x >> np.uint64(b)
                    if y == 0:
                        break
                    b += _ctz(y)
                    ones = ~(x >> np.uint64(b))  # bits above 63 - b read as ones
                    length = _ctz(ones)
                    a = wbase + b
                    z = a + length
                    b += length
                if a == run_end:
                    run_end = z
                else:
                    if run_start >= 0:
                        if n == offsets.shape[0]:
                            raise AssertionError("span_runs: more runs than counted")
                        o = max(run_start << shift, lo)
                        offsets[n] = o
                        lengths[n] = min(run_end << shift, hi) - o
                        n += 1
                    run_start = a
                    run_end = z
                if r < 0:
                    break
    if run_start >= 0:
        n += 1
        if n != offsets.shape[0]:
            raise AssertionError("span_runs: run count mismatch")
        o = max(run_start << shift, lo)
        offsets[n - 1] = o
        lengths[n - 1] = min(run_end << shift, hi) - o
    elif n != offsets.shape[0]:
        raise AssertionError("span_runs: run count mismatch")


@njit(**_jit)
def count_span_bits(first, count, ref, rows):
    """Number of set chunks in a bitmap span list."""
    total = 0
    for i in range(first.shape[0]):
        r = ref[i]
        if r < 0:
            total += count[i] * SEG_CHUNKS
            continue
        for w in range(SEG_WORDS):
            total += _popcount(rows[r, w])
    return total


@njit(**_jit)
def remap_generations(index, pool, n_top, live):
    """Renumber every generation v to the number of live generations <= v.

    ``live`` is sorted ascending.  Used when a multi-bit counter would
    overflow: the order of generations, and so every answer, is preserved.
    """
    for t in range(n_top):
        e = index[DIR_HEADER + t]
        if e <= -2:
            index[DIR_HEADER + t] = uniform_entry(np.searchsorted(live, uniform_value(e), side="right"))
    pages = index[PAGES_USED]
    base = DIR_HEADER + n_top
    for k in range(pages * PAGE_SEGMENTS):
        e = index[base + k]
        if e <= -2:
            index[base + k] = uniform_entry(np.searchsorted(live, uniform_value(e), side="right"))
    for s in range(index[SLOTS_USED]):
        row = pool[s]
        for k in range(SEG_CHUNKS):
            row[k] = np.searchsorted(live, row[k], side="right")


