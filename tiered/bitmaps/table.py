"""Sparse segmented tables in RAM: the growth policy around the kernels.

A :class:`SegmentTable` covers ``n_chunks`` chunks with either one bit per
chunk (a bitmap) or one generation number per chunk.  Memory grows with the
segments that hold something, not with the volume: a 1 PiB volume at 4 KiB
granularity costs 256 KiB of directory until it is written to.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from . import kernels as K
from . import span_kernels as S
from ..config import (
    PAGE_CHUNKS,
    PAGE_SEGMENTS,
    PAGE_SHIFT,
    SEG_CHUNKS,
    SEG_SHIFT,
    SEG_WORDS,
)


class Spans(NamedTuple):
    """A set of segments in ascending order (see :mod:`tiered.bitmaps.kernels`)."""

    first: np.ndarray
    count: np.ndarray
    ref: np.ndarray
    rows: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.first.nbytes + self.count.nbytes + self.ref.nbytes + self.rows.nbytes

    def __len__(self) -> int:
        return len(self.first)

    def pages(self) -> np.ndarray:
        """The pages this span list touches, ascending."""
        return np.unique(self.first >> PAGE_SHIFT)

    def page_slice(self, page: int) -> "Spans":
        """The spans of one page (rows are shared, not copied)."""
        lo, hi = np.searchsorted(self.first, [page << PAGE_SHIFT, (page + 1) << PAGE_SHIFT])
        return Spans(self.first[lo:hi], self.count[lo:hi], self.ref[lo:hi], self.rows)

    def runs(self, c_lo: int, c_hi: int, shift: int = 0, lo: int | None = None, hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Runs of set chunks (bitmap spans only) inside chunks [c_lo, c_hi),
        as uint64 (offsets, lengths) in units of ``2**shift`` per chunk,
        clipped to [lo, hi) in those units (default: the chunk range)."""
        lo = c_lo << shift if lo is None else lo
        hi = c_hi << shift if hi is None else hi
        n = S.count_runs(self.first, self.count, self.ref, self.rows, c_lo, c_hi)
        offsets, lengths = np.empty(n, np.uint64), np.empty(n, np.uint64)
        S.span_runs(self.first, self.count, self.ref, self.rows, c_lo, c_hi, shift, lo, hi, offsets, lengths)
        return offsets, lengths

    def count_bits(self) -> int:
        return int(S.count_span_bits(self.first, self.count, self.ref, self.rows))


class SegmentTable:
    """A bitmap (``dtype=None``) or generation array over ``n_chunks`` chunks."""

    def __init__(self, n_chunks: int, dtype: np.dtype | type | None = None) -> None:
        self.n_chunks = n_chunks
        self.n_segments = -(-n_chunks // SEG_CHUNKS)
        self.n_top = -(-self.n_segments // PAGE_SEGMENTS)
        self.is_bits = dtype is None
        if self.is_bits:
            self.row_dtype = np.dtype(np.uint64)
            self.row_len = SEG_WORDS
        else:
            self.row_dtype = np.dtype(dtype)
            self.row_len = SEG_CHUNKS
        self.clear()

    # -- memory ---------------------------------------------------------

    def clear(self) -> None:
        """Forget everything and give the memory back."""
        self.index = np.empty(K.DIR_HEADER + self.n_top, np.int32)
        self.index[: K.DIR_HEADER] = 0
        self.index[K.DIR_HEADER :] = K.ABSENT
        self.pool = np.empty((0, self.row_len), self.row_dtype)

    def reset(self) -> None:
        """Forget everything but keep about as much room as was used.

        The next period of a steady workload then needs no growth, and room
        beyond twice what was used is given back.
        """
        used_rows = self.rows_used
        used_pages = int(self.index[K.PAGES_USED])
        if len(self.pool) > 2 * max(used_rows, 64):
            self.pool = np.empty((used_rows, self.row_len), self.row_dtype)
        self.index = np.resize(self.index, K.DIR_HEADER + self.n_top + used_pages * PAGE_SEGMENTS)
        self.index[: K.DIR_HEADER] = 0
        self.index[K.PAGES_CAP] = used_pages
        self.index[K.SLOTS_CAP] = len(self.pool)
        self.index[K.DIR_HEADER : K.DIR_HEADER + self.n_top] = K.ABSENT

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.pool.nbytes

    @property
    def rows_used(self) -> int:
        return int(self.index[K.SLOTS_USED])

    def is_empty(self) -> bool:
        return not np.any(self.index[K.DIR_HEADER : K.DIR_HEADER + self.n_top] != K.ABSENT)

    def _grow(self, force: bool = False, min_rows: int = 0) -> None:
        """Make room for at least one more page and one more row (``force``:
        grow both even if not full; ``min_rows``: to at least that many rows
        in one step)."""
        idx = self.index
        pages_cap = int(idx[K.PAGES_CAP])
        if (force or idx[K.PAGES_USED] == pages_cap) and pages_cap < self.n_top:
            new_cap = min(self.n_top, max(4, 2 * pages_cap))
            grown = np.empty(K.DIR_HEADER + self.n_top + new_cap * PAGE_SEGMENTS, np.int32)
            grown[: len(idx)] = idx
            grown[K.PAGES_CAP] = new_cap
            self.index = idx = grown
        slots_cap = int(idx[K.SLOTS_CAP])
        if force or idx[K.SLOTS_USED] == slots_cap:
            # Doubling: few Python round trips, and untouched capacity costs
            # address space, not resident memory.
            new_cap = max(64, 2 * slots_cap, min_rows)
            pool = np.empty((new_cap, self.row_len), self.row_dtype)
            pool[:slots_cap] = self.pool
            self.pool = pool
            idx[K.SLOTS_CAP] = new_cap

    def reserve(self, rows: int, pages: int) -> None:
        """Make room for ``rows`` more rows and ``pages`` more pages."""
        while self.index[K.SLOTS_CAP] - self.index[K.SLOTS_USED] < rows or (
            self.index[K.PAGES_CAP] - self.index[K.PAGES_USED] < min(pages, self.n_top - self.index[K.PAGES_USED])
        ):
            self._grow(force=True, min_rows=int(self.index[K.SLOTS_USED]) + rows)

    def _until_done(self, step: Callable[[int], int], total: int) -> None:
        """Run a resumable kernel, growing whenever it stops short."""
        done = step(0)
        while done < total:
            self._grow()
            done = step(done)

    # -- writes ---------------------------------------------------------

    def mark_many(self, offsets: np.ndarray, lengths: np.ndarray, shift: int, value: int) -> None:
        """Mark validated int64 byte ranges (``value`` is 1 for bitmaps)."""
        if self.is_bits:
            step = lambda start: K.mark_bits(self.index, self.pool, self.n_top, offsets, lengths, start, shift)
        else:
            step = lambda start: K.mark_gens(
                self.index, self.pool, self.n_top, offsets, lengths, start, shift, value
            )
        self._until_done(step, len(offsets))

    def mark(self, offset: int, length: int, shift: int, value: int) -> None:
        """Mark one validated byte range (a convenience: batches are the fast path)."""
        self.mark_many(np.array([offset], np.int64), np.array([length], np.int64), shift, value)

    def set_chunks(self, c0: int, c1: int, value: int) -> None:
        """Give chunks c0..c1 (inclusive) the value."""
        while not K.set_range(self.index, self.pool, self.n_top, c0, c1, value, self.is_bits):
            self._grow()

    def or_spans(self, spans: Spans) -> None:
        """OR a bitmap span list into this bitmap."""
        self._until_done(
            lambda start: S.or_spans(self.index, self.pool, self.n_top, *spans, start), len(spans)
        )

    def or_at_least(self, spans: Spans, gen: int, below: int = K.NO_LIMIT) -> None:
        """OR into this bitmap the chunks of a generation span list with
        ``gen <= generation < below``."""
        self._until_done(
            lambda start: S.threshold_spans(self.index, self.pool, self.n_top, *spans, gen, below, start),
            len(spans),
        )

    def assign(self, spans: Spans, gen: int) -> None:
        """Set to gen, in this generation table, every chunk of a bitmap span list."""
        self._until_done(
            lambda start: S.assign_spans(self.index, self.pool, self.n_top, *spans, gen, start),
            len(spans),
        )

    def load(self, spans: Spans) -> None:
        """Copy a span list of the same kind into an empty part of this table."""
        self._until_done(
            lambda start: S.load_spans(self.index, self.pool, self.n_top, *spans, start, self.is_bits),
            len(spans),
        )

    def with_dtype(self, dtype: np.dtype | type) -> "SegmentTable":
        """A copy of this generation table whose rows have another dtype
        (the values must fit it)."""
        spans = self.spans()
        copy = SegmentTable(self.n_chunks, dtype)
        copy.load(Spans(spans.first, spans.count, spans.ref, spans.rows.astype(dtype)))
        return copy

    def remap(self, live: np.ndarray) -> None:
        """Renumber generations: v becomes the count of live generations <= v."""
        S.remap_generations(self.index, self.pool, self.n_top, live.astype(np.int64))

    # -- reads ----------------------------------------------------------

    def spans(self, seg_lo: int = 0, seg_hi: int | None = None) -> Spans:
        """The non-empty segments in [seg_lo, seg_hi); rows are shared."""
        if seg_hi is None:
            seg_hi = self.n_segments
        first, count, ref = S.table_spans(self.index, self.n_top, seg_lo, seg_hi)
        return Spans(first, count, ref, self.pool)


def chunk_page_range(c_lo: int, c_hi: int) -> range:
    """Pages that overlap chunks [c_lo, c_hi)."""
    if c_hi <= c_lo:
        return range(0)
    return range(c_lo // PAGE_CHUNKS, (c_hi - 1) // PAGE_CHUNKS + 1)


def chunk_seg_range(c_lo: int, c_hi: int) -> tuple[int, int]:
    """Segments [lo, hi) that overlap chunks [c_lo, c_hi)."""
    return c_lo >> SEG_SHIFT, (c_hi + SEG_CHUNKS - 1) >> SEG_SHIFT


def check_writes(offsets: np.ndarray, lengths: np.ndarray, size: int) -> tuple[int, bool]:
    """Validate a batch of writes in one pass.

    ``offsets`` and ``lengths`` are int64 arrays of one shape, in bytes.
    Returns (index of the first write outside ``[0, size)``, or -1; whether
    any write is non-empty).
    """
    return K.check_writes(offsets, lengths, size)
