"""The interface every history strategy implements.

Time is cut into *periods*, numbered by generations: creating a checkpoint
starts period ``g`` and gives the checkpoint generation ``g``.  "Changed
since X" is the union of every write made in a period ``>= gen(X)``.  A
strategy decides how those writes are kept; the volume owns names,
generations, validation, locking and the transaction around each call.

Methods that change stored state take a :class:`~tiered.storage.pages.PageWrites` (one
LMDB write transaction), stage their writes in it and return a callback that
updates RAM.  The volume runs the callback only after the transaction has
committed, so a failed write leaves RAM and disk as they were.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from ..bitmaps.table import SegmentTable, Spans, chunk_page_range, chunk_seg_range
from ..storage.pages import PageWrites, PageIO

# Page tags: which stored table of a volume a page belongs to (docs/format.md).
#: sealed one-bit writeset of one period
TAG_WRITESET = b"W"
#: snapshot of the active writeset taken by a flush
TAG_ACTIVE = b"A"
#: generation array
TAG_GENS = b"G"

AfterCommit = Callable[[], None]


def nothing() -> None:
    """An after-commit callback with nothing to do."""


# The dtype of a history image's last-write table: generations of every
# strategy fit once the volume has checked them against MAX_GEN_32.
IMAGE_GENS_DTYPE = np.dtype(np.uint32)


@dataclasses.dataclass
class HistoryImage:
    """Everything a history knows, in a form every strategy can adopt.

    Periods from ``exact_from`` on are known exactly, one writeset each;
    of older periods only the last one that wrote each chunk is known.
    """

    #: The period the active writeset belongs to.
    current: int
    #: The first period whose writes are known exactly (0: all of them).
    exact_from: int
    #: Per chunk, the last period that wrote it (0: none); None when
    #: ``exact_from`` is 0.  It covers the exact periods too, so that a
    #: later write shows that an older one may be hidden.
    last: SegmentTable | None
    #: Exact writesets of sealed periods >= ``exact_from``, by generation.
    writesets: dict[int, SegmentTable]
    #: Chunks written in period ``current``.
    active: SegmentTable


class History(ABC):
    mode: str
    #: Largest generation the strategy can store.
    max_generation: int
    #: Whether live generations can be renumbered compactly when the counter
    #: reaches ``max_generation`` (otherwise that is the end of the volume).
    can_renumber: bool = False
    #: Whether sealing a period also persists everything marked so far.
    seal_flushes: bool = False

    def __init__(self, io: PageIO, n_chunks: int) -> None:
        self.io = io
        self.n_chunks = n_chunks

    # -- lifetime -------------------------------------------------------

    @abstractmethod
    def load(self, txn: Any, record: dict[str, Any]) -> None:
        """Rebuild RAM state from the store at open."""

    def record_fields(self) -> dict[str, Any]:
        """Extra fields this strategy keeps in the volume record."""
        return {}

    # -- write path -----------------------------------------------------

    @abstractmethod
    def mark_many(self, offsets: np.ndarray, lengths: np.ndarray, shift: int, gen: int) -> None:
        """Mark validated int64 byte ranges written in period ``gen``."""

    @property
    @abstractmethod
    def current(self) -> SegmentTable:
        """The table marks go to: a bitmap of the current period's writes,
        or a generation table where the current period's chunks hold its
        generation.  Read-only for callers (the sync-mode probe)."""

    # -- changes of history ---------------------------------------------

    @abstractmethod
    def seal(self, batch: PageWrites, current: int) -> AfterCommit:
        """Close period ``current``, which a live checkpoint covers."""

    @abstractmethod
    def remove(self, batch: PageWrites, prev: int | None, gen: int, nxt: int | None) -> AfterCommit:
        """Drop the live checkpoint of generation ``gen``, keeping every other
        answer.  ``prev`` and ``nxt`` are its live neighbours (not both None)."""

    @abstractmethod
    def reset(self, batch: PageWrites) -> AfterCommit:
        """Forget all history: no live checkpoint is left to ask about."""

    @abstractmethod
    def flush(self, batch: PageWrites) -> AfterCommit:
        """Persist the state held in RAM, so that reopening loses nothing."""

    @property
    def unsettled(self) -> bool:
        """Whether work spread over checkpoints is under way; the volume
        settles it before converting."""
        return False

    def settle_before_remove(self, prev: int | None, nxt: int | None) -> bool:
        """Whether removing the checkpoint between ``prev`` and ``nxt`` must
        wait for that work to finish."""
        return False

    def settle(self, batch: PageWrites) -> AfterCommit:
        """Finish the work spread over checkpoints."""
        return nothing

    @abstractmethod
    def export(self, txn: Any, current: int) -> HistoryImage:
        """Everything this history knows, read inside ``txn``."""

    @abstractmethod
    def adopt(self, batch: PageWrites, image: HistoryImage, live: np.ndarray) -> AfterCommit:
        """Store ``image`` as this (empty) history's state.  ``live`` holds
        the generations of the live checkpoints, ascending."""

    def renumber(self, batch: PageWrites, live: np.ndarray) -> AfterCommit:
        """Stage this history with every generation v mapped to the number
        of ``live`` generations <= v, all of it persisted; RAM follows in the
        returned callback, so a failed commit leaves the old numbering."""
        raise NotImplementedError

    # -- queries --------------------------------------------------------

    @abstractmethod
    def changed(self, since: int, until: int | None, c_lo: int, c_hi: int) -> tuple[Spans, bool]:
        """Bitmap spans of chunks written in periods [since, until) inside
        chunks [c_lo, c_hi) (``until=None``: up to now), and whether that
        answer is exact.  It may include chunks written later, never fewer."""

    # -- costs ----------------------------------------------------------

    @abstractmethod
    def ram_bytes(self) -> int:
        """Bitmap memory held in RAM, the page cache excluded."""

    # -- helpers shared by the strategies --------------------------------

    def _union_writesets(self, acc: SegmentTable, gens: list[int], c_lo: int, c_hi: int, txn: Any = None) -> None:
        pages = chunk_page_range(c_lo, c_hi)
        for gen in gens:
            for spans in self.io.read_table(b"W", gen, pages, txn):
                acc.or_spans(spans)

    @staticmethod
    def _region_spans(table: SegmentTable, c_lo: int, c_hi: int) -> Spans:
        return table.spans(*chunk_seg_range(c_lo, c_hi))
