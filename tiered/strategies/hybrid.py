"""Hybrid history: recent writesets one-bit, older ones folded into an
on-disk generation array.

RAM holds only the active writeset (one bit per touched chunk).  Sealed
writesets stay one-bit in LMDB until more than ``2 * recent`` of them pile
up; then the oldest are folded into the generation array ``G`` (each chunk:
the last folded period that wrote it), leaving ``recent``.  Folding reads
and rewrites only the pages the folded writesets touch, so it costs time in
proportion to the dirty chunks, not to the volume, and it is spread over
the next ``recent`` checkpoints, a share of its pages each.

"Changed since X" is ``G >= gen(X)`` (when X is folded) plus at most
``3 * recent`` writesets plus the active one: about the same for any X.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..storage.pages import PageWrites
from ..bitmaps.table import SegmentTable, Spans, chunk_page_range
from ..config import MAX_GEN_32, PAGE_SEGMENTS, SEG_CHUNKS
from ..storage.fold import PageFold, warm_up
from .base import TAG_ACTIVE, TAG_GENS, TAG_WRITESET, AfterCommit, HistoryImage, nothing
from .one_bit import SNAPSHOT_GEN, OneBitHistory

# The generation array is a single table; its pages are keyed by this gen.
ARRAY_GEN = 0
GENS_DTYPE = np.dtype(np.uint32)


class HybridHistory(OneBitHistory):
    mode = "hybrid"
    max_generation = MAX_GEN_32

    def __init__(self, io, n_chunks: int, recent: int) -> None:
        super().__init__(io, n_chunks)
        self.recent = recent
        #: Highest period folded into the generation array (0: none).
        self.folded_through = 0
        #: A fold in progress, spread over checkpoints: every writeset of a
        #: period <= fold_upto is being folded, pages below fold_next are
        #: done.  0: none.
        self.fold_upto = 0
        self.fold_next = 0
        #: The page of the fold being rewritten, in RAM only (None: none, or
        #: start the page at fold_next again).
        self._page_fold: PageFold | None = None
        #: Work counters of the folds run by this process (committed or
        #: not): segments rewritten and pages written.  Benchmarks read them.
        self.folded_segments = 0
        self.folded_pages = 0
        self.n_segments = -(-n_chunks // SEG_CHUNKS)

    def load(self, txn: Any, record: dict[str, Any]) -> None:
        super().load(txn, record)
        self.folded_through = int(record.get("folded_through", 0))
        self.fold_upto = int(record.get("fold_upto", 0))
        self.fold_next = int(record.get("fold_next", 0))
        if not self.io.storage.readonly:
            warm_up(GENS_DTYPE)

    def record_fields(self) -> dict[str, Any]:
        return {
            **super().record_fields(),
            "folded_through": self.folded_through,
            "fold_upto": self.fold_upto,
            "fold_next": self.fold_next,
        }

    # -- folding ------------------------------------------------------------

    @property
    def unsettled(self) -> bool:
        return bool(self.fold_upto)

    def settle_before_remove(self, prev: int | None, nxt: int | None) -> bool:
        # Merging a writeset the fold has not seen (a period past fold_upto)
        # into one it is folding would leave those writes out of the pages
        # already done.  Other removals are safe mid-fold: merging writesets
        # the fold covers leaves values of a removed period in done pages,
        # which only the removed checkpoint could tell apart; dropping the
        # oldest deletes history nobody asks about any more; merging into the
        # active writeset keeps every write there.
        return (
            bool(self.fold_upto)
            and prev is not None
            and nxt is not None
            and prev <= self.fold_upto < nxt - 1
        )

    def settle(self, batch: PageWrites) -> AfterCommit:
        if not self.fold_upto:
            return nothing
        return self._fold(batch, self.fold_upto, self.fold_next, whole=True)

    def _fold(self, batch: PageWrites, upto: int, start_page: int = 0, whole: bool = True,
              budget: int | None = None) -> AfterCommit:
        """Fold every writeset of a period <= upto into the generation array,
        from page ``start_page`` on: all its pages, or (``whole=False``) a
        share of their segments small enough that ``recent`` checkpoints
        finish the fold, or ``budget`` segments.

        Until the last page is done the folded writesets stay, and
        ``folded_through`` does not move: a query then still finds every
        write in the writesets, and the array pages already rewritten only
        hold writes of those same periods, which answers may include.  A
        page is stored once all its segments are done; the segments done so
        far live in RAM (``self._page_fold``), so a crash or a reopen only
        redoes them.
        """
        gens = self.writesets(0, upto + 1)
        if not gens:
            if not self.fold_upto:
                return nothing
            # Removals dropped every writeset the fold had left: it is over.
            batch.record.update(fold_upto=0, fold_next=0)

            def over() -> None:
                self.fold_upto = self.fold_next = 0
                self._page_fold = None

            return over
        by_page: dict[int, list[int]] = {}
        for g in gens:
            for page in self.io.pages(TAG_WRITESET, g):
                by_page.setdefault(page, []).append(g)
        pages = sorted(by_page)
        todo = [p for p in pages if p >= start_page]
        # Work is bounded by segments, whatever their pages: each step
        # rewrites at most 1/recent of the segments of the pages the fold
        # touches.
        if budget is None and not whole:
            budget = -(-sum(self._segments_of(p) for p in pages) // self.recent)
        fold = self._page_fold
        if fold is not None and not (todo and fold.upto == upto and fold.page == todo[0]
                                     and fold.gens == by_page[fold.page]):
            fold = None
        step = None
        next_page = start_page
        while todo and (budget is None or budget > 0):
            page = todo[0]
            if fold is None:
                fold = self._start_page_fold(batch.txn, page, upto, by_page[page])
            step = fold.advance(budget)
            self.folded_segments += step.segments
            if budget is not None:
                budget -= step.segments
            if step.payload is None:
                break  # the share is done, the page is not
            batch.put_gens_payload(TAG_GENS, ARRAY_GEN, page, step.payload)
            self.folded_pages += 1
            todo.pop(0)
            next_page = page + 1
            fold = step = None
        if not todo:
            for g in gens:
                batch.delete(TAG_WRITESET, g)
            folded, fold_upto, fold_next = max(self.folded_through, gens[-1]), 0, 0
        else:
            folded, fold_upto, fold_next = self.folded_through, upto, next_page
        batch.record.update(folded_through=folded, fold_upto=fold_upto, fold_next=fold_next)

        def done() -> None:
            self.folded_through, self.fold_upto, self.fold_next = folded, fold_upto, fold_next
            if fold is not None and step is not None:
                fold.commit(step)
            self._page_fold = fold

        return done

    def _segments_of(self, page: int) -> int:
        return min(PAGE_SEGMENTS, self.n_segments - page * PAGE_SEGMENTS)

    def _start_page_fold(self, txn: Any, page: int, upto: int, gens: list[int]) -> PageFold:
        """Start rewriting one page of the array with the writesets ``gens``.
        The fold reads the stored pages' bytes, not decoded pages: those
        are rewritten or deleted, and caching them would only push out
        pages queries want."""
        stored = page in self.io.pages(TAG_GENS, ARRAY_GEN, range(page, page + 1))
        payload = self.io.payload(TAG_GENS, ARRAY_GEN, page, txn, gens=True) if stored else np.frombuffer(b"", np.uint8)
        writesets = [(g, self.io.payload(TAG_WRITESET, g, page, txn)) for g in gens]
        what = (f"volume {self.io.vol_id} page {TAG_GENS.decode()}/{ARRAY_GEN}/{page} or a page "
                f"{page} of the writesets folded into it ({TAG_WRITESET.decode()}/{gens[0]}..{gens[-1]})")
        return PageFold(page, upto, payload, writesets, self.n_segments, GENS_DTYPE, what)

    def seal(self, batch: PageWrites, current: int) -> AfterCommit:
        cleared = super().seal(batch, current)
        folded = nothing
        if self.fold_upto:
            folded = self._fold(batch, self.fold_upto, self.fold_next, whole=False)
        else:
            # Count the writeset being sealed, which the catalog does not show yet.
            pending = self.writesets(0) + [current]
            if len(pending) > 2 * self.recent:
                keep_from = pending[-self.recent]
                folded = self._fold(batch, keep_from - 1, whole=False)

        def done() -> None:
            cleared()
            folded()

        return done

    def remove(self, batch: PageWrites, prev: int | None, gen: int, nxt: int | None) -> AfterCommit:
        removed = super().remove(batch, prev, gen, nxt)

        def done() -> None:
            removed()
            # The page being rewritten may hold writesets this removal
            # merged or dropped: start it again from what is stored.
            self._page_fold = None

        return done

    def flush(self, batch: PageWrites) -> AfterCommit:
        flushed = super().flush(batch)
        fold = self._page_fold
        if fold is None or not self.fold_upto:
            return flushed
        # The page being rewritten is state in RAM too: store it, or a
        # process that opens, checkpoints and closes would redo the same
        # first share of a page every time and never finish a fold.
        folded = self._fold(batch, self.fold_upto, self.fold_next, budget=fold.segments_left)

        def done() -> None:
            flushed()
            folded()

        return done

    def _merge_into_predecessor(self, batch: PageWrites, prev: int, gens: list[int]) -> AfterCommit:
        if prev > self.folded_through:
            return super()._merge_into_predecessor(batch, prev, gens)
        # The predecessor's writes are already in the generation array: fold
        # these (and any older one-bit writeset) there too, with their own
        # generations, which are all >= prev.
        if not gens:
            return nothing
        return self._fold(batch, max(gens))

    def reset(self, batch: PageWrites) -> AfterCommit:
        cleared = super().reset(batch)
        batch.record.update(folded_through=0, fold_upto=0, fold_next=0)

        def done() -> None:
            cleared()
            self.folded_through = self.fold_upto = self.fold_next = 0
            self._page_fold = None

        return done

    def export(self, txn: Any, current: int) -> HistoryImage:
        if not self.folded_through:
            return super().export(txn, current)
        last = SegmentTable(self.n_chunks, GENS_DTYPE)
        for spans in self.io.read_table(TAG_GENS, ARRAY_GEN, txn=txn, keep=False):
            last.load(spans)
        return self._image(txn, current, self.folded_through + 1, last)

    def adopt(self, batch: PageWrites, image: HistoryImage, live: np.ndarray) -> AfterCommit:
        gens = sorted(image.writesets)
        # Leave as many one-bit writesets as a fold would.
        fold = gens[: -self.recent] if len(gens) > 2 * self.recent else []
        last = image.last
        # The generation array stands for every period before exact_from.
        folded = max(image.exact_from - 1, 0)
        for gen in fold:
            if last is None:
                last = SegmentTable(self.n_chunks, GENS_DTYPE)
            last.assign(image.writesets[gen].spans(), gen)
            folded = gen
        if last is not None:
            batch.put_table(TAG_GENS, ARRAY_GEN, last)
        for gen in gens[len(fold) :]:
            batch.put_table(TAG_WRITESET, gen, image.writesets[gen])
        batch.put_table(TAG_ACTIVE, SNAPSHOT_GEN, image.active)
        batch.record.update(folded_through=folded, exact_from=0, fold_upto=0, fold_next=0)

        def done() -> None:
            self.active = image.active
            self.folded_through = folded
            self._page_fold = None

        return done

    def changed(self, since: int, until: int | None, c_lo: int, c_hi: int) -> tuple[Spans, bool]:
        if since > self.folded_through:
            return super().changed(since, until, c_lo, c_hi)
        acc = SegmentTable(self.n_chunks)
        pages = chunk_page_range(c_lo, c_hi)
        self.io.or_at_least(TAG_GENS, ARRAY_GEN, pages, acc, since)
        exact = True
        # A generation >= until hides whether the chunk was also written in
        # [since, until): then the answer is a superset.  (After a
        # conversion the array may hold periods past folded_through.)
        if until is not None:
            probe = SegmentTable(self.n_chunks)
            self.io.or_at_least(TAG_GENS, ARRAY_GEN, pages, probe, until)
            exact = probe.is_empty()
        # Mid-fold, the pages of the array below fold_next already hold
        # every write of the periods being folded (a chunk keeps the last
        # of them, which is >= since if any is): there only the writesets
        # past fold_upto add anything.
        done = range(pages.start, min(pages.stop, self.fold_next)) if self.fold_upto else range(0)
        for gen in self.writesets(since, until):
            todo = pages
            if gen <= self.fold_upto and done:
                todo = range(done.stop, pages.stop)
            for spans in self.io.read_table(TAG_WRITESET, gen, todo):
                acc.or_spans(spans)
        if until is None:
            acc.or_spans(self._region_spans(self.active, c_lo, c_hi))
        return self._region_spans(acc, c_lo, c_hi), exact

    def ram_bytes(self) -> int:
        fold = self._page_fold
        return self.active.nbytes + (fold.nbytes if fold is not None else 0)
