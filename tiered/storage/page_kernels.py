"""Numba kernels of the stored page format: span lists <-> bytes.

A stored page passed its checksum, but its numbers are still not trusted:
the kernels run with ``boundscheck=False``, so one unchecked number is an
out-of-bounds write.  Every decoder therefore bounds each count, gap,
position and length it reads before using it, and compares the remaining
room with the number (``g > room``) rather than adding the number to a
position first (``pos + g > end``), because int64 sums of a varint near
2**63 wrap silently.  Varints themselves are read as at most 63 bits, so
every value is in [0, 2**63).  The page number, which comes from the key,
and the volume's segment count ``seg_limit`` bound where records may land:
a record past the volume's last segment is malformed, not clipped.

This module holds the shared record layout and the bitmap pages;
:mod:`tiered.storage.gen_page_kernels` the generation pages.  The Python
wrappers in :mod:`tiered.storage.codec` check the envelope and turn failures
into ``CorruptionError``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..bitmaps.kernels import FULL_ENTRY, _jit, _popcount, _set_bits
from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_WORDS
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
    """Returns (value, new position); position -1 on truncated input or a
    varint longer than 9 bytes.  The value is in [0, 2**63)."""
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
def _page_bounds(page, seg_limit):
    """First segment of ``page`` and the end of its segments inside a volume
    of ``seg_limit`` segments; (0, -1) when the page lies outside the volume.

    ``page`` is checked before it is shifted: a page number near 2**63
    would wrap to a small or negative segment.
    """
    if seg_limit < 1 or page < 0 or page > (seg_limit - 1) >> PAGE_SHIFT:
        return np.int64(0), np.int64(-1)
    start = np.int64(page) << PAGE_SHIFT
    return start, min(start + PAGE_SEGMENTS, np.int64(seg_limit))


@njit(**_jit)
def _record_header(buf, p, prev_end, page_end):
    """Read a record header: (first segment, count, kind, position after).

    The position is -1 when the header is truncated or leaves the page.
    ``prev_end <= page_end``, so ``page_end - prev_end`` is the room left and
    the bounds below never add an unchecked varint.
    """
    end = buf.shape[0]
    gap, p = _get_varint(buf, p, end)
    if p < 0 or gap > page_end - prev_end:
        return 0, 0, 0, -1
    c, p = _get_varint(buf, p, end)
    if p < 0 or p >= end or c < 1 or c > page_end - prev_end - gap:
        return 0, 0, 0, -1
    return prev_end + gap, c, np.int64(buf[p]), p + 1


@njit(inline="always", **_jit)
def _next_position(buf, p, end, prev):
    """Read a position gap after position ``prev`` (-1 before the first):
    (position, new p); p is -1 when truncated or past the segment."""
    g, p = _get_varint(buf, p, end)
    if p < 0 or g > SEG_CHUNKS - 2 - prev:
        return 0, -1
    return prev + g + 1, p


@njit(**_jit)
def decode_bit_spans(buf, page, seg_limit):
    """Inverse of encode_bit_spans for a page of a volume of ``seg_limit``
    segments.  Returns (ok, first, count, ref, rows)."""
    end = buf.shape[0]
    n, p = _page_records(buf)
    prev_end, page_end = _page_bounds(page, seg_limit)
    if page_end < 0:
        n, p = 0, -1
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    ref = np.empty(n, np.int64)
    rows = np.zeros((n, SEG_WORDS), np.uint64)
    if p < 0:
        return False, first, count, ref, rows
    nrows = 0
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
            if k > SEG_CHUNKS:
                return False, first, count, ref, rows
            prev = -1
            for _ in range(k):
                if p < 0:
                    break
                prev, p = _next_position(buf, p, end, prev)
                if p < 0:
                    break
                row[prev >> 6] |= np.uint64(1) << np.uint64(prev & 63)
        elif kind == KIND_RUNS:
            k, p = _get_varint(buf, p, end)
            if k > SEG_CHUNKS:
                return False, first, count, ref, rows
            run_end = 0
            for _ in range(k):
                if p < 0:
                    break
                g, p = _get_varint(buf, p, end)
                if p < 0 or g > SEG_CHUNKS - 1 - run_end:
                    p = -1
                    break
                s = run_end + g
                ln, p = _get_varint(buf, p, end)
                if p < 0 or ln > SEG_CHUNKS - 1 - s:
                    p = -1
                    break
                run_end = s + ln + 1
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
