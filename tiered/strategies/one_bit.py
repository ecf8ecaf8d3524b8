"""One-bit history: a sealed bitmap per period, the active one in RAM.

The active writeset is the only structure on the write path.  A checkpoint
seals it as the writeset ``W[g]`` of the period it closes.  "Changed since
X" ORs the writesets of every period from X's on, plus the active one.
Removing a checkpoint ORs its writesets into its predecessor's (or drops
them if it was the oldest), so every other answer stays exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..storage.pages import PageWrites
from ..bitmaps.table import SegmentTable, Spans
from .base import IMAGE_GENS_DTYPE, TAG_ACTIVE, TAG_WRITESET, AfterCommit, History, HistoryImage, nothing

# The flush snapshot of the active writeset has no period of its own.
SNAPSHOT_GEN = 0


class OneBitHistory(History):
    mode = "one-bit"
    max_generation = (1 << 63) - 1
    seal_flushes = True

    def __init__(self, io, n_chunks: int) -> None:
        super().__init__(io, n_chunks)
        self.active = SegmentTable(n_chunks)
        #: Writesets of periods before this one hold only the chunks each
        #: period wrote last (the volume was converted from a strategy that
        #: knew no more), so an interval starting before it is answered as
        #: "changed since" its start.  0: every writeset is exact.
        self.exact_from = 0

    def load(self, txn: Any, record: dict[str, Any]) -> None:
        for spans in self.io.read_table(TAG_ACTIVE, SNAPSHOT_GEN, txn=txn):
            self.active.load(spans)
        # Snapshot pages are read once at open; keeping them cached would
        # only hold a second copy of the active writeset.
        self.io.cache.clear()
        self.exact_from = int(record.get("exact_from", 0))

    def record_fields(self) -> dict[str, Any]:
        return {"exact_from": self.exact_from}

    def mark_many(self, offsets: np.ndarray, lengths: np.ndarray, shift: int, gen: int) -> None:
        self.active.mark_many(offsets, lengths, shift, 1)

    @property
    def current(self) -> SegmentTable:
        return self.active

    # -- sealed writesets ------------------------------------------------

    def writesets(self, lo: int, hi: int | None = None) -> list[int]:
        """Generations in [lo, hi) that have a stored writeset."""
        return self.io.gens(TAG_WRITESET, lo, hi)

    def _merged(self, gens: list[int], txn: Any, base: SegmentTable | None = None) -> SegmentTable:
        acc = SegmentTable(self.n_chunks)
        if base is not None:
            acc.or_spans(base.spans())
        self._union_writesets(acc, gens, 0, self.n_chunks, txn)
        return acc

    # -- changes of history -----------------------------------------------

    def seal(self, batch: PageWrites, current: int) -> AfterCommit:
        batch.put_table(TAG_WRITESET, current, self.active)
        batch.delete(TAG_ACTIVE, SNAPSHOT_GEN)
        return self.active.reset

    def remove(self, batch: PageWrites, prev: int | None, gen: int, nxt: int | None) -> AfterCommit:
        if nxt is None:
            # The newest checkpoint's writeset is the active one: take the
            # predecessor's writesets into it, so the predecessor becomes
            # the newest with a single active writeset again.
            gens = self.writesets(prev, gen)
            if not gens:
                return nothing
            merged = self._merged(gens, batch.txn, base=self.active)
            for g in gens:
                batch.delete(TAG_WRITESET, g)
            batch.delete(TAG_ACTIVE, SNAPSHOT_GEN)
            batch.put_table(TAG_ACTIVE, SNAPSHOT_GEN, merged)

            def adopt() -> None:
                self.active = merged

            return adopt
        mine = self.writesets(gen, nxt)
        if prev is None:
            for g in mine:
                batch.delete(TAG_WRITESET, g)
            return nothing
        return self._merge_into_predecessor(batch, prev, mine)

    def _merge_into_predecessor(self, batch: PageWrites, prev: int, gens: list[int]) -> AfterCommit:
        if not gens:
            return nothing
        merged = self._merged([prev, *gens], batch.txn)
        for g in gens:
            batch.delete(TAG_WRITESET, g)
        batch.delete(TAG_WRITESET, prev)
        batch.put_table(TAG_WRITESET, prev, merged)
        return nothing

    def reset(self, batch: PageWrites) -> AfterCommit:
        for tag, gen in list(self.io.catalog):
            batch.delete(tag, gen)
        return self.active.clear

    def flush(self, batch: PageWrites) -> AfterCommit:
        batch.delete(TAG_ACTIVE, SNAPSHOT_GEN)
        batch.put_table(TAG_ACTIVE, SNAPSHOT_GEN, self.active)
        return nothing

    # -- conversion -------------------------------------------------------

    def export(self, txn: Any, current: int) -> HistoryImage:
        return self._image(txn, current, self.exact_from, None)

    def _image(self, txn: Any, current: int, exact_from: int, last: SegmentTable | None) -> HistoryImage:
        """An image of the stored writesets on top of ``last`` (the
        generation array of the periods before ``exact_from``, if any)."""
        if exact_from and last is None:
            last = SegmentTable(self.n_chunks, IMAGE_GENS_DTYPE)
        writesets: dict[int, SegmentTable] = {}
        for gen in self.writesets(0):
            table = SegmentTable(self.n_chunks)
            for spans in self.io.read_table(TAG_WRITESET, gen, txn=txn, keep=False):
                table.load(spans)
            if last is not None:
                last.assign(table.spans(), gen)
            if gen >= exact_from:
                writesets[gen] = table
        if last is not None:
            last.assign(self.active.spans(), current)
        return HistoryImage(current, exact_from, last, writesets, self.active)

    def adopt(self, batch: PageWrites, image: HistoryImage, live: np.ndarray) -> AfterCommit:
        # Live intervals that start before exact_from get one writeset each:
        # the chunks they wrote last.  Intervals starting there need the
        # "changed since" answer, so exact_from stays while any is live.
        bounds = [int(g) for g in live if g < image.exact_from]
        exact_from = image.exact_from if bounds else 0
        if image.last is not None and bounds:
            last = image.last.spans()
            for lo, hi in zip(bounds, bounds[1:] + [image.exact_from]):
                band = SegmentTable(self.n_chunks)
                band.or_at_least(last, lo, hi)
                batch.put_table(TAG_WRITESET, lo, band)
        for gen, table in image.writesets.items():
            if len(live) and gen >= live[0]:
                batch.put_table(TAG_WRITESET, gen, table)
        batch.put_table(TAG_ACTIVE, SNAPSHOT_GEN, image.active)
        batch.record["exact_from"] = exact_from

        def done() -> None:
            self.active = image.active
            self.exact_from = exact_from

        return done

    # -- queries --------------------------------------------------------

    def changed(self, since: int, until: int | None, c_lo: int, c_hi: int) -> tuple[Spans, bool]:
        if until is not None and since < self.exact_from:
            # A chunk rewritten from ``until`` on may also have been written
            # in [since, until) without any writeset showing it: answer
            # everything since, which is exact if nothing was written later.
            spans, _ = self.changed(since, None, c_lo, c_hi)
            later, _ = self.changed(until, None, c_lo, c_hi)
            return spans, not len(later.runs(c_lo, c_hi)[0])
        gens = self.writesets(since, until)
        if not gens and until is None:
            return self._region_spans(self.active, c_lo, c_hi), True
        acc = SegmentTable(self.n_chunks)
        self._union_writesets(acc, gens, c_lo, c_hi)
        if until is None:
            acc.or_spans(self._region_spans(self.active, c_lo, c_hi))
        return self._region_spans(acc, c_lo, c_hi), True

    def ram_bytes(self) -> int:
        return self.active.nbytes

