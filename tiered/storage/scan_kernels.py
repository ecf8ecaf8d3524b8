"""Reading a stored generation page straight into a bitmap: ``>= at_least``.

A hybrid query over folded periods thresholds every page of the
generation array.  Decoding each segment into a row of 4,096 generations
and then comparing all of them touches 16 KiB per segment; a dense row is
stored *packed* (a bitmap of the non-zero chunks, then their values), and
its non-zero chunks can be compared as they are read, building the
answer's bits a word at a time (eight one-byte values at once, compared
in one 64-bit word).  Other kinds go through a decoded row as before.  Every count, position and length is checked as in
:mod:`tiered.storage.page_kernels`.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ..bitmaps.kernels import BOOL, FULL_ENTRY, I64, NO_LIMIT, _jit, _popcount
from ..bitmaps.span_kernels import NOTHING_TO_DO, NO_ROOM, _set_span, _writable_row, threshold_spans
from ..config import SEG_WORDS
from .gen_page_kernels import _get_gen_row, _max_generation
from .page_kernels import KIND_PACKED, KIND_UNIFORM, _get_varint, _page_bounds, _page_records, _record_header


@functools.cache
def deposit_table() -> np.ndarray:
    """DEPOSIT[mask, bits]: bit j of ``bits`` moved to the j-th set bit of
    ``mask`` (x86's pdep on one byte, which numba does not expose); made at
    the first query that needs it, not at import."""
    masks = np.arange(256)[:, None]
    bits = np.arange(256)[None, :]
    in_mask = (masks >> np.arange(8)) & 1  # (mask, position)
    rank = np.cumsum(in_mask, axis=1) - 1  # which set bit of the mask a position is
    table = np.zeros((256, 256), np.int64)
    for pos in range(8):
        table |= in_mask[:, pos : pos + 1] * ((bits >> np.maximum(rank[:, pos : pos + 1], 0)) & 1) << pos
    return table.astype(np.uint8)


_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_ONES = np.uint64(0x0101010101010101)
_GATHER = np.uint64(0x0102040810204080)  # moves bit 8j to bit 56 + j


@njit(inline="always", **_jit)
def _zero_bytes(x):
    """The high bit of every zero byte of ``x`` set (and possibly of bytes
    above a zero byte: enough to tell whether any byte is zero)."""
    return (x - _ONES) & ~x & _HIGH


@njit(inline="always", **_jit)
def _bytes_at_least(x, t):
    """Bit j set when byte j of ``x`` (unsigned) is >= t."""
    if t <= 0:
        return np.uint64(255)
    if t > 255:
        return np.uint64(0)
    tt = np.uint64(t) * _ONES
    # Low seven bits: x | 0x80 minus the threshold's low seven bits never
    # borrows across bytes, and keeps the high bit when they are >=.
    low_ge = (x | _HIGH) - (tt & _LOW7)
    # >= when the high bit is set in x only, or equal and the low bits are >=.
    ge = ((x & ~tt) | (~(x ^ tt) & low_ge)) & _HIGH
    return ((ge >> np.uint64(7)) * _GATHER) >> np.uint64(56)


@njit(inline="always", **_jit)
def _or_packed_at_least(buf, p, end, index, pool, n_top, seg, at_least, maxval, deposit):
    """OR into the bitmap table the chunks of segment ``seg`` whose packed
    generations (body at ``p``) are ``>= at_least``; returns the position
    after the body, -1 if malformed, -2 if the table needs room."""
    if p >= end:
        return -1
    vb = np.int64(buf[p])
    if vb != 1 and vb != 2 and vb != 4:
        return -1
    p += 1
    q = p + 8 * SEG_WORDS
    if q > end:
        return -1
    e = np.int64(-1)  # the segment's row, materialised at the first chunk kept
    for w in range(SEG_WORDS):
        word = np.uint64(0)
        for byte in range(8):
            word |= np.uint64(buf[p + 8 * w + byte]) << np.uint64(8 * byte)
        n = _popcount(word)
        if q + n * vb > end:
            return -1
        keep = np.uint64(0)
        if vb == 1 and q + n + 8 <= end:
            # One-byte generations, eight chunks at a time: compare up to
            # eight values in one word, then place the results at the
            # chunks' positions with the deposit table.
            for b in range(8):
                present = (word >> np.uint64(8 * b)) & np.uint64(255)
                if not present:
                    continue
                k = _popcount(present)
                vals = np.uint64(0)
                for byte in range(8):
                    vals |= np.uint64(buf[q + byte]) << np.uint64(8 * byte)
                valid = _ALL if k == 8 else (np.uint64(1) << np.uint64(8 * k)) - np.uint64(1)
                if _zero_bytes(vals) & valid:
                    return -1
                passed = _bytes_at_least(vals, at_least) & ((np.uint64(1) << np.uint64(k)) - np.uint64(1))
                keep |= np.uint64(deposit[present, passed]) << np.uint64(8 * b)
                q += k
            word = np.uint64(0)
        while word:
            low = word & (~word + np.uint64(1))
            word ^= low
            v = np.int64(buf[q])
            for byte in range(1, vb):
                v |= np.int64(buf[q + byte]) << (8 * byte)
            q += vb
            if v == 0 or v > maxval:
                return -1
            if v >= at_least:
                keep |= low
        if keep:
            if e == -1:
                e = _writable_row(index, pool, n_top, seg, BOOL(True), FULL_ENTRY)
                if e == NO_ROOM:
                    return -2
            if e != NOTHING_TO_DO:
                pool[e, w] |= keep
    return q


@njit(**_jit)
def or_gen_page_at_least(buf, page, seg_limit, row, index, pool, n_top, at_least, deposit):
    """OR into a bitmap table (with room for a page and a page's rows) the
    chunks ``>= at_least`` of a generation page payload (past its width
    byte) of a volume of ``seg_limit`` segments; ``row`` is a scratch
    (1, SEG_CHUNKS) array of the page's dtype, ``deposit`` is
    :func:`deposit_table`.  Returns False if the page is malformed or lies
    outside the volume."""
    end = buf.shape[0]
    width = row.itemsize
    maxval = _max_generation(width)
    n, p = _page_records(buf)
    if p < 0:
        return False
    first = np.empty(1, np.int64)
    count = np.empty(1, np.int64)
    ref = np.zeros(1, np.int64)
    prev_end, page_end = _page_bounds(page, seg_limit)
    if page_end < 0:
        return False
    for _ in range(n):
        f, c, kind, p = _record_header(buf, p, prev_end, page_end)
        if p < 0:
            return False
        prev_end = f + c
        if kind == KIND_UNIFORM:
            v, p = _get_varint(buf, p, end)
            if p < 0 or v > maxval:
                return False
            if v >= at_least and not _set_span(index, pool, n_top, f, c, I64(1), BOOL(True)):
                return False  # the caller reserved room: cannot happen
            continue
        if c != 1:
            return False
        if kind == KIND_PACKED:
            p = _or_packed_at_least(buf, p, end, index, pool, n_top, f, at_least, maxval, deposit)
            if p < 0:
                return False
            continue
        row[0, :] = 0
        p = _get_gen_row(buf, p, end, kind, row[0], width, maxval)
        if p < 0:
            return False
        first[0] = f
        count[0] = 1
        threshold_spans(index, pool, n_top, first, count, ref, row, at_least, I64(NO_LIMIT), I64(0))
    return p == end
