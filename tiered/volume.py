"""A tracked volume: validation, names, generations and crash bookkeeping.

The volume checks every argument, owns the list of live checkpoints and the
generation counter, wraps each change in one LMDB transaction, and leaves
how history is kept to its strategy (``tiered.strategies``).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import threading
import time
import uuid
from array import array
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .storage.codec import pack_json, unpack_json
from .config import MAX_NAME_BYTES, Strategy
from .checks import as_int
from .errors import (
    AlreadyExistsError,
    CheckpointLimitError,
    CheckpointNotFoundError,
    ClosedError,
    CorruptionError,
    InvalidArgumentError,
    OutOfRangeError,
    ReadOnlyError,
)
from .bitmaps.table import check_writes
from .durability import SyncState
from .volume_convert import Conversion
from .volume_sync import SyncWrites
from .extents import Extents
from .integrity import check_history
from .storage.environment import guarded
from .storage.pages import PageWrites, PageIO
from .storage.journal import delete_entries
from .storage.keys import checkpoint_key, checkpoint_key_gen, volume_key
from .strategies import gens_dtype, make_history
from .strategies.base import nothing

if TYPE_CHECKING:
    from .store import Store

# Single marks buffered before one kernel call applies them all.
PENDING_MARKS = 1024

def stored_generation_id(record: dict[str, Any]) -> str:
    """The generation id a record holds; records written before ids existed
    get one derived from what they always held, so every reader agrees."""
    gid = record.get("generation_id")
    if gid is None:
        return str(uuid.uuid5(uuid.NAMESPACE_OID, f"tiered/{record['id']}/{record['created']!r}"))
    return gid


def degraded_generation_id(gid: str, why: str) -> str:
    """The id after tracking was lost, derived rather than random so that
    a reader and the writer that persists it name the same chain."""
    return str(uuid.uuid5(uuid.UUID(gid), why))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A named point in a volume's history."""

    name: str
    created: float
    """Creation time, seconds since the epoch."""
    generation: int
    """Internal period number; increases with creation order (may be renumbered)."""
    generation_id: str = ""
    """The volume's generation id when this object was returned: a backup
    chain that stored (name, generation_id) is intact while both still match."""


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"{what} name must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidArgumentError(f"{what} name must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{what} name is not valid UTF-8: {exc}") from None
    if size > MAX_NAME_BYTES:
        raise InvalidArgumentError(
            f"{what} name is {size} bytes in UTF-8; the limit is {MAX_NAME_BYTES}"
        )
    return name


def record_unflushed(record: dict[str, Any]) -> bool:
    """Whether a volume record says RAM may hold marks the store lacks
    (``unflushed``; format 1 named the field ``dirty``)."""
    return bool(record.get("unflushed", record.get("dirty", False)))


def _as_int_array(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr


class Volume(SyncWrites, Conversion):
    """Change tracking for one volume.  Get one from :class:`tiered.Store`."""

    def __init__(self, store: "Store", record: dict[str, Any], strategy: Strategy, txn: Any) -> None:
        self._store = store
        self._storage = store._storage
        self._record = record
        self.name: str = record["name"]
        self.size: int = record["size"]
        self.granularity: int = record["granularity"]
        self.strategy = strategy
        self._id: int = record["id"]
        self._shift = self.granularity.bit_length() - 1
        self._n_chunks = -(-self.size // self.granularity)
        self._gen: int = record["generation"]
        self._lost: int = record["lost_generation"]
        # Answers since a checkpoint of a generation up to this one may be
        # supersets (an import that could not reproduce them exactly).
        self._superset: int = record.get("superset_generation", 0)
        self._unflushed: bool = record_unflushed(record)
        self.durability: str = record.get("durability", "lazy")
        self.generation_id: str = stored_generation_id(record)
        """A UUID that changes whenever tracking was lost or degraded (an
        unclean shutdown in lazy mode, a period marked lost by a repair, a
        reset): a backup chain is intact while it is unchanged."""
        self._closed = False
        self._lock = threading.Lock()
        # Taken before _lock by every call that commits, so that a sync
        # leader's commit (made outside _lock) never interleaves with them.
        self._commit_lock = threading.Lock()
        # Group commit (see sync): whether a thread leads a sync commit, and
        # the condition its followers wait on, woken after each commit.
        self._leading = False
        self._synced = threading.Condition(self._lock)
        #: The storage epoch of this volume's snapshot (readers; see _check_open).
        self._epoch = self._storage.epoch
        self._marking = False
        #: Increases after every change that may alter an answer of
        #: changed_since or changed_between in this process (a mark that
        #: dirtied a chunk, any commit): an answer computed while it kept
        #: one value is still current.  Readers of a cached answer compare it.
        self.version = 0
        self._syncing = False
        self._pending_offsets = array("q")
        self._pending_lengths = array("q")
        self._io = PageIO(self._storage, self._id, strategy.cache_bytes, gens_dtype(strategy), self._n_chunks)
        self._io.load_catalog(txn)
        stored = [
            (checkpoint_key_gen(key, self._id), unpack_json(value, key, self._io.version, f"checkpoint of volume {self.name!r}"))
            for key, value in self._storage.scan_prefix(txn, self._storage.checkpoints, volume_key(self._id))
        ]
        # Before any page is decoded: record, checkpoints and catalog agree.
        check_history(self._id, record, strategy, stored, self._io.catalog, self._io.digest)
        self._checkpoints: list[Checkpoint] = [Checkpoint(rec["name"], rec["created"], gen) for gen, rec in stored]
        self._history = make_history(strategy, self._io, self._n_chunks)
        self._history.load(txn, record)
        self._by_name = {c.name: c for c in self._checkpoints}
        self._sync = SyncState(self._n_chunks, int(record.get("journal_last", 0)) + 1)
        #: This open replayed a sync-mode journal: the writer before it
        #: crashed, and lost nothing.
        self._replayed = False
        self.unclean_shutdown = False
        if self._unflushed and self.durability == "sync":
            # Every synced mark is in the journal: replay it, and lose nothing.
            self._replay(txn, record)
            self._replayed = self.unclean_shutdown = True
            if not self._storage.readonly:
                self._transact(self._history.flush, persists=True)
        elif self._unflushed:
            # RAM held marks that never reached the disk: any chunk may have
            # changed since any existing checkpoint.
            self.unclean_shutdown = bool(self._checkpoints)
            self._lost = self._gen
            self._unflushed = False
            self.generation_id = degraded_generation_id(self.generation_id, f"lost/{self._gen}")
            if not self._storage.readonly:
                self._transact(lambda batch: nothing)
        elif self._lost and any(c.generation <= self._lost for c in self._checkpoints):
            self.unclean_shutdown = True
        self._update_marking()

    # -- plumbing -------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"volume {self.name!r} is closed")
        if self._io.snapshot is not None and self._epoch != self._storage.epoch:
            # This process remapped the store, which ended our snapshot.
            self._store._reload(self)

    def _check_writable(self) -> None:
        self._check_open()
        if self._storage.readonly:
            raise ReadOnlyError(f"volume {self.name!r} is open read-only")

    def _volume_record(self, **changes: Any) -> dict[str, Any]:
        rec = dict(self._record)
        rec.pop("dirty", None)  # format 1's name of "unflushed"
        rec.update(
            generation=self._gen,
            lost_generation=self._lost,
            unflushed=self._unflushed,
            checkpoints=len(self._checkpoints),
            durability=self.durability,
            generation_id=self.generation_id,
            **self._history.record_fields(),
        )
        rec["superset_generation"] = self._superset
        rec.update(changes)
        if not rec["superset_generation"]:
            del rec["superset_generation"]  # records of volumes never flagged stay as they were
        return rec

    def _transact(
        self, build: Callable[[PageWrites], Callable[[], None]], persists: bool = False, **record_changes: Any
    ) -> None:
        """Run ``build`` in one write transaction, then update RAM.

        ``build`` stages writes and returns what to do in RAM once they have
        committed; the volume record is rewritten in the same transaction.
        Nothing in RAM changes before the commit, so when it fails
        (StoreFullError, StorageError...) RAM and disk stay as they were.

        ``persists``: the change persists the whole active state (a flush, a
        seal...), so the record is no longer unflushed and the sync journal
        is deleted with it; any other change commits the open batch of
        sync-mode marks as a journal entry, so every call that commits is
        also a sync barrier.  Call under both locks.
        """
        self._drain()
        staged: dict[str, Any] = {}
        attempts: list[PageWrites] = []  # the map may fill: one batch per try
        entry: tuple[int, np.ndarray] | None = None
        if persists:
            record_changes.update(unflushed=False, journal_from=0, journal_last=0, journal_count=0)
        elif self._sync.pending:
            entry = self._sync.cut()
            record_changes.update(self._journal_fields(entry[0]))

        def body(txn: Any) -> None:
            batch = self._io.batch(txn)
            attempts.append(batch)
            staged["batch"] = batch
            staged["after"] = build(batch)
            if persists:
                delete_entries(self._storage, txn, self._id)
            if entry is not None:
                self._put_entry(txn, *entry, self._gen)
            record = self._volume_record(**{**record_changes, **batch.record, "pages_digest": batch.digest_after()})
            key = volume_key(self._id)
            txn.put(key, pack_json(record, key), db=self._storage.volumes)
            staged["record"] = record

        try:
            self._storage.write(body)
        except BaseException:
            for batch in attempts:
                self._io.forget(batch)
            if entry is not None:
                self._sync.failed()
            raise
        for batch in attempts[:-1]:
            self._io.forget(batch)
        self._sync.hot.clear()  # the period or the history may have changed
        if persists:
            self._sync.flushed()
        elif entry is not None:
            self._sync.committed()
        self._io.apply(staged["batch"])
        staged["after"]()
        self._record = staged["record"]
        self._gen = self._record["generation"]
        self._lost = self._record["lost_generation"]
        self._superset = self._record.get("superset_generation", 0)
        self._unflushed = record_unflushed(self._record)
        self._update_marking()
        self.version += 1

    def _note_dirty(self) -> None:
        # Persist "RAM is ahead of the disk" before the first unflushed mark,
        # so an unclean shutdown is detected on reopen.
        self._transact(lambda batch: nothing, unflushed=True)

    # -- write path -----------------------------------------------------

    def _update_marking(self) -> None:
        """Recompute whether mark() may take its fast path (lazy), or its
        sync-mode path without further checks (``_syncing``)."""
        writable = not self._closed and not self._storage.readonly and bool(self._checkpoints)
        self._marking = writable and self._unflushed and self.durability == "lazy"
        self._syncing = writable and self.durability == "sync"

    def _drain(self) -> None:
        """Apply the single marks buffered by mark(); call under the lock."""
        if self._pending_offsets:
            offsets = np.frombuffer(self._pending_offsets, np.int64)
            lengths = np.frombuffer(self._pending_lengths, np.int64)
            self._history.mark_many(offsets, lengths, self._shift, self._gen)
            # New buffers: numpy still views the old ones until the kernel is done.
            self._pending_offsets = array("q")
            self._pending_lengths = array("q")

    def mark(self, offset: int, length: int) -> int | None:
        """Mark every chunk that the write [offset, offset + length) touches.

        ``offset`` and ``length`` are in bytes.  Lazy mode returns None.
        Sync mode returns None when every chunk touched is already marked
        durably in the current period (the write may go ahead), else a
        token (an int > 0): make the data write only after
        ``sync(token)`` returns.  Raises OutOfRangeError,
        InvalidArgumentError, ReadOnlyError or ClosedError; then nothing
        was marked.
        """
        # Every statement here is on the per-write path: keep it short.
        if type(offset) is not int or type(length) is not int:
            offset = as_int(offset, "offset")
            length = as_int(length, "length")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(
                f"write [{offset}, {offset}+{length}) lies outside volume {self.name!r} of size {self.size}"
            )
        with self._lock:
            if not self._marking:
                if self._syncing and length:
                    # A write inside one chunk found durable in this period
                    # before needs nothing: one set lookup.
                    chunk = offset >> self._shift
                    if chunk in self._sync.hot and (offset + length - 1) >> self._shift == chunk:
                        return None
                    return self._mark_one_sync(offset, length)
                self._check_writable()
                if not self._checkpoints or not length:
                    return None  # no checkpoint can ask about this write, or it is empty
                if self.durability == "sync":
                    return self._mark_one_sync(offset, length)
                self._note_dirty()
            if length:
                # One numba call costs more than the whole budget of a single
                # mark, so single marks are buffered and applied as a batch.
                pending = self._pending_offsets
                pending.append(offset)
                self._pending_lengths.append(length)
                self.version += 1
                if len(pending) >= PENDING_MARKS:
                    self._drain()
        return None

    def mark_many(self, offsets: Sequence[int] | np.ndarray, lengths: Sequence[int] | np.ndarray) -> int | None:
        """Mark a batch of writes: all of them, or none if any is invalid.

        ``offsets`` and ``lengths`` are one-dimensional integer arrays of
        one shape, in bytes.  Returns what :meth:`mark` returns, for the
        whole batch: in sync mode a token when any write needs a sync.
        """
        offs = _as_int_array(offsets, "offsets")
        lens = _as_int_array(lengths, "lengths")
        if offs.shape != lens.shape:
            raise InvalidArgumentError(
                f"offsets and lengths differ in length: {offs.shape[0]} and {lens.shape[0]}"
            )
        offs64 = np.ascontiguousarray(offs, dtype=np.int64)
        lens64 = np.ascontiguousarray(lens, dtype=np.int64)
        bad, any_data = check_writes(offs64, lens64, self.size)
        if bad >= 0:
            raise OutOfRangeError(
                f"write {bad} of the batch, [{offs[bad]}, {offs[bad]}+{lens[bad]}), lies outside "
                f"volume {self.name!r} of size {self.size}; nothing was marked"
            )
        with self._lock:
            self._check_writable()
            if not self._checkpoints or not any_data:
                return None
            if self.durability == "sync":
                return self._mark_sync(offs64, lens64)
            if not self._unflushed:
                self._note_dirty()
            self._history.mark_many(offs64, lens64, self._shift, self._gen)
            self.version += 1
            return None

    # -- checkpoints ----------------------------------------------------

    @guarded
    def checkpoint(self, name: str) -> Checkpoint:
        """Start a new period; the checkpoint survives a crash once this returns.

        Raises InvalidArgumentError, AlreadyExistsError, CheckpointLimitError,
        ReadOnlyError, ClosedError, StoreFullError or StorageError; then
        nothing changed.
        """
        check_name(name, "checkpoint")
        with self._commit_lock, self._lock:
            self._check_writable()
            if name in self._by_name:
                raise AlreadyExistsError(f"volume {self.name!r} already has a checkpoint {name!r}")
            self._drain()  # buffered marks carry the current numbering
            renumber = self._gen + 1 > self._history.max_generation
            checkpoints, gen, lost, superset = self._checkpoints, self._gen, self._lost, self._superset
            if renumber:
                checkpoints, gen, lost, superset = self._renumbered()
            new = Checkpoint(name, time.time(), gen + 1)
            tracking = bool(self._checkpoints)
            history = self._history
            live = np.array([c.generation for c in self._checkpoints], np.int64) if renumber else None
            # A renumbering persists the whole array, and so every mark.
            flushed = not tracking or history.seal_flushes or renumber

            def build(batch: PageWrites) -> Callable[[], None]:
                # Renumbering and the new checkpoint commit together: either
                # both or neither, in RAM as on disk.
                renumbered = nothing
                if renumber:
                    self._put_checkpoints(batch.txn, checkpoints)
                    renumbered = history.renumber(batch, live)
                sealed = history.seal(batch, gen) if tracking else nothing
                key = checkpoint_key(self._id, new.generation)
                batch.txn.put(key, pack_json({"name": name, "created": new.created}, key), db=self._storage.checkpoints)

                def after() -> None:
                    renumbered()
                    sealed()

                return after

            self._transact(
                build,
                generation=new.generation,
                lost_generation=lost,
                superset_generation=superset,
                persists=flushed,
                checkpoints=len(self._checkpoints) + 1,
            )
            if renumber:
                self._checkpoints = checkpoints
                self._by_name = {c.name: c for c in checkpoints}
            self._checkpoints.append(new)
            self._by_name[name] = new
            self._update_marking()
            return dataclasses.replace(new, generation_id=self.generation_id)

    def _renumbered(self) -> tuple[list[Checkpoint], int, int, int]:
        """The checkpoints, generation counter, lost and superset generations after
        renumbering live generations compactly (the counter would overflow);
        RAM is left unchanged.  Raises CheckpointLimitError if that cannot
        make room."""
        live = np.array([c.generation for c in self._checkpoints], np.int64)
        limit = self._history.max_generation
        if len(live) + 1 > limit:
            raise CheckpointLimitError(
                f"volume {self.name!r} holds {len(live)} live checkpoints, the most its "
                f"{self.strategy.describe()} allows; "
                "remove some, or use a wider or another strategy"
            )
        if not self._history.can_renumber:
            raise CheckpointLimitError(
                f"volume {self.name!r} has used all {limit} generations of its {self.strategy.describe()}"
            )
        checkpoints = [dataclasses.replace(c, generation=i + 1) for i, c in enumerate(self._checkpoints)]
        lost = int(np.searchsorted(live, self._lost, side="right"))
        superset = int(np.searchsorted(live, self._superset, side="right"))
        return checkpoints, len(live), lost, superset

    def _put_checkpoints(self, txn: Any, checkpoints: list[Checkpoint]) -> None:
        """Replace the stored checkpoints (after renumbering)."""
        self._storage.delete_prefix(txn, self._storage.checkpoints, volume_key(self._id))
        for c in checkpoints:
            key = checkpoint_key(self._id, c.generation)
            txn.put(key, pack_json({"name": c.name, "created": c.created}, key), db=self._storage.checkpoints)

    @guarded
    def checkpoints(self) -> list[Checkpoint]:
        """Live checkpoints, oldest first."""
        with self._lock:
            self._check_open()
            return [dataclasses.replace(c, generation_id=self.generation_id) for c in self._checkpoints]

    def _lookup(self, name: object) -> Checkpoint:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"checkpoint name must be a str, got {type(name).__name__}")
        try:
            return self._by_name[name]
        except KeyError:
            raise CheckpointNotFoundError(
                f"volume {self.name!r} has no checkpoint {name!r}"
            ) from None

    @guarded
    def remove_checkpoint(self, name: str) -> None:
        """Forget a checkpoint; every other answer stays the same.  Removing
        the last one resets tracking, which gives a new generation id."""
        with self._commit_lock, self._lock:
            self._check_writable()
            gone = self._lookup(name)
            ckpts = self._checkpoints
            i = bisect.bisect_left(ckpts, gone.generation, key=lambda c: c.generation)
            prev = ckpts[i - 1].generation if i > 0 else None
            nxt = ckpts[i + 1].generation if i + 1 < len(ckpts) else None
            if self._history.settle_before_remove(prev, nxt):
                self._transact(self._history.settle)
            history = self._history
            remaining = ckpts[:i] + ckpts[i + 1 :]
            # Checkpoints are in generation order, so the oldest decides.
            lost = self._lost if remaining and remaining[0].generation <= self._lost else 0
            superset = self._superset if remaining and remaining[0].generation <= self._superset else 0

            def build(batch: PageWrites) -> Callable[[], None]:
                batch.txn.delete(checkpoint_key(self._id, gone.generation), db=self._storage.checkpoints)
                if prev is None and nxt is None:
                    return history.reset(batch)
                return history.remove(batch, prev, gone.generation, nxt)

            changes: dict[str, Any] = {
                "lost_generation": lost, "superset_generation": superset, "checkpoints": len(remaining)
            }
            if not remaining:
                changes["persists"] = True  # nothing is tracked any more
                changes["generation_id"] = str(uuid.uuid4())
            self._transact(build, **changes)
            self._checkpoints = remaining
            self.generation_id = self._record["generation_id"]
            del self._by_name[name]
            self.unclean_shutdown = bool(lost) or self._replayed
            self._update_marking()

    def _flag_imported(self, lost: str | None, superset: str | None, why: str) -> None:
        """Flag the answers since checkpoint ``superset`` and every older one
        as supersets (``exact=False``), and those since ``lost`` and every
        older one as lost (the whole region, a new generation id): what an
        import whose source could not be reproduced exactly needs
        (:mod:`tiered.qcow2`).  ``why`` names the cause in the derived id."""
        with self._commit_lock, self._lock:
            self._check_writable()
            changes: dict[str, Any] = {}
            if superset is not None:
                changes["superset_generation"] = max(self._superset, self._lookup(superset).generation)
            if lost is not None:
                changes["lost_generation"] = max(self._lost, self._lookup(lost).generation)
                changes["generation_id"] = degraded_generation_id(self.generation_id, why)
            if changes:
                self._transact(lambda batch: nothing, **changes)
                self.generation_id = self._record["generation_id"]

    # -- queries --------------------------------------------------------

    def _region(self, offset: object, length: object) -> tuple[int, int]:
        start = as_int(offset, "offset")
        if start < 0 or start > self.size:
            raise OutOfRangeError(f"offset {start} lies outside volume {self.name!r} of size {self.size}")
        if length is None:
            return start, self.size
        span = as_int(length, "length")
        if span < 0 or span > self.size - start:
            raise OutOfRangeError(
                f"region [{start}, {start}+{span}) lies outside volume {self.name!r} of size {self.size}"
            )
        return start, start + span

    def _answer(self, since: Checkpoint, until: Checkpoint | None, lo: int, hi: int) -> Extents:
        gid = self.generation_id
        if hi <= lo:
            return Extents(np.empty(0), np.empty(0), granularity=self.granularity, generation_id=gid)
        self._drain()
        if since.generation <= self._lost:
            # Tracking was lost in an unclean shutdown: everything may have changed.
            return Extents(
                np.array([lo]), np.array([hi - lo]), granularity=self.granularity, exact=False, generation_id=gid
            )
        c_lo = lo >> self._shift
        c_hi = (hi + self.granularity - 1) >> self._shift
        try:
            with self._io.cache.scan():
                spans, exact = self._history.changed(
                    since.generation, None if until is None else until.generation, c_lo, c_hi
                )
        except CorruptionError as exc:
            # A page knows only the volume's id; name what the caller asked.
            asked = f"checkpoint {since.name!r}" if until is None else f"checkpoints {since.name!r} and {until.name!r}"
            raise CorruptionError(f"volume {self.name!r}, {asked}: {exc}") from exc
        offsets, lengths = spans.runs(c_lo, c_hi, self._shift, lo, hi)
        exact = exact and since.generation > self._superset
        return Extents(offsets, lengths, granularity=self.granularity, exact=exact, generation_id=gid)

    @guarded
    def changed_since(self, name: str, offset: int = 0, length: int | None = None) -> Extents:
        """Byte ranges written after checkpoint ``name`` was created."""
        lo, hi = self._region(offset, length)
        with self._lock:
            self._check_open()
            return self._answer(self._lookup(name), None, lo, hi)

    @guarded
    def changed_between(
        self, older: str, newer: str, offset: int = 0, length: int | None = None
    ) -> Extents:
        """Byte ranges written between two checkpoints (a superset where ``exact`` is False)."""
        lo, hi = self._region(offset, length)
        with self._lock:
            self._check_open()
            a, b = self._lookup(older), self._lookup(newer)
            if a.generation >= b.generation:
                raise InvalidArgumentError(
                    f"checkpoint {older!r} is not older than {newer!r}; pass the older one first"
                )
            return self._answer(a, b, lo, hi)

    # -- persistence and costs --------------------------------------------

    @guarded
    def flush(self) -> None:
        """Persist what RAM holds, so that a crash from here loses nothing."""
        with self._commit_lock, self._lock:
            self._check_writable()
            self._transact(self._history.flush, persists=True)

    @contextlib.contextmanager
    def _snapshot_or_latest(self) -> Iterator[Any]:
        if self._io.snapshot is not None:
            yield self._io.snapshot
        else:
            with self._storage.reading() as txn:
                yield txn

    @guarded
    def stats(self) -> dict[str, Any]:
        """Honest costs: bitmap RAM (active, arrays, cache), bytes in LMDB, cache counters."""
        with self._lock:
            self._check_open()
            self._drain()
            # A reader measures its own snapshot, like everything else it reports.
            with self._snapshot_or_latest() as txn:
                disk = self._io.disk_bytes(txn)
                for db, prefix in ((self._storage.checkpoints, volume_key(self._id)),):
                    disk += sum(len(k) + len(v) for k, v in self._storage.scan_prefix(txn, db, prefix))
                rec = txn.get(volume_key(self._id), db=self._storage.volumes)
                disk += len(rec or b"") + 8
            cache = self._io.cache
            return {
                "volume": self.name,
                "mode": self.strategy.mode,
                "size": self.size,
                "granularity": self.granularity,
                "chunks": self._n_chunks,
                "checkpoints": len(self._checkpoints),
                "generation": self._gen,
                "ram_bytes": self._history.ram_bytes() + cache.nbytes + PENDING_MARKS * 16 + self._sync.ram_bytes,
                "history_ram_bytes": self._history.ram_bytes(),
                "cache_bytes": cache.nbytes,
                "cache_budget_bytes": cache.max_bytes,
                "cache_hits": cache.hits,
                "cache_misses": cache.misses,
                "disk_bytes": disk,
                "unflushed": self._unflushed,
                "unclean_shutdown": self.unclean_shutdown,
                "durability": self.durability,
                "generation_id": self.generation_id,
                "sync_commits": self._sync.commits,
                "sync_waits": self._sync.waits,
                "sync_writes": self._sync.new_writes,
                "journal_entries": int(self._record.get("journal_count", 0)),
            }

    @guarded
    def close(self) -> None:
        """Persist the active state and release the volume (idempotent).

        If persisting fails (StoreFullError, StorageError) the volume stays
        open and unchanged: call close() again once space is freed.
        """
        with self._commit_lock, self._lock:
            if self._closed:
                return
            if self._storage.readonly:
                if self._io.snapshot is not None:
                    if self._epoch == self._storage.epoch:  # else a remap already ended it
                        self._io.snapshot.abort()
                    self._io.snapshot = None
            else:
                self._transact(self._history.flush, persists=True)
            self._closed = True
            self._update_marking()
            self._store._forget(self.name)

    def _detach(self) -> None:
        """The volume was removed from its store: refuse any further use."""
        with self._lock:  # the store holds _commit_lock
            self._closed = True
            self._update_marking()

    def __repr__(self) -> str:
        return (
            f"<tiered.Volume {self.name!r} size={self.size} granularity={self.granularity} "
            f"mode={self.strategy.mode} checkpoints={len(self._checkpoints)}>"
        )

    # -- transfer (tiered/transfer/) --------------------------------------

    @guarded
    def dump(self, file: Any) -> dict[str, Any]:
        """Write this volume's settings, checkpoints, pages and active state
        to ``file`` (a path or a binary file object) as a dump stream that
        :meth:`Store.load` reads.  See :func:`tiered.transfer.dump_volume`."""
        from .transfer.dump import dump_volume

        return dump_volume(self, file)
