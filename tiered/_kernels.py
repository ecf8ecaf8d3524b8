"""Numba kernels over segment tables and span lists.

Nothing here validates or allocates policy: the callers in ``segments.py`` and
``codec.py`` check arguments, size the arrays and grow them when a kernel
reports that it ran out of room.  Every kernel that may run out of room is
idempotent from the item it stopped at, so the caller grows and resumes.

A *segment table* is two arrays:

``index`` (int32)
    ``index[:HEADER]`` holds counters; then one *top* entry per page of the
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

import sys

import numpy as np
from numba import njit

from .config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_SHIFT, SEG_WORDS

HEADER = 8
PAGES_USED = 0
PAGES_CAP = 1
SLOTS_USED = 2
SLOTS_CAP = 3
ABSENT = -1
FULL_ENTRY = -3  # uniform value 1: the entry of a full bitmap segment or page
NO_LIMIT = 1 << 62  # above every generation any table can hold

ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

_jit = dict(cache=True, nogil=True, boundscheck=False)


@njit(inline="always", **_jit)
def uniform_entry(value):
    return -value - 2


@njit(inline="always", **_jit)
def uniform_value(entry):
    return -entry - 2


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
    e = index[HEADER + t]
    if e < 0:
        p = index[PAGES_USED]
        if p == index[PAGES_CAP]:
            return -1
        index[PAGES_USED] = p + 1
        base = HEADER + n_top + p * PAGE_SEGMENTS
        # A uniform page becomes a page of uniform segments.
        for j in range(PAGE_SEGMENTS):
            index[base + j] = e
        index[HEADER + t] = p
        e = p
    return HEADER + n_top + e * PAGE_SEGMENTS + (seg & (PAGE_SEGMENTS - 1))


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
        _fill_row(pool, s, 0, is_bits)
    else:
        _fill_row(pool, s, uniform_value(e), is_bits)
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
            if index[HEADER + t] < 0:
                index[HEADER + t] = want
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
_UHEADER = np.uint64(HEADER)


@njit(**_jit)
def mark_bits(index, pool, n_top, offsets, lengths, start, shift):
    """Set the bits of every chunk touched by each write [offset, offset + length)."""
    n = offsets.shape[0]
    pages_base = np.uint64(HEADER + n_top)
    for i in range(start, n):
        length = lengths[i]
        if length == 0:
            continue
        off = offsets[i]
        c0 = np.uint64(off >> shift)
        c1 = np.uint64((off + length - 1) >> shift)
        seg = c0 >> _USEG
        if (c1 >> _USEG) == seg:
            page = index[_UHEADER + (seg >> _UPAGE)]
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
        if not set_range(index, pool, n_top, np.int64(c0), np.int64(c1), 1, True):
            return i
    return n


@njit(**_jit)
def mark_gens(index, pool, n_top, offsets, lengths, start, shift, value):
    """Give every chunk touched by each write the generation ``value``."""
    n = offsets.shape[0]
    pages_base = np.uint64(HEADER + n_top)
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
            page = index[_UHEADER + (seg >> _UPAGE)]
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
        if not set_range(index, pool, n_top, np.int64(c0), np.int64(c1), value, False):
            return i
    return n


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
            e = index[HEADER + t]
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
            base = HEADER + n_top + e * PAGE_SEGMENTS
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
            if not _set_span(index, pool, n_top, first[i], count[i], 1, True):
                return i
            continue
        e = _writable_row(index, pool, n_top, first[i], True, FULL_ENTRY)
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
            if gen <= v < below and not _set_span(index, pool, n_top, first[i], count[i], 1, True):
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
        e = _writable_row(index, pool, n_top, first[i], True, FULL_ENTRY)
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
            if not _set_span(index, pool, n_top, first[i], count[i], gen, False):
                return i
            continue
        e = _writable_row(index, pool, n_top, first[i], False, uniform_entry(gen))
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
            if not _set_span(index, pool, n_top, first[i], count[i], uniform_value(r), is_bits):
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
        e = index[HEADER + t]
        if e <= -2:
            index[HEADER + t] = uniform_entry(np.searchsorted(live, uniform_value(e), side="right"))
    pages = index[PAGES_USED]
    base = HEADER + n_top
    for k in range(pages * PAGE_SEGMENTS):
        e = index[base + k]
        if e <= -2:
            index[base + k] = uniform_entry(np.searchsorted(live, uniform_value(e), side="right"))
    for s in range(index[SLOTS_USED]):
        row = pool[s]
        for k in range(SEG_CHUNKS):
            row[k] = np.searchsorted(live, row[k], side="right")


# --------------------------------------------------------------------------
# page codec: span lists <-> bytes
# --------------------------------------------------------------------------

KIND_FULL = 1
KIND_POS = 2
KIND_RUNS = 3
KIND_RAW = 4
KIND_UNIFORM = 5
KIND_SPARSE = 6
KIND_GRAW = 7
KIND_PACKED = 8


@njit(inline="always", **_jit)
def _varint_size(v):
    n = 1
    while v >= 128:
        v >>= 7
        n += 1
    return n


@njit(inline="always", **_jit)
def _put_varint(buf, p, v):
    while v >= 128:
        buf[p] = (v & 127) | 128
        v >>= 7
        p += 1
    buf[p] = v
    return p + 1


@njit(inline="always", **_jit)
def _put_record_header(out, p, gap, count):
    """Write a record's segment gap and count; the caller writes the kind."""
    return _put_varint(out, _put_varint(out, p, gap), count)


@njit(inline="always", **_jit)
def _get_varint(buf, p, end):
    """Returns (value, new position); position -1 on truncated input."""
    v = np.int64(0)
    shift = 0
    while p < end and shift < 63:
        b = np.int64(buf[p])
        p += 1
        v |= (b & 127) << shift
        if b < 128:
            return v, p
        shift += 7
    return v, -1


@njit(inline="always", **_jit)
def _popcount(x):
    # SWAR popcount: numba exposes no portable intrinsic.
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(**_jit)
def _row_positions(rows, r, out):
    """Write the set bit positions of a bitmap row into ``out``; return how many."""
    n = 0
    for w in range(SEG_WORDS):
        word = rows[r, w]
        while word:
            low = word & (~word + np.uint64(1))
            out[n] = w * 64 + _popcount(low - np.uint64(1))
            n += 1
            word ^= low
    return n


@njit(**_jit)
def encode_bit_spans(first, count, ref, rows, page, out):
    """Encode the spans of one page into ``out``; returns bytes written.

    ``out`` must hold ``16 + len(first) * (24 + 8 * SEG_WORDS)`` bytes.
    """
    pos = np.empty(SEG_CHUNKS, np.int64)
    p = _put_varint(out, 0, first.shape[0])
    prev_end = page << PAGE_SHIFT
    for i in range(first.shape[0]):
        p = _put_record_header(out, p, first[i] - prev_end, count[i])
        prev_end = first[i] + count[i]
        r = ref[i]
        if r < 0:
            out[p] = KIND_FULL
            p += 1
            continue
        npos = _row_positions(rows, r, pos)
        if npos == SEG_CHUNKS:
            out[p] = KIND_FULL
            p += 1
            continue
        # Size the two sparse encodings from the positions, then keep the
        # smallest of positions, runs and raw bits.
        pos_size = _varint_size(npos)
        runs_size = 0
        nruns = 0
        prev = -1
        for j in range(npos):
            pos_size += _varint_size(pos[j] - prev - 1)
            prev = pos[j]
        j = 0
        run_end = 0
        while j < npos:
            s = pos[j]
            while j + 1 < npos and pos[j + 1] == pos[j] + 1:
                j += 1
            runs_size += _varint_size(s - run_end) + _varint_size(pos[j] - s)
            run_end = pos[j] + 1
            nruns += 1
            j += 1
        runs_size += _varint_size(nruns)
        raw_size = 8 * SEG_WORDS
        if pos_size <= runs_size and pos_size < raw_size:
            out[p] = KIND_POS
            p = _put_varint(out, p + 1, npos)
            prev = -1
            for j in range(npos):
                p = _put_varint(out, p, pos[j] - prev - 1)
                prev = pos[j]
        elif runs_size < raw_size:
            out[p] = KIND_RUNS
            p = _put_varint(out, p + 1, nruns)
            j = 0
            run_end = 0
            while j < npos:
                s = pos[j]
                while j + 1 < npos and pos[j + 1] == pos[j] + 1:
                    j += 1
                p = _put_varint(out, p, s - run_end)
                p = _put_varint(out, p, pos[j] - s)
                run_end = pos[j] + 1
                j += 1
        else:
            out[p] = KIND_RAW
            p += 1
            for w in range(SEG_WORDS):
                x = rows[r, w]
                for b in range(8):
                    out[p] = (x >> np.uint64(8 * b)) & np.uint64(255)
                    p += 1
    return p


@njit(**_jit)
def _page_records(buf):
    """Number of records a page payload announces, and where they start.

    Returns (0, -1) when the count is unreadable or impossible.
    """
    n, p = _get_varint(buf, 0, buf.shape[0])
    if p < 0 or n > PAGE_SEGMENTS:
        return 0, -1
    return n, p


@njit(**_jit)
def _record_header(buf, p, prev_end, page_end):
    """Read a record header: (first segment, count, kind, position after).

    The position is -1 when the header is truncated or leaves the page.
    """
    end = buf.shape[0]
    gap, p = _get_varint(buf, p, end)
    if p < 0:
        return 0, 0, 0, -1
    c, p = _get_varint(buf, p, end)
    if p < 0 or p >= end or c < 1 or prev_end + gap + c > page_end:
        return 0, 0, 0, -1
    return prev_end + gap, c, np.int64(buf[p]), p + 1


@njit(**_jit)
def decode_bit_spans(buf, page):
    """Inverse of encode_bit_spans.  Returns (ok, first, count, ref, rows)."""
    end = buf.shape[0]
    n, p = _page_records(buf)
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    ref = np.empty(n, np.int64)
    rows = np.zeros((n, SEG_WORDS), np.uint64)
    if p < 0:
        return False, first, count, ref, rows
    nrows = 0
    prev_end = page << PAGE_SHIFT
    page_end = prev_end + PAGE_SEGMENTS
    for i in range(n):
        first[i], c, kind, p = _record_header(buf, p, prev_end, page_end)
        if p < 0:
            return False, first, count, ref, rows
        count[i] = c
        prev_end = first[i] + c
        if kind == KIND_FULL:
            ref[i] = FULL_ENTRY
            continue
        if c != 1:
            return False, first, count, ref, rows
        row = rows[nrows]
        ref[i] = nrows
        nrows += 1
        if kind == KIND_POS:
            k, p = _get_varint(buf, p, end)
            prev = -1
            for _ in range(k):
                if p < 0:
                    break
                g, p = _get_varint(buf, p, end)
                prev = prev + g + 1
                if prev >= SEG_CHUNKS:
                    p = -1
                    break
                row[prev >> 6] |= np.uint64(1) << np.uint64(prev & 63)
        elif kind == KIND_RUNS:
            k, p = _get_varint(buf, p, end)
            run_end = 0
            for _ in range(k):
                if p < 0:
                    break
                g, p = _get_varint(buf, p, end)
                if p < 0:
                    break
                ln, p = _get_varint(buf, p, end)
                s = run_end + g
                run_end = s + ln + 1
                if run_end > SEG_CHUNKS:
                    p = -1
                    break
                _set_bits(rows, nrows - 1, s, run_end - 1)
        elif kind == KIND_RAW:
            if p + 8 * SEG_WORDS > end:
                return False, first, count, ref, rows
            for w in range(SEG_WORDS):
                x = np.uint64(0)
                for b in range(8):
                    x |= np.uint64(buf[p + b]) << np.uint64(8 * b)
                row[w] = x
                p += 8
        else:
            return False, first, count, ref, rows
        if p < 0:
            return False, first, count, ref, rows
    if p != end:
        return False, first, count, ref, rows
    if nrows < n:
        return True, first, count, ref, rows[:nrows].copy()
    return True, first, count, ref, rows


# Raw generations are little-endian on disk.  On a little-endian machine a
# byte view of them is the array itself, which copies 4x faster than
# assembling each value from bytes.
LITTLE_ENDIAN = sys.byteorder == "little"


@njit(**_jit)
def _put_raw_generations(out, p, row, width):
    n = width * SEG_CHUNKS
    if LITTLE_ENDIAN and width == 4:
        out[p : p + n].view(np.uint32)[:] = row
    elif LITTLE_ENDIAN and width == 2:
        out[p : p + n].view(np.uint16)[:] = row
    else:
        for k in range(SEG_CHUNKS):
            v = np.int64(row[k])
            for b in range(width):
                out[p + k * width + b] = (v >> (8 * b)) & 255


@njit(**_jit)
def _get_raw_generations(buf, p, row, width):
    n = width * SEG_CHUNKS
    if LITTLE_ENDIAN and width == 4:
        row[:] = buf[p : p + n].view(np.uint32)
    elif LITTLE_ENDIAN and width == 2:
        row[:] = buf[p : p + n].view(np.uint16)
    else:
        for k in range(SEG_CHUNKS):
            v = np.int64(0)
            for b in range(width):
                v |= np.int64(buf[p + k * width + b]) << (8 * b)
            row[k] = v


@njit(**_jit)
def _put_packed_generations(out, p, row, vb):
    """A bitmap of the non-zero chunks, then their values in ``vb`` bytes each.

    Values are written unconditionally and the cursor advances only past
    non-zero ones: no data-dependent branch, which matters on rows where
    about half the chunks are set.  The caller leaves ``vb`` bytes of slack.
    """
    q = p + 8 * SEG_WORDS
    for w in range(SEG_WORDS):
        word = np.uint64(0)
        for b in range(64):
            v = np.int64(row[w * 64 + b])
            nonzero = v != 0
            word |= np.uint64(nonzero) << np.uint64(b)
            for byte in range(vb):
                out[q + byte] = (v >> (8 * byte)) & 255
            q += nonzero * vb
        for byte in range(8):
            out[p + 8 * w + byte] = (word >> np.uint64(8 * byte)) & np.uint64(255)
    return q


@njit(**_jit)
def _get_packed_generations(buf, p, end, row, vb, maxval):
    """Inverse of _put_packed_generations; returns the position after, or -1."""
    if vb != 1 and vb != 2 and vb != 4:
        return -1
    q = p + 8 * SEG_WORDS
    if q > end:
        return -1
    for w in range(SEG_WORDS):
        word = np.uint64(0)
        for byte in range(8):
            word |= np.uint64(buf[p + 8 * w + byte]) << np.uint64(8 * byte)
        while word:
            low = word & (~word + np.uint64(1))
            k = w * 64 + _popcount(low - np.uint64(1))
            word ^= low
            if q + vb > end:
                return -1
            v = np.int64(0)
            for byte in range(vb):
                v |= np.int64(buf[q + byte]) << (8 * byte)
            if v == 0 or v > maxval:
                return -1
            row[k] = v
            q += vb
    return q


@njit(**_jit)
def encode_gen_spans(first, count, ref, rows, page, out):
    """Encode one page of generation spans; ``out`` as for bitmaps but with
    ``4 * SEG_CHUNKS`` bytes of room per row."""
    width = rows.itemsize
    p = _put_varint(out, 0, first.shape[0])
    prev_end = page << PAGE_SHIFT
    for i in range(first.shape[0]):
        p = _put_record_header(out, p, first[i] - prev_end, count[i])
        prev_end = first[i] + count[i]
        r = ref[i]
        if r < 0:
            out[p] = KIND_UNIFORM
            p = _put_varint(out, p + 1, uniform_value(r))
            continue
        row = rows[r]
        # A branch-free pass first: counts decide between uniform, packed and
        # raw without touching the data-dependent branches of sparse pairs.
        nz = 0
        same = 0
        top = np.int64(0)
        v0 = row[0]
        for k in range(SEG_CHUNKS):
            v = np.int64(row[k])
            nz += v != 0
            same += v == v0
            top = max(top, v)
        vb = 1 if top < 256 else (2 if top < 65536 else 4)
        packed = 1 + 8 * SEG_WORDS + nz * vb
        best = min(packed, width * SEG_CHUNKS)
        sparse = best
        if same != SEG_CHUNKS and 2 * nz < best:
            # sparse pairs take at least 2 bytes each: size them only when
            # they can win
            sparse = _varint_size(nz)
            prev = -1
            for k in range(SEG_CHUNKS):
                v = np.int64(row[k])
                if v != 0:
                    sparse += _varint_size(k - prev - 1) + _varint_size(v)
                    prev = k
        if same == SEG_CHUNKS:
            out[p] = KIND_UNIFORM
            p = _put_varint(out, p + 1, np.int64(v0))
        elif sparse < best:
            out[p] = KIND_SPARSE
            p = _put_varint(out, p + 1, nz)
            prev = -1
            for k in range(SEG_CHUNKS):
                v = np.int64(row[k])
                if v != 0:
                    p = _put_varint(out, p, k - prev - 1)
                    p = _put_varint(out, p, v)
                    prev = k
        elif packed < width * SEG_CHUNKS:
            out[p] = KIND_PACKED
            out[p + 1] = vb
            p = _put_packed_generations(out, p + 2, row, vb)
        else:
            out[p] = KIND_GRAW
            p += 1
            _put_raw_generations(out, p, row, width)
            p += width * SEG_CHUNKS
    return p


@njit(**_jit)
def _get_gen_row(buf, p, end, kind, row, width, maxval):
    """Decode one segment record's generations into ``row`` (zeroed for
    SPARSE); returns the position after it, -1 if malformed."""
    if kind == KIND_PACKED:
        if p >= end:
            return -1
        return _get_packed_generations(buf, p + 1, end, row, np.int64(buf[p]), maxval)
    if kind == KIND_SPARSE:
        k, p = _get_varint(buf, p, end)
        prev = -1
        for _ in range(k):
            if p < 0:
                return -1
            g, p = _get_varint(buf, p, end)
            if p < 0:
                return -1
            v, p = _get_varint(buf, p, end)
            prev = prev + g + 1
            if prev >= SEG_CHUNKS or v > maxval:
                return -1
            row[prev] = v
        return p
    if kind == KIND_GRAW:
        if p + width * SEG_CHUNKS > end:
            return -1
        _get_raw_generations(buf, p, row, width)
        return p + width * SEG_CHUNKS
    return -1


@njit(**_jit)
def load_gen_page(buf, page, index, pool, n_top):
    """Decode a generation page straight into a generation table whose page
    is empty and has room for a page's rows.  A fold rewrites the array
    page by page this way, with no decoded copy in between.  Returns False
    if the page is malformed."""
    end = buf.shape[0]
    width = pool.itemsize
    maxval = (np.int64(1) << (8 * width)) - 1
    n, p = _page_records(buf)
    if p < 0:
        return False
    prev_end = page << PAGE_SHIFT
    page_end = prev_end + PAGE_SEGMENTS
    for _ in range(n):
        first, c, kind, p = _record_header(buf, p, prev_end, page_end)
        if p < 0:
            return False
        prev_end = first + c
        if kind == KIND_UNIFORM:
            v, p = _get_varint(buf, p, end)
            if p < 0 or v > maxval or not _set_span(index, pool, n_top, first, c, v, False):
                return False
            continue
        if c != 1:
            return False
        # An absent entry materialises as a zeroed row, as SPARSE needs.
        e = _writable_row(index, pool, n_top, first, False, NEVER)
        if e < 0:
            return False
        p = _get_gen_row(buf, p, end, kind, pool[e], width, maxval)
        if p < 0:
            return False
    return p == end


@njit(**_jit)
def decode_gen_spans(buf, page, rows_like, index, pool, n_top, at_least):
    """Inverse of encode_gen_spans; rows get the dtype of ``rows_like``.

    With ``at_least > 0`` the page is not kept: each segment is decoded into
    one scratch row and its chunks ``>= at_least`` are ORed into the bitmap
    table (index, pool), which must have room for a page and a page's rows.
    Queries use this to read a generation array without holding it decoded.
    """
    end = buf.shape[0]
    width = rows_like.itemsize
    maxval = (np.int64(1) << (8 * width)) - 1
    stream = at_least > 0
    n, p = _page_records(buf)
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    ref = np.empty(n, np.int64)
    rows = np.zeros((1 if stream else n, SEG_CHUNKS), rows_like.dtype)
    if p < 0:
        return False, first, count, ref, rows
    nrows = 0
    prev_end = page << PAGE_SHIFT
    page_end = prev_end + PAGE_SEGMENTS
    for i in range(n):
        first[i], c, kind, p = _record_header(buf, p, prev_end, page_end)
        if p < 0:
            return False, first, count, ref, rows
        count[i] = c
        prev_end = first[i] + c
        if kind == KIND_UNIFORM:
            v, p = _get_varint(buf, p, end)
            if p < 0 or v > maxval:
                return False, first, count, ref, rows
            ref[i] = uniform_entry(v)
            if stream:
                threshold_spans(index, pool, n_top, first[i : i + 1], count[i : i + 1], ref[i : i + 1], rows, at_least, NO_LIMIT, 0)
            continue
        if c != 1:
            return False, first, count, ref, rows
        if stream:
            row = rows[0]
            row[:] = 0
            ref[i] = 0
        else:
            row = rows[nrows]
            ref[i] = nrows
            nrows += 1
        p = _get_gen_row(buf, p, end, kind, row, width, maxval)
        if p < 0:
            return False, first, count, ref, rows
        if stream:
            threshold_spans(index, pool, n_top, first[i : i + 1], count[i : i + 1], ref[i : i + 1], rows, at_least, NO_LIMIT, 0)
    if p != end:
        return False, first, count, ref, rows
    if nrows < n and not stream:
        return True, first, count, ref, rows[:nrows].copy()
    return True, first, count, ref, rows


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
