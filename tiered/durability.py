"""The RAM side of crash-exact tracking (``durability="sync"``).

The contract is dm-era's: a write may reach the disk only once the mark of
every chunk it touches is durable.  Most writes touch chunks already marked
in the current period, and those marks are already durable, so they need
nothing; a write that dirties a new chunk gets a *token* and waits in
:meth:`tiered.Volume.sync` until a journal entry holding the chunk has
committed (:mod:`tiered.storage.journal`).

Chunks travel through three sets, each a bitmap :class:`SegmentTable` that
holds only what changed since the last commit:

``open``
    journaled in the batch that collects new marks; tokens name its
    sequence number ``open_seq``.
``flight``
    the batch a sync leader is committing (``flight_seq``), at most one.
durable
    everything else that is marked: in a committed entry, or in the
    flushed or sealed state.

Group commit (:meth:`tiered.Volume.sync`): a syncing thread that finds its
token not yet durable either leads, if no commit is under way, or waits on
the volume's condition.  The leader commits the whole open batch (holding
the volume's commit lock, outside its lock), so every thread that marked
meanwhile is served by one LMDB commit and one fsync; each commit wakes
every waiter at once, those served return, and the marks made during the
commit form the next batch, which the next leader commits whole.
Everything here runs under the volume's lock; only the LMDB commit runs
outside it.

Single marks of chunks found durable in the current period are remembered
in ``hot`` (a bounded set), so that the hot set's marks cost one lookup;
the volume empties it whenever a commit may change the period or history.
"""

from __future__ import annotations

from array import array

import numpy as np

from .bitmaps import probe_kernels as P
from .bitmaps.table import SegmentTable

#: Chunks remembered as durable in the current period by single marks
#: (Volume.mark), so that the hot set's marks skip the numba probe; the set
#: is emptied when full, and whenever the period or the history changes.
HOT_CHUNKS = 8192


_NONE = np.empty(0, np.int64)
_NONE.setflags(write=False)


class SyncState:
    """Batches of newly dirty chunks on their way to the journal."""

    def __init__(self, n_chunks: int, next_seq: int) -> None:
        self.open = SegmentTable(n_chunks)
        self.flight = SegmentTable(n_chunks)
        self._ranges = array("q")  # the open batch: inclusive chunk ranges, pairwise
        self._flight_ranges = array("q")
        self.open_seq = next_seq
        self.flight_seq = 0
        self.durable_seq = next_seq - 1
        self._new = np.empty(64, np.int64)
        #: Single chunks known marked and durable in the current period.
        self.hot: set[int] = set()
        #: Reused by single marks: no two array allocations per call.
        self.one_offset = np.zeros(1, np.int64)
        self.one_length = np.zeros(1, np.int64)
        #: Writes that dirtied a chunk new in its period (needed a sync).
        self.new_writes = 0
        #: Commits made by sync leaders, and syncs that waited for one.
        self.commits = 0
        self.waits = 0

    # -- the write path ---------------------------------------------------

    def classify(self, active: SegmentTable, gen: int, offsets: np.ndarray, lengths: np.ndarray, shift: int) -> tuple[np.ndarray, int]:
        """(indices of the writes that dirty a chunk not marked in period
        ``gen`` of ``active``, the token the batch needs or 0)."""
        if not self._ranges and not self._flight_ranges and P.all_marked(
            active.index, active.pool, active.is_bits, gen, active.n_top, offsets, lengths, shift
        ):
            return _NONE, 0  # the steady state: nothing new, nothing pending
        if len(self._new) < len(offsets):
            self._new = np.empty(max(len(offsets), 2 * len(self._new)), np.int64)
        n_new, status = P.classify(
            active.index, active.pool, active.is_bits, gen,
            self.open.index, self.open.pool, self.flight.index, self.flight.pool,
            active.n_top, offsets, lengths, shift, self._new,
        )
        if status & P.NEEDS_OPEN:
            token = self.open_seq
        elif status & P.NEEDS_FLIGHT:
            token = self.flight_seq
        else:
            token = 0
        return self._new[:n_new], token

    def add_new(self, active: SegmentTable, gen: int, offsets: np.ndarray, lengths: np.ndarray, shift: int, which: np.ndarray) -> None:
        """Journal in the open batch the chunks of the writes ``which`` not
        yet marked in period ``gen`` of ``active``; call before marking them.
        (Journaling a whole write would put its durable chunks back in the
        open batch, and a later write to them alone would get a token.)"""
        out = np.empty((max(64, 2 * len(which)), 2), np.int64)
        while True:
            n = P.uncovered_runs(
                active.index, active.pool, active.is_bits, gen, active.n_top, offsets, lengths, shift, which, out
            )
            if n >= 0:
                break
            out = np.empty((2 * len(out), 2), np.int64)
        runs = out[:n]
        if n:
            first = np.ascontiguousarray(runs[:, 0])  # C arrays: the kernels' one signature
            self.open.mark_many(first, runs[:, 1] - first + 1, 0, 1)
            self._ranges.frombytes(runs.tobytes())

    # -- commits ----------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether the open batch holds anything."""
        return len(self._ranges) > 0

    def target(self) -> int:
        """The token that covers every mark made so far."""
        if self.pending:
            return self.open_seq
        if len(self._flight_ranges):
            return self.flight_seq
        return self.durable_seq

    def cut(self) -> tuple[int, np.ndarray]:
        """Move the open batch in flight: (its sequence number, its ranges as
        an int64 array of shape (n, 2))."""
        self.open, self.flight = self.flight, self.open
        self.open.reset()
        self._flight_ranges, self._ranges = self._ranges, array("q")
        self.flight_seq = self.open_seq
        self.open_seq += 1
        return self.flight_seq, np.frombuffer(self._flight_ranges, np.int64).reshape(-1, 2)

    def committed(self) -> None:
        """The batch in flight is durable."""
        self.durable_seq = self.flight_seq
        self.flight.reset()
        self._flight_ranges = array("q")

    def failed(self) -> None:
        """The commit of the batch in flight failed: its chunks go back to
        the open batch, so that the next sync retries them."""
        if len(self._flight_ranges):
            self.open.or_spans(self.flight.spans())
            # A new array: the failed leader's traceback may still hold the
            # numpy view cut() made of the flight's, which cannot be resized
            # (BufferError, leaving the flight's chunks out of every later
            # batch: marked in RAM, never journaled).
            merged = array("q", self._flight_ranges)
            merged.extend(self._ranges)
            self._ranges = merged
        self.flight.reset()
        self._flight_ranges = array("q")

    def remember(self, chunk: int) -> None:
        """``chunk`` is marked and durable in the current period."""
        hot = self.hot
        if len(hot) >= HOT_CHUNKS:
            hot.clear()
        hot.add(chunk)

    def flushed(self) -> None:
        """The whole active state was persisted: every mark is durable."""
        self.durable_seq = self.open_seq
        self.open_seq += 1
        self.open.reset()
        self._ranges = array("q")

    @property
    def ram_bytes(self) -> int:
        # about 60 bytes per remembered chunk: its set slot and its int
        return self.open.nbytes + self.flight.nbytes + self._new.nbytes + 60 * len(self.hot) + 8 * (
            self._ranges.buffer_info()[1] + self._flight_ranges.buffer_info()[1]
        )
