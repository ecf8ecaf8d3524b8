"""Multi-bit history: one generation number per chunk, in RAM.

Each chunk holds the period in which it was last written; "changed since X"
is ``generation >= gen(X)`` and creating a checkpoint only bumps a counter.
The price is ``width`` bits per touched chunk in RAM; a flush writes the
pages changed since the last one.  When the counter would overflow the width, the
live generations are renumbered compactly; if even that cannot make room,
creating a checkpoint fails with a clear error instead of resetting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import max_generation
from ..storage.pages import PageWrites
from ..bitmaps.table import SegmentTable, Spans, chunk_seg_range
from .base import IMAGE_GENS_DTYPE, TAG_GENS, AfterCommit, History, HistoryImage, nothing

ARRAY_GEN = 0


class MultiBitHistory(History):
    mode = "multi-bit"

    def __init__(self, io, n_chunks: int, width: int) -> None:
        super().__init__(io, n_chunks)
        self.max_generation = max_generation(width)
        self.can_renumber = True
        self.array = SegmentTable(n_chunks, io.gens_dtype)
        # What a flush must write.  Marks only raise generations, so every
        # page changed since the last flush holds a generation >= the
        # smallest one marked since (None: nothing marked).
        self._marked_from: int | None = None

    def load(self, txn: Any, record: dict[str, Any]) -> None:
        for spans in self.io.read_table(TAG_GENS, ARRAY_GEN, txn=txn):
            self.array.load(spans)
        self.io.cache.clear()

    def mark_many(self, offsets: np.ndarray, lengths: np.ndarray, shift: int, gen: int) -> None:
        self.array.mark_many(offsets, lengths, shift, gen)
        if self._marked_from is None or gen < self._marked_from:
            self._marked_from = gen

    @property
    def current(self) -> SegmentTable:
        return self.array

    def seal(self, batch: PageWrites, current: int) -> AfterCommit:
        return nothing

    def remove(self, batch: PageWrites, prev: int | None, gen: int, nxt: int | None) -> AfterCommit:
        # Chunks of the removed period stay >= the predecessor's generation,
        # so every remaining answer is unchanged.
        return nothing

    def reset(self, batch: PageWrites) -> AfterCommit:
        batch.delete(TAG_GENS, ARRAY_GEN)

        def cleared() -> None:
            self.array.clear()
            self._flushed()

        return cleared

    def flush(self, batch: PageWrites) -> AfterCommit:
        """Write the pages changed since the last flush."""
        if self._marked_from is not None:
            changed = SegmentTable(self.n_chunks)
            changed.or_at_least(self.array.spans(), self._marked_from)
            batch.put_table(TAG_GENS, ARRAY_GEN, self.array, only=changed.spans().pages())
        return self._flushed

    def _flushed(self) -> None:
        self._marked_from = None

    def export(self, txn: Any, current: int) -> HistoryImage:
        last = self.array.with_dtype(IMAGE_GENS_DTYPE)
        active = SegmentTable(self.n_chunks)
        active.or_at_least(self.array.spans(), current)
        # Of every sealed period, only the last writer of each chunk is known.
        return HistoryImage(current, current, last, {}, active)

    def adopt(self, batch: PageWrites, image: HistoryImage, live: np.ndarray) -> AfterCommit:
        work = image.last if image.last is not None else SegmentTable(self.n_chunks, IMAGE_GENS_DTYPE)
        for gen in sorted(image.writesets):
            work.assign(image.writesets[gen].spans(), gen)
        work.assign(image.active.spans(), image.current)
        if image.current > self.max_generation:
            work.remap(live)  # the volume renumbers its checkpoints to match
        array = work.with_dtype(self.io.gens_dtype)
        batch.put_table(TAG_GENS, ARRAY_GEN, array)

        def done() -> None:
            self.array = array
            self._flushed()

        return done

    def renumber(self, batch: PageWrites, live: np.ndarray) -> AfterCommit:
        # A remapped copy: remapping in place would change RAM before the
        # transaction commits, and a failed commit would then leave RAM in
        # the new numbering and the store in the old one.
        array = self.array.with_dtype(self.array.row_dtype)
        array.remap(live)
        batch.delete(TAG_GENS, ARRAY_GEN)
        batch.put_table(TAG_GENS, ARRAY_GEN, array)

        def done() -> None:
            self.array = array
            self._flushed()

        return done

    def changed(self, since: int, until: int | None, c_lo: int, c_hi: int) -> tuple[Spans, bool]:
        region = self.array.spans(*chunk_seg_range(c_lo, c_hi))
        acc = SegmentTable(self.n_chunks)
        acc.or_at_least(region, since)
        exact = True
        if until is not None:
            # Chunks rewritten since ``until`` hide whether they were also
            # written before it: then the answer is a superset.
            probe = SegmentTable(self.n_chunks)
            probe.or_at_least(region, until)
            exact = probe.is_empty()
        return acc.spans(*chunk_seg_range(c_lo, c_hi)), exact

    def ram_bytes(self) -> int:
        return self.array.nbytes
