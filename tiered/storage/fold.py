"""Rewriting one stored generation page, a share of its segments at a time.

A hybrid fold gives every chunk written in the folded periods the last of
those periods in the generation array ``G``.  Decoding a whole page of
``G`` into a table, assigning the writesets and encoding it back costs
about 15 ms per page of 4 Mi chunks, most of it cache misses on the
16 MiB decoded page.  :class:`PageFold` instead streams the page: for each
segment it decodes the stored record into one scratch row (which stays in
the L1 cache), applies the writesets' bits in ascending period order and
encodes the row at the end of an output buffer.  The writesets are read
as stored, record by record, never decoded into bitmaps.  Any number of segments
can be done per call, so a fold step is bounded by segments, not by page,
and the stored page (the format is unchanged) is written once its last
segment is done.

Between calls the fold holds the stored page's payload, the writesets'
stored payloads for that page and the output so far.  A call never changes that
state itself: :meth:`PageFold.advance` returns the new position and
:meth:`PageFold.commit` adopts it once the transaction that used the
result has committed.  A transaction that is retried or fails therefore
redoes the same segments from the same position, and rewrites the same
bytes of the output buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from . import codec
from ..errors import CorruptionError
from ..bitmaps.kernels import _jit, _popcount
from ..bitmaps.table import SegmentTable
from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_WORDS
from .page_kernels import (
    KIND_FULL,
    KIND_GRAW,
    KIND_POS,
    KIND_RAW,
    KIND_RUNS,
    KIND_UNIFORM,
    _get_varint,
    _page_records,
    _put_record_header,
    _put_varint,
    _record_header,
)
from .gen_page_kernels import _get_gen_row, _max_generation, _put_gen_row

# A stored page is read as a stream of records, one cursor per page: row 0
# of the cursor array for the generation page, row 1 + k for writeset k.
POS = 0  # next byte to read
LEFT = 1  # records not read yet
PREV = 2  # end of the last record read (the base of the next header)
FIRST = 3  # the record read last covers segments [FIRST, END)
END = 4
KIND = 5  # its kind
VALUE = 6  # a uniform generation record: the generation; a row: where its body starts
CURSOR_LEN = 7

# The output position (one small array).
SEG = 0  # next segment to rewrite
OUT_POS = 1  # end of the output so far
OUT_N = 2  # records written
OUT_PREV = 3  # end of the last record written
SAME = 4  # the generation of every record so far if all are one uniform value; -2 none yet, -1 no
OUT_LEN = 5

# Room left before the output's records for the width byte and the record
# count, which are known only at the end.
RESERVE = 8
ROW_ROOM = 24 + 4 * SEG_CHUNKS  # a record header and the largest body, with slack

ABSENT, UNIFORM, ROW = 0, 1, 2


@njit(**_jit)
def fold_start(src, ws_buf, ws_bounds, page, cursors, pos):
    """Position a fold at the first segment of ``page``; False if a stored
    record count is malformed.  An empty ``src``: the page is not stored."""
    base = np.int64(page) << PAGE_SHIFT
    cursors[:, :] = 0
    for k in range(cursors.shape[0]):
        cursors[k, PREV] = base
        cursors[k, FIRST] = base
        cursors[k, END] = base
        if k == 0:
            if src.shape[0] == 0:
                continue
            n, p = _page_records(src)
        else:
            n, p = _page_records(ws_buf[ws_bounds[k - 1] : ws_bounds[k]])
        if p < 0:
            return False
        cursors[k, POS] = p
        cursors[k, LEFT] = n
    pos[SEG] = base
    pos[OUT_POS] = RESERVE
    pos[OUT_N] = 0
    pos[OUT_PREV] = base
    pos[SAME] = -2
    return True


@njit(inline="always", **_jit)
def _next_record(buf, cursors, k, s, page_end, maxval):
    """Read stream k's next record header once its current record ends at or
    before segment ``s``; False if malformed.  A row's body is read when its
    segment comes."""
    if cursors[k, END] > s or cursors[k, LEFT] == 0:
        return True
    first, c, kind, q = _record_header(buf, cursors[k, POS], cursors[k, PREV], page_end)
    if q < 0:
        return False
    cursors[k, LEFT] -= 1
    cursors[k, PREV] = first + c
    cursors[k, FIRST] = first
    cursors[k, END] = first + c
    cursors[k, KIND] = kind
    if kind == KIND_UNIFORM and k == 0:
        v, q = _get_varint(buf, q, buf.shape[0])
        if q < 0 or v > maxval:
            return False
        cursors[k, VALUE] = v
        cursors[k, POS] = q
    elif kind == KIND_FULL and k > 0:
        cursors[k, POS] = q
    elif c != 1:
        return False
    else:
        cursors[k, VALUE] = q
    return True


@njit(inline="always", **_jit)
def _assign_bit_body(buf, p, kind, row, g):
    """Set to ``g`` the chunks of a bitmap record body (positions, runs or
    raw, as :func:`decode_bit_spans` reads them) in a generation row;
    returns the position after it, -1 if malformed."""
    end = buf.shape[0]
    if kind == KIND_POS:
        k, p = _get_varint(buf, p, end)
        prev = -1
        for _ in range(k):
            if p < 0:
                return -1
            d, p = _get_varint(buf, p, end)
            prev = prev + d + 1
            if prev >= SEG_CHUNKS:
                return -1
            row[prev] = g
        return p
    if kind == KIND_RUNS:
        k, p = _get_varint(buf, p, end)
        run_end = 0
        for _ in range(k):
            if p < 0:
                return -1
            gap, p = _get_varint(buf, p, end)
            if p < 0:
                return -1
            ln, p = _get_varint(buf, p, end)
            a = run_end + gap
            run_end = a + ln + 1
            if run_end > SEG_CHUNKS:
                return -1
            for j in range(a, run_end):
                row[j] = g
        return p
    if kind == KIND_RAW:
        if p + 8 * SEG_WORDS > end:
            return -1
        for w in range(SEG_WORDS):
            word = np.uint64(0)
            for b in range(8):
                word |= np.uint64(buf[p + b]) << np.uint64(8 * b)
            p += 8
            while word:
                low = word & (~word + np.uint64(1))
                row[w * 64 + _popcount(low - np.uint64(1))] = g
                word ^= low
        return p
    return -1


@njit(**_jit)
def fold_segments(src, ws_buf, ws_bounds, ws_gen, page, seg_stop, page_stop, cursors, pos, row, out):
    """Rewrite segments ``pos[SEG]`` .. ``seg_stop`` - 1 of a generation
    page: each one's stored value, then the chunks of each writeset k (its
    stored payload is ``ws_buf[ws_bounds[k]:ws_bounds[k + 1]]``, ascending
    ``ws_gen``) set to ``ws_gen[k]``; encoded at ``pos[OUT_POS]`` in ``out``.

    ``page_stop`` is the page's last segment + 1 in the volume.  Returns 1
    when the page is complete (its records end at ``pos[OUT_POS]``), 0 when
    segments remain, -1 when a stored page is malformed.
    """
    width = row.itemsize
    maxval = _max_generation(width)
    page_base = np.int64(page) << PAGE_SHIFT
    page_end = page_base + PAGE_SEGMENTS
    n_ws = ws_gen.shape[0]
    p = pos[OUT_POS]
    s = pos[SEG]
    while s < seg_stop:
        what = ABSENT
        value = np.int64(0)
        if not _next_record(src, cursors, 0, s, page_end, maxval):
            return -1
        if cursors[0, FIRST] <= s < cursors[0, END]:
            kind = cursors[0, KIND]
            if kind == KIND_UNIFORM:
                what = UNIFORM
                value = cursors[0, VALUE]
            else:
                if kind != KIND_GRAW:
                    row[:] = 0  # sparse and packed bodies hold only the non-zero chunks
                q = _get_gen_row(src, cursors[0, VALUE], src.shape[0], kind, row, width, maxval)
                if q < 0:
                    return -1
                cursors[0, POS] = q
                what = ROW
        # The writesets, oldest first, so a chunk keeps the last period
        # that wrote it.
        for k in range(n_ws):
            buf = ws_buf[ws_bounds[k] : ws_bounds[k + 1]]
            if not _next_record(buf, cursors, k + 1, s, page_end, maxval):
                return -1
            if not cursors[k + 1, FIRST] <= s < cursors[k + 1, END]:
                continue
            g = ws_gen[k]
            if cursors[k + 1, KIND] == KIND_FULL:
                what = UNIFORM
                value = g
                continue
            if what != ROW:
                fill = value if what == UNIFORM else 0
                for j in range(SEG_CHUNKS):
                    row[j] = fill
                what = ROW
            q = _assign_bit_body(buf, cursors[k + 1, VALUE], cursors[k + 1, KIND], row, g)
            if q < 0:
                return -1
            cursors[k + 1, POS] = q
        if what == ROW or (what == UNIFORM and value != 0):
            p = _put_record_header(out, p, s - pos[OUT_PREV], 1)
            kind_at = p
            if what == ROW:
                p = _put_gen_row(out, p, row, width)
                value = np.int64(row[0])  # what the record holds if it came out uniform
            else:
                out[p] = KIND_UNIFORM
                p = _put_varint(out, p + 1, value)
            # Whether every segment so far holds one and the same generation.
            if out[kind_at] == KIND_UNIFORM and value > 0 and (pos[SAME] == -2 or pos[SAME] == value):
                pos[SAME] = value
            else:
                pos[SAME] = -1
            pos[OUT_PREV] = s + 1
            pos[OUT_N] += 1
        s += 1
    pos[SEG] = s
    pos[OUT_POS] = p
    if s < page_stop:
        return 0
    # Every stored record must have been read, to its last byte.
    if cursors[0, LEFT] != 0 or (src.shape[0] and cursors[0, POS] != src.shape[0]):
        return -1
    for k in range(n_ws):
        if cursors[k + 1, LEFT] != 0 or cursors[k + 1, POS] != ws_bounds[k + 1] - ws_bounds[k]:
            return -1
    if pos[SAME] > 0 and s == page_end and pos[OUT_N] == PAGE_SEGMENTS:
        # Every segment holds the same generation: one record for the page,
        # as the encoder writes a uniform page.
        p = _put_record_header(out, RESERVE, 0, PAGE_SEGMENTS)
        out[p] = KIND_UNIFORM
        pos[OUT_POS] = _put_varint(out, p + 1, pos[SAME])
        pos[OUT_N] = 1
    return 1


@njit(**_jit)
def fold_payload_start(out, n_records, width):
    """Write the width byte and the record count just before the records
    (at RESERVE); returns where the payload starts."""
    tmp = np.empty(10, np.uint8)
    size = _put_varint(tmp, 0, n_records)
    start = RESERVE - size - 1
    out[start] = width
    for i in range(size):
        out[start + 1 + i] = tmp[i]
    return start


class FoldStep(NamedTuple):
    """The outcome of :meth:`PageFold.advance`, adopted by :meth:`PageFold.commit`."""

    cursors: np.ndarray
    pos: np.ndarray
    #: Segments rewritten by this step.
    segments: int
    #: The page's new payload once its last segment is done, else None.
    payload: bytes | None


class PageFold:
    """One page of a generation table being rewritten with the writesets of
    some periods applied, a share of its segments per call.

    ``payload`` is the stored generation page's payload past its width byte
    (empty if the page is not stored); ``writesets`` holds (generation,
    checked payload of its bitmap page), ascending.  ``upto`` names the
    fold, for the caller.
    """

    def __init__(self, page: int, upto: int, payload: np.ndarray, writesets: list[tuple[int, np.ndarray]],
                 n_segments: int, dtype: np.dtype, what: str) -> None:
        self.page = page
        self.upto = upto
        self.gens = [g for g, _ in writesets]
        self.page_stop = min((page + 1) << PAGE_SHIFT, n_segments)
        self._what = what
        self._src = payload
        # The writesets' payloads, one after the other, so one kernel call
        # walks them all (they are small: a few bytes per written chunk).
        sizes = [len(b) for _, b in writesets]
        self._ws_bounds = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=self._ws_bounds[1:])
        self._ws_buf = np.concatenate([b for _, b in writesets]) if writesets else np.empty(0, np.uint8)
        self._ws_gen = np.array(self.gens, np.int64)
        self._cursors = np.empty((1 + len(writesets), CURSOR_LEN), np.int64)
        self._pos = np.empty(OUT_LEN, np.int64)
        if not fold_start(self._src, self._ws_buf, self._ws_bounds, page, self._cursors, self._pos):
            raise CorruptionError(f"{what}: malformed page")
        self._row = np.empty(SEG_CHUNKS, dtype)
        # Room for the largest encoding of every segment; only what is
        # written gets memory.
        self._out = np.empty(RESERVE + PAGE_SEGMENTS * ROW_ROOM, np.uint8)

    @property
    def segments_left(self) -> int:
        return self.page_stop - int(self._pos[SEG])

    @property
    def nbytes(self) -> int:
        """Memory held between steps: the stored pages' bytes, the output so
        far (the rest of its buffer is address space only) and the scratch."""
        return (self._src.nbytes + self._ws_buf.nbytes + int(self._pos[OUT_POS]) + self._row.nbytes
                + self._cursors.nbytes)

    def advance(self, segments: int | None = None) -> FoldStep:
        """Rewrite the next ``segments`` segments (None: the rest of the
        page), from the last committed position."""
        cursors = self._cursors.copy()
        pos = self._pos.copy()
        start = int(pos[SEG])
        stop = self.page_stop if segments is None else min(self.page_stop, start + segments)
        status = fold_segments(self._src, self._ws_buf, self._ws_bounds, self._ws_gen, self.page, stop,
                               self.page_stop, cursors, pos, self._row, self._out)
        if status < 0:
            raise CorruptionError(f"{self._what}: malformed page")
        payload = None
        if status == 1:
            begin = fold_payload_start(self._out, pos[OUT_N], self._row.itemsize)
            payload = self._out[begin : pos[OUT_POS]].tobytes()
        return FoldStep(cursors, pos, stop - start, payload)

    def commit(self, step: FoldStep) -> None:
        """Adopt a step whose result has been committed."""
        self._cursors = step.cursors
        self._pos = step.pos


def warm_up(dtype: np.dtype) -> None:
    """Fold a one-chunk page, so that numba loads the fold's kernels (from
    its on-disk cache, or compiles them) now rather than in the first
    checkpoint that folds: a writer calls this when it opens a volume."""
    bits = SegmentTable(SEG_CHUNKS)
    bits.set_chunks(0, 0, 1)
    key = b"warm-up"
    value = codec.encode_bits_page(bits.spans(), 0, key)
    payload = codec.bits_payload(value, 0, "warm-up", key, codec.FORMAT_VERSION, 1)
    # The argument types are those of a real fold: stored payloads are
    # read-only views of bytes.
    PageFold(0, 0, np.frombuffer(b"", np.uint8), [(1, payload)], 1, dtype, "warm-up").advance()
