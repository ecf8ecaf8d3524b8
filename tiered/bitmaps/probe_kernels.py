"""Read-only probes of segment tables for the crash-exact write path.

A write in ``durability="sync"`` mode needs no sync when every chunk it
touches is already marked in the current period *and* that mark is already
durable.  These kernels answer that without changing any table: they read
the directory (``kernels.py`` describes it) and never materialise a page.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_SHIFT
from .kernels import ABSENT, ALL_ONES, DIR_HEADER, FULL_ENTRY, uniform_value

_jit = dict(cache=True, nogil=True, boundscheck=False)

#: classify() status bits
NEEDS_OPEN = 1  # a chunk is new, or journaled in the batch not yet committed
NEEDS_FLIGHT = 2  # a chunk is journaled in the batch being committed


@njit(inline="always", **_jit)
def _entry(index, n_top, seg):
    """The entry of ``seg``: ABSENT, a uniform entry (<= -2) or a row."""
    e = index[DIR_HEADER + (seg >> PAGE_SHIFT)]
    if e < 0:
        return e
    return index[DIR_HEADER + n_top + e * PAGE_SEGMENTS + (seg & (PAGE_SEGMENTS - 1))]


@njit(inline="always", **_jit)
def _word_mask(a, b, w):
    """The bits of word ``w`` inside row bits a..b (inclusive)."""
    lo = a - (w << 6)
    hi = b - (w << 6)
    m = ALL_ONES
    if lo > 0:
        m &= ALL_ONES << np.uint64(lo)
    if hi < 63:
        m &= ALL_ONES >> np.uint64(63 - hi)
    return m


@njit(**_jit)
def bits_all(index, pool, n_top, c0, c1):
    """Whether every chunk c0..c1 (inclusive) is set in a bitmap table."""
    c = c0
    while c <= c1:
        seg = c >> SEG_SHIFT
        seg_lo = seg << SEG_SHIFT
        hi = min(c1, seg_lo + SEG_CHUNKS - 1)
        e = _entry(index, n_top, seg)
        if e != FULL_ENTRY:
            if e < 0:
                return False
            a = c - seg_lo
            b = hi - seg_lo
            for w in range(a >> 6, (b >> 6) + 1):
                m = _word_mask(a, b, w)
                if pool[e, w] & m != m:
                    return False
        c = hi + 1
    return True


@njit(**_jit)
def bits_any(index, pool, n_top, c0, c1):
    """Whether any chunk c0..c1 (inclusive) is set in a bitmap table."""
    c = c0
    while c <= c1:
        seg = c >> SEG_SHIFT
        seg_lo = seg << SEG_SHIFT
        hi = min(c1, seg_lo + SEG_CHUNKS - 1)
        e = _entry(index, n_top, seg)
        if e == FULL_ENTRY:
            return True
        if e >= 0:
            a = c - seg_lo
            b = hi - seg_lo
            for w in range(a >> 6, (b >> 6) + 1):
                if pool[e, w] & _word_mask(a, b, w):
                    return True
        c = hi + 1
    return False


@njit(**_jit)
def gens_all_at_least(index, pool, n_top, c0, c1, gen):
    """Whether every chunk c0..c1 (inclusive) of a generation table holds
    ``gen`` or more."""
    c = c0
    while c <= c1:
        seg = c >> SEG_SHIFT
        seg_lo = seg << SEG_SHIFT
        hi = min(c1, seg_lo + SEG_CHUNKS - 1)
        e = _entry(index, n_top, seg)
        if e == ABSENT:
            return False
        if e < 0:
            if uniform_value(e) < gen:
                return False
        else:
            for k in range(c - seg_lo, hi - seg_lo + 1):
                if pool[e, k] < gen:
                    return False
        c = hi + 1
    return True


@njit(**_jit)
def classify(
    act_index, act_pool, act_bits, gen,
    open_index, open_pool, flight_index, flight_pool,
    n_top, offsets, lengths, shift, new_out,
):
    """Sort a batch of validated writes for the sync-mode write path.

    A write is *new* when a chunk it touches is not marked in period
    ``gen`` of the active table (a bitmap if ``act_bits``, else a
    generation table); its index goes to ``new_out``.  Returns (number of
    new writes, status bits): NEEDS_OPEN if a write is new or touches a
    chunk of the open batch (``open_*``), NEEDS_FLIGHT if one touches the
    batch being committed (``flight_*``).  All tables share ``n_top``.
    """
    n_new = 0
    status = 0
    for i in range(offsets.shape[0]):
        length = lengths[i]
        if length == 0:
            continue
        c0 = offsets[i] >> shift
        c1 = (offsets[i] + length - 1) >> shift
        if act_bits:
            covered = bits_all(act_index, act_pool, n_top, c0, c1)
        else:
            covered = gens_all_at_least(act_index, act_pool, n_top, c0, c1, gen)
        if not covered:
            new_out[n_new] = i
            n_new += 1
            status |= NEEDS_OPEN
        elif status & NEEDS_OPEN == 0 and bits_any(open_index, open_pool, n_top, c0, c1):
            status |= NEEDS_OPEN
        elif status & NEEDS_FLIGHT == 0 and bits_any(flight_index, flight_pool, n_top, c0, c1):
            status |= NEEDS_FLIGHT
    return n_new, status


@njit(**_jit)
def all_marked(act_index, act_pool, act_bits, gen, n_top, offsets, lengths, shift):
    """Whether every chunk a write touches is marked in period ``gen`` of
    the active table: :func:`classify`'s answer when no batch is open or in
    flight and no write is new, with half its arrays to pass (each array
    argument costs a numba call about 0.1 us)."""
    for i in range(offsets.shape[0]):
        length = lengths[i]
        if length == 0:
            continue
        c0 = offsets[i] >> shift
        c1 = (offsets[i] + length - 1) >> shift
        if act_bits:
            if not bits_all(act_index, act_pool, n_top, c0, c1):
                return False
        elif not gens_all_at_least(act_index, act_pool, n_top, c0, c1, gen):
            return False
    return True


@njit(**_jit)
def uncovered_runs(act_index, act_pool, act_bits, gen, n_top, offsets, lengths, shift, which, out):
    """The inclusive chunk runs of the writes ``which`` (indices into
    ``offsets``/``lengths``) that are not marked in period ``gen`` of the
    active table, into ``out`` (shape (m, 2)).  Returns their number, or -1
    when ``out`` is too small (call again with a larger one).

    Only these chunks are newly dirty: the others are already durable or
    already on their way in an earlier batch, so journaling them again
    would only make later writes to them wait for a sync they do not need.
    """
    n = 0
    for j in range(which.shape[0]):
        i = which[j]
        c0 = offsets[i] >> shift
        c1 = (offsets[i] + lengths[i] - 1) >> shift
        start = -1  # first chunk of the open run, if any
        c = c0
        while c <= c1:
            seg = c >> SEG_SHIFT
            seg_lo = seg << SEG_SHIFT
            hi = min(c1, seg_lo + SEG_CHUNKS - 1)
            e = _entry(act_index, n_top, seg)
            if e < 0:
                if act_bits:
                    covered = e == FULL_ENTRY
                else:
                    covered = e != ABSENT and uniform_value(e) >= gen
                if covered:
                    if start >= 0:
                        if n == out.shape[0]:
                            return -1
                        out[n, 0] = start
                        out[n, 1] = c - 1
                        n += 1
                        start = -1
                elif start < 0:
                    start = c
            else:
                for k in range(c, hi + 1):
                    b = k - seg_lo
                    if act_bits:
                        covered = (act_pool[e, b >> 6] >> np.uint64(b & 63)) & np.uint64(1) != 0
                    else:
                        covered = act_pool[e, b] >= gen
                    if covered:
                        if start >= 0:
                            if n == out.shape[0]:
                                return -1
                            out[n, 0] = start
                            out[n, 1] = k - 1
                            n += 1
                            start = -1
                    elif start < 0:
                        start = k
            c = hi + 1
        if start >= 0:
            if n == out.shape[0]:
                return -1
            out[n, 0] = start
            out[n, 1] = c1
            n += 1
    return n
