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

from ..pages import Batch
from ..segments import SegmentTable, Spans
from ..storage import TAG_ACTIVE, TAG_WRITESET
from .base import AfterCommit, History, nothing

# The flush snapshot of the active writeset has no period of its own.
SNAPSHOT_GEN = 0


class OneBitHistory(History):
    mode = "one-bit"
    max_generation = (1 << 63) - 1
    seal_flushes = True

    def __init__(self, io, n_chunks: int) -> None:
        super().__init__(io, n_chunks)
        self.active = SegmentTable(n_chunks)

    def load(self, txn: Any, record: dict[str, Any]) -> None:
        for spans in self.io.read_table(TAG_ACTIVE, SNAPSHOT_GEN, txn=txn):
            self.active.load(spans)
        # Snapshot pages are read once at open; keeping them cached would
        # only hold a second copy of the active writeset.
        self.io.cache.clear()

    def mark_many(self, offsets: np.ndarray, lengths: np.ndarray, shift: int, gen: int) -> None:
        self.active.mark_many(offsets, lengths, shift, 1)

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

    def seal(self, batch: Batch, current: int) -> AfterCommit:
        batch.put_table(TAG_WRITESET, current, self.active)
        batch.delete(TAG_ACTIVE, SNAPSHOT_GEN)
        return self.active.reset

    def remove(self, batch: Batch, prev: int | None, gen: int, nxt: int | None) -> AfterCommit:
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

    def _merge_into_predecessor(self, batch: Batch, prev: int, gens: list[int]) -> AfterCommit:
        if not gens:
            return nothing
        merged = self._merged([prev, *gens], batch.txn)
        for g in gens:
            batch.delete(TAG_WRITESET, g)
        batch.delete(TAG_WRITESET, prev)
        batch.put_table(TAG_WRITESET, prev, merged)
        return nothing

    def reset(self, batch: Batch) -> AfterCommit:
        for tag, gen in list(self.io.catalog):
            batch.delete(tag, gen)
        return self.active.clear

    def flush(self, batch: Batch) -> AfterCommit:
        batch.delete(TAG_ACTIVE, SNAPSHOT_GEN)
        batch.put_table(TAG_ACTIVE, SNAPSHOT_GEN, self.active)
        return nothing

    # -- queries --------------------------------------------------------

    def changed(self, since: int, until: int | None, c_lo: int, c_hi: int) -> tuple[Spans, bool]:
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

