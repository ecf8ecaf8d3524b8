"""The crash-exact half of a volume (``durability="sync"``).

:class:`SyncWrites` holds the methods of :class:`tiered.Volume` that make
marks durable: the sync-mode write path, which probes before it marks
(:mod:`tiered.bitmaps.probe_kernels`) and journals only newly dirty chunks;
``sync()`` and its group commit; switching durability; and replaying the
journal when a volume opens after a crash.  The batches themselves live in
:class:`tiered.durability.SyncState`, the stored entries in
:mod:`tiered.storage.journal`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import CorruptionError, InvalidArgumentError
from .storage.codec import pack_json
from .storage.environment import guarded
from .storage.journal import encode_entry, journal_key, read_entries
from .storage.keys import volume_key

#: A sync leader that finds this many journal entries flushes instead of
#: adding one, so that the journal, and the replay at the next open after a
#: crash, stay bounded however long a volume goes without a checkpoint.
JOURNAL_FLUSH_ENTRIES = 4096

#: ``"lazy"``: marks persist at flush, checkpoint and close; after a crash
#: answers are flagged supersets.  ``"sync"``: crash-exact (see sync()).
DURABILITIES = ("lazy", "sync")


def check_durability(value: object) -> str:
    if value not in DURABILITIES:
        raise InvalidArgumentError(f"durability must be one of {', '.join(map(repr, DURABILITIES))}, got {value!r}")
    return str(value)


class SyncWrites:
    """Sync-mode methods of :class:`tiered.Volume` (a mixin: the state is
    the volume's; see its constructor)."""

    def _replay(self, txn: Any, record: dict[str, Any]) -> None:
        """Apply the journal over the flushed state read at open."""
        span = tuple(int(record.get(f, 0)) for f in ("journal_from", "journal_last", "journal_count"))
        label = f"volume {self.name!r}"
        # A bitmap holds one period, sealed at each checkpoint with the
        # journal deleted; a generation table's journal may span periods.
        strict = self._history.current.is_bits
        # One kernel call per run of entries of one period, not per entry:
        # a journal of many small syncs replays in one pass.
        batch: list[np.ndarray] = []
        batch_period = 0

        def apply() -> None:
            if batch:
                ranges = np.concatenate(batch)
                offsets = ranges[:, 0] << self._shift
                lengths = (ranges[:, 1] - ranges[:, 0] + 1) << self._shift
                self._history.mark_many(offsets, lengths, self._shift, batch_period)
                batch.clear()

        for seq, period, ranges in read_entries(
            self._storage, txn, self._id, span, self._n_chunks, self._io.version, label
        ):
            if period > self._gen or (strict and period != self._gen) or period < 1:
                raise CorruptionError(
                    f"{label}: journal entry {seq} holds marks of period {period}; the volume is in period {self._gen}"
                )
            if period != batch_period:
                apply()
                batch_period = period
            if len(ranges):
                batch.append(ranges)
        apply()

    def _journal_fields(self, seq: int) -> dict[str, Any]:
        """Record fields once journal entry ``seq`` is committed."""
        return {
            "journal_from": self._record.get("journal_from") or seq,
            "journal_last": seq,
            "journal_count": self._record.get("journal_count", 0) + 1,
            "unflushed": True,
        }

    def _put_entry(self, txn: Any, seq: int, ranges: np.ndarray, period: int) -> None:
        """Stage journal entry ``seq``: ``ranges`` marked in ``period``."""
        key = journal_key(self._id, seq)
        txn.put(key, encode_entry(period, ranges, key), db=self._storage.journal)

    def _mark_one_sync(self, offset: int, length: int) -> int | None:
        # Two reused 1-element arrays, not two new ones per call.
        sync = self._sync
        shift = self._shift
        chunk = offset >> shift
        single = (offset + length - 1) >> shift == chunk
        offsets, lengths = sync.one_offset, sync.one_length
        offsets[0] = offset
        lengths[0] = length
        token = self._mark_sync(offsets, lengths)
        if token is None and single:
            sync.remember(chunk)
        return token

    def _mark_sync(self, offsets: np.ndarray, lengths: np.ndarray) -> int | None:
        # Writes whose chunks are all marked in this period need no marking
        # at all; the others are journaled in the open batch, then marked.
        new, token = self._sync.classify(self._history.current, self._gen, offsets, lengths, self._shift)
        if len(new):
            self._sync.new_writes += len(new)
            # Journal only the chunks that are newly dirty (see add_new).
            self._sync.add_new(self._history.current, self._gen, offsets, lengths, self._shift, new)
            offs, lens = offsets[new], lengths[new]
            self._history.mark_many(offs, lens, self._shift, self._gen)
            self.version += 1
        return token or None

    @guarded
    def sync(self, token: int | None = None) -> None:
        """Make marks durable: those that returned ``token``, or with None
        every mark made so far.  When it returns, a crash loses none of
        them (sync mode; lazy mode flushes the whole active state).

        Concurrent calls share commits: the thread that commits takes every
        mark made until then, so one LMDB commit and one fsync serve them
        all, and each costs time in proportion to the chunks newly dirtied
        since the last sync, not to the volume.  Raises
        InvalidArgumentError (a token this volume did not issue),
        ReadOnlyError, ClosedError, StoreFullError or StorageError; after
        an error the marks stay in RAM and the next sync retries them.
        """
        if token is not None and (type(token) is not int or token < 1):
            raise InvalidArgumentError(f"token must be what mark() returned (an int > 0 or None), got {token!r}")
        with self._lock:
            if token is None:
                self._check_open()
            lazy = self.durability == "lazy"
            if not lazy:
                if token is not None and token > self._sync.open_seq:
                    raise InvalidArgumentError(f"volume {self.name!r} issued no sync token {token}")
                target = token or self._sync.target()
                if target <= self._sync.durable_seq:
                    return
                self._check_writable()
                self._sync.waits += 1
        if lazy:
            self.flush()
            return
        while True:
            with self._lock:
                # Followers wait here while a leader commits; each commit
                # wakes them all at once, and the marks they make meanwhile
                # go to the open batch, which the next leader commits whole.
                while self._leading and target > self._sync.durable_seq:
                    self._synced.wait()
                if target <= self._sync.durable_seq:
                    return
                self._leading = True
            try:
                self._lead_commit(target)
            finally:
                with self._lock:
                    self._leading = False
                    self._synced.notify_all()

    def _lead_commit(self, target: int) -> None:
        """Commit the open batch as one journal entry, unless ``target`` is
        durable by the time the commit lock is ours."""
        with self._commit_lock:
            with self._lock:
                if target <= self._sync.durable_seq:
                    return  # a checkpoint, flush... committed it meanwhile
                self._check_writable()
                if self._record.get("journal_count", 0) >= JOURNAL_FLUSH_ENTRIES:
                    # Fold the journal into the stored state now and then,
                    # so that reopening never replays more than this.
                    self._transact(self._history.flush, persists=True)
                    self._sync.commits += 1
                    return
                seq, ranges = self._sync.cut()
                record = self._volume_record(**self._journal_fields(seq))
                gen = self._gen

            def body(txn: Any) -> None:
                self._put_entry(txn, seq, ranges, gen)
                vkey = volume_key(self._id)
                txn.put(vkey, pack_json(record, vkey), db=self._storage.volumes)

            try:
                self._storage.write(body)
            except BaseException:
                with self._lock:
                    self._sync.failed()
                raise
            with self._lock:
                self._sync.committed()
                self._sync.commits += 1
                self._record = record
                self._unflushed = True

    @guarded
    def set_durability(self, durability: str) -> None:
        """Switch between ``"lazy"`` and ``"sync"``; persists the active
        state in the same transaction.  Raises InvalidArgumentError,
        ReadOnlyError, ClosedError, StoreFullError or StorageError; then
        nothing changed."""
        mode = check_durability(durability)
        with self._commit_lock, self._lock:
            self._check_writable()
            if mode == self.durability:
                return
            self._transact(self._history.flush, persists=True, durability=mode)
            self.durability = mode
            self._update_marking()

