"""Numba kernels of stored generation pages: span lists of generation rows
<-> bytes.

The record layout, the varints and the bounds discipline are those of
:mod:`tiered.storage.page_kernels` (read its docstring first): every count,
position and length is bounded before use, and generations above what an
in-RAM table can hold (``MAX_GEN_32``) are refused.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

from ..bitmaps.kernels import _jit, _popcount, uniform_entry, uniform_value
from ..config import MAX_GEN_32, PAGE_SHIFT, SEG_CHUNKS, SEG_WORDS
from .page_kernels import (
    KIND_GRAW, KIND_PACKED, KIND_SPARSE, KIND_UNIFORM, _get_varint,
    _next_position, _page_bounds, _page_records, _put_record_header, _put_varint, _record_header, _varint_size,
)

# Raw generations are little-endian on disk.  On a little-endian machine a
# byte view of them is the array itself, which copies 4x faster than
# assembling each value from bytes.  One view, in the row's own dtype: a view
# per width made every dtype compile every width's copy (2.5 s at first).
LITTLE_ENDIAN = sys.byteorder == "little"


@njit(**_jit)
def _put_raw_generations(out, p, row, width):
    n = width * SEG_CHUNKS
    if LITTLE_ENDIAN:
        dst = out[p : p + n].view(row.dtype)
        for k in range(SEG_CHUNKS):
            dst[k] = row[k]
    else:
        for k in range(SEG_CHUNKS):
            v = np.int64(row[k])
            for b in range(width):
                out[p + k * width + b] = (v >> (8 * b)) & 255


@njit(**_jit)
def _get_raw_generations(buf, p, row, width):
    n = width * SEG_CHUNKS
    if LITTLE_ENDIAN:
        src = buf[p : p + n].view(row.dtype)
        for k in range(SEG_CHUNKS):
            row[k] = src[k]
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


@njit(inline="always", **_jit)
def _put_gen_row(out, p, row, width):
    """Write the kind and body of one segment's generations, the smallest
    encoding of them; returns the position after.  ``out`` needs
    ``4 * SEG_CHUNKS + 8`` bytes of room from ``p``."""
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
        return _put_varint(out, p + 1, np.int64(v0))
    if sparse < best:
        out[p] = KIND_SPARSE
        p = _put_varint(out, p + 1, nz)
        prev = -1
        for k in range(SEG_CHUNKS):
            v = np.int64(row[k])
            if v != 0:
                p = _put_varint(out, p, k - prev - 1)
                p = _put_varint(out, p, v)
                prev = k
        return p
    if packed < width * SEG_CHUNKS:
        out[p] = KIND_PACKED
        out[p + 1] = vb
        return _put_packed_generations(out, p + 2, row, vb)
    out[p] = KIND_GRAW
    _put_raw_generations(out, p + 1, row, width)
    return p + 1 + width * SEG_CHUNKS


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
        p = _put_gen_row(out, p, rows[r], width)
    return p


@njit(inline="always", **_jit)
def _max_generation(width):
    """Largest generation a page of ``width``-byte values may hold.
    Directory entries are int32 and a uniform segment stores -(gen + 2), so
    a larger one would wrap into a row index (MAX_GEN_32)."""
    return min((np.int64(1) << (8 * width)) - 1, np.int64(MAX_GEN_32))


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
        if k > SEG_CHUNKS:
            return -1
        prev = -1
        for _ in range(k):
            if p < 0:
                return -1
            prev, p = _next_position(buf, p, end, prev)
            if p < 0:
                return -1
            v, p = _get_varint(buf, p, end)
            if p < 0 or v > maxval:
                return -1
            row[prev] = v
        return p
    if kind == KIND_GRAW:
        if p + width * SEG_CHUNKS > end:
            return -1
        _get_raw_generations(buf, p, row, width)
        if width == 4:  # narrower widths cannot exceed maxval
            top = np.int64(0)
            for k in range(SEG_CHUNKS):
                top = max(top, np.int64(row[k]))
            if top > maxval:
                return -1
        return p + width * SEG_CHUNKS
    return -1


@njit(**_jit)
def decode_gen_spans(buf, page, seg_limit, rows_like):
    """Inverse of encode_gen_spans for a page of a volume of ``seg_limit``
    segments; rows get the dtype of ``rows_like``."""
    end = buf.shape[0]
    width = rows_like.itemsize
    maxval = _max_generation(width)
    n, p = _page_records(buf)
    prev_end, page_end = _page_bounds(page, seg_limit)
    if page_end < 0:
        n, p = 0, -1
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    ref = np.empty(n, np.int64)
    rows = np.zeros((n, SEG_CHUNKS), rows_like.dtype)
    if p < 0:
        return False, first, count, ref, rows
    nrows = 0
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
            continue
        if c != 1:
            return False, first, count, ref, rows
        ref[i] = nrows
        p = _get_gen_row(buf, p, end, kind, rows[nrows], width, maxval)
        nrows += 1
        if p < 0:
            return False, first, count, ref, rows
    if p != end:
        return False, first, count, ref, rows
    if nrows < n:
        return True, first, count, ref, rows[:nrows].copy()
    return True, first, count, ref, rows
