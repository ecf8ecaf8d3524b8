"""A store: one LMDB environment holding many volumes.

Opening checks the store's format (:mod:`tiered.storage.versions`); a
writer upgrades a format-1 store to format 2 in place, after checking every
volume's record, checkpoints and catalog (:mod:`tiered.integrity`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from typing import Any

from .storage.codec import pack_json, unpack_json
from .config import Strategy
from .errors import (
    AlreadyExistsError,
    ClosedError,
    CorruptionError,
    ReadOnlyError,
    TieredError,
    VolumeNotFoundError,
)
from .storage.codec import FORMAT_VERSION
from .storage.environment import Storage, guarded
from .storage.keys import checkpoint_key_gen, key_digest, parse_page_key, parse_volume_key, volume_key
from .storage.versions import format_record, read_format, upgrade_v1
from .checks import as_int, check_geometry
from .integrity import check_history, check_owned, check_record
from .storage.journal import delete_entries
from .volume import Volume, check_name
from .volume_sync import check_durability

NEXT_VOLUME_KEY = b"next_volume"


def open(path: str, readonly: bool = False, *, sync: bool = True, map_size: int | None = None) -> "Store":  # noqa: A001
    """Open (or create) the store at ``path``.

    ``sync=False`` skips fsync at commit: faster, but a power loss may then
    undo recent checkpoints (never corrupt the store).  ``map_size`` is only
    the starting size; the map grows by itself.  A writer creates a store
    only in a missing or empty directory.  Raises InvalidArgumentError (an
    empty path), NotAStoreError, CorruptionError, StoreBusyError,
    StorageError or StoreFullError; a failed open leaves nothing behind.
    """
    return Store(path, readonly=readonly, sync=sync, map_size=map_size)


class Store:
    """Many volumes in one LMDB environment.  Use as a context manager."""

    def __init__(self, path: str, *, readonly: bool = False, sync: bool = True, map_size: int | None = None) -> None:
        self._storage = Storage(path, readonly=readonly, sync=sync, map_size=map_size, init=self._init_meta)
        self._lock = threading.Lock()
        self._open: dict[str, Volume] = {}
        self._closed = False
        try:
            with self._storage.reading() as txn:
                version = read_format(self._storage, txn)
            if version == 1 and not readonly:
                self._storage.write(self._upgrade)
            self._ids = self._load_names()
        except BaseException:
            self._storage.close()
            raise

    @property
    def path(self) -> str:
        return self._storage.path

    @property
    def readonly(self) -> bool:
        return self._storage.readonly

    @staticmethod
    def _init_meta(txn: Any, dbs: dict[bytes, Any]) -> None:
        """Write the records of a new store, in the transaction that creates it."""
        txn.put(b"format", format_record(), db=dbs[b"meta"])
        txn.put(NEXT_VOLUME_KEY, pack_json({"id": 1}, NEXT_VOLUME_KEY), db=dbs[b"meta"])

    def _upgrade(self, txn: Any) -> None:
        """Rewrite a format-1 store in format 2, in one transaction."""
        # Check what every volume means before the upgrade gives its values
        # format-2 checksums; any failure aborts the transaction.
        self._read_names(txn, 1, deep=True)
        upgrade_v1(self._storage, txn)

    def _read_names(self, txn: Any, version: int, deep: bool = False) -> dict[str, int]:
        """Volume names -> ids, each record checked; ``deep`` also checks
        each volume's checkpoints and catalog (keys only)."""
        ids: dict[str, int] = {}
        db = self._storage
        for key, value in db.scan_prefix(txn, db.volumes, b""):
            vol_id = parse_volume_key(key)
            record = unpack_json(value, key, version, f"volume record {bytes(key).hex()}")
            strategy = check_record(vol_id, record, version)
            if record["name"] in ids:
                raise CorruptionError(f"two volume records name {record['name']!r} (ids {ids[record['name']]} and {vol_id})")
            ids[record["name"]] = vol_id
            if deep:
                prefix = volume_key(vol_id)
                checkpoints = [
                    (checkpoint_key_gen(k, vol_id), unpack_json(v, k, version, f"checkpoint of volume {vol_id}"))
                    for k, v in db.scan_prefix(txn, db.checkpoints, prefix)
                ]
                tables: set[tuple[bytes, int]] = set()
                digest = 0
                for k, _ in db.scan_prefix(txn, db.pages, prefix):
                    tables.add(parse_page_key(k, vol_id)[:2])
                    digest ^= key_digest(k)
                check_history(vol_id, record, strategy, checkpoints, sorted(tables), digest)
        # A volume whose record was lost must not just vanish (integrity.check_owned).
        for what, table in (("checkpoints", db.checkpoints), ("pages", db.pages), ("journal entries", db.journal)):
            if table is None:  # a store that predates the journal, opened read-only
                continue
            try:
                check_owned(ids.values(), db.key_owners(txn, table), what)
            except CorruptionError:
                if not deep:  # keys that left a volume with a record: name that volume
                    self._read_names(txn, version, deep=True)
                raise
        counter = txn.get(NEXT_VOLUME_KEY, db=db.meta)
        if counter is None:
            raise CorruptionError(f"{self.path!r} holds no volume counter")
        next_id = unpack_json(counter, NEXT_VOLUME_KEY, version, "volume counter").get("id")
        if (
            not isinstance(next_id, int)
            or isinstance(next_id, bool)
            or not max(ids.values(), default=0) < next_id < 1 << 63
        ):
            raise CorruptionError(f"volume counter {next_id!r} is not above every volume id (and below 2**63)")
        return ids

    def _load_names(self) -> dict[str, int]:
        with self._storage.reading() as txn:
            return self._read_names(txn, read_format(self._storage, txn))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self.path!r} is closed")

    # -- volumes --------------------------------------------------------

    def _refresh_names(self) -> None:
        # A writer may add or remove volumes under a reader at any time.
        if self.readonly:
            self._ids = self._load_names()

    @guarded
    def volumes(self) -> list[str]:
        """Names of the volumes in the store, sorted."""
        with self._lock:
            self._check_open()
            self._refresh_names()
            return sorted(self._ids)

    @guarded
    def create_volume(
        self,
        name: str,
        size: int,
        granularity: int = 64 << 10,
        strategy: Strategy | str | None = None,
        durability: str = "lazy",
    ) -> Volume:
        """Create a volume of ``size`` bytes tracked in chunks of ``granularity`` bytes.

        ``durability`` is ``"lazy"`` (marks persist at flush, checkpoint and
        close; after a crash, answers are flagged supersets) or ``"sync"``
        (crash-exact: see :meth:`Volume.sync`).  Raises
        InvalidArgumentError, AlreadyExistsError, ReadOnlyError,
        ClosedError, StoreFullError or StorageError.
        """
        check_name(name, "volume")
        durability = check_durability(durability)
        size = as_int(size, "size")
        granularity = as_int(granularity, "granularity")
        chosen = Strategy.coerce(strategy)
        check_geometry(size, granularity)
        with self._lock:
            self._check_open()
            if self._storage.readonly:
                raise ReadOnlyError(f"store {self.path!r} is open read-only")
            if name in self._ids:
                raise AlreadyExistsError(f"store already has a volume {name!r}")
            record: dict[str, Any] = {
                "name": name,
                "size": size,
                "granularity": granularity,
                "strategy": chosen.fixed(),
                "generation": 0,
                "lost_generation": 0,
                "unflushed": False,
                "checkpoints": 0,
                "pages_digest": 0,
                "created": time.time(),
                "durability": durability,
                "generation_id": str(uuid.uuid4()),
            }

            def body(txn: Any) -> int:
                counter = unpack_json(
                    txn.get(NEXT_VOLUME_KEY, db=self._storage.meta), NEXT_VOLUME_KEY, FORMAT_VERSION, "volume counter"
                )
                vol_id = counter["id"]
                txn.put(NEXT_VOLUME_KEY, pack_json({"id": vol_id + 1}, NEXT_VOLUME_KEY), db=self._storage.meta)
                key = volume_key(vol_id)
                txn.put(key, pack_json({**record, "id": vol_id}, key), db=self._storage.volumes)
                return vol_id

            vol_id = self._storage.write(body)
            self._ids[name] = vol_id
            return self._open_volume(name, chosen)

    @guarded
    def volume(self, name: str, strategy: Strategy | str | None = None) -> Volume:
        """An existing volume.  ``strategy``, if given, must match the stored
        settings; only its ``cache_bytes`` may differ."""
        check_name(name, "volume")
        with self._lock:
            self._check_open()
            if name not in self._open:
                self._refresh_names()
            if name not in self._ids:
                raise VolumeNotFoundError(f"store has no volume {name!r}")
            vol = self._open.get(name)
            if vol is not None:
                if strategy is not None:
                    Strategy.coerce(strategy).check_compatible(vol.strategy.fixed(), name)
                return vol
            return self._open_volume(name, None if strategy is None else Strategy.coerce(strategy))

    def _open_volume(self, name: str, strategy: Strategy | None) -> Volume:
        vol = self._load_volume(name, self._ids[name], strategy)
        self._open[name] = vol
        return vol

    def _load_volume(
        self, name: str, vol_id: int, strategy: Strategy | None, cache_bytes: int | None = None
    ) -> Volume:
        # A reader keeps the transaction it loaded the volume in, so that its
        # catalog and the pages it reads later come from one snapshot even
        # while another process writes.
        txn = self._storage.begin_read()
        try:
            key = volume_key(vol_id)
            value = txn.get(key, db=self._storage.volumes)
            if value is None:  # removed by the writer since this reader listed it
                raise VolumeNotFoundError(f"store has no volume {name!r}")
            version = read_format(self._storage, txn)
            record = unpack_json(value, key, version, f"volume record of {name!r}")
            stored_strategy = check_record(vol_id, record, version)
            if record["name"] != name:
                raise CorruptionError(f"volume record of {name!r} names {record['name']!r}")
            if strategy is None:
                strategy = stored_strategy
                if cache_bytes is not None:
                    strategy = dataclasses.replace(strategy, cache_bytes=cache_bytes)
            else:
                strategy.check_compatible(record["strategy"], name)
            vol = Volume(self, record, strategy, txn)
        except BaseException:
            txn.abort()
            raise
        if self.readonly:
            vol._io.snapshot = txn
        else:
            txn.abort()
        return vol

    def _reload(self, vol: Volume) -> None:
        """Give a read-only volume a new snapshot (under the volume's lock).

        A remap of the store (the writer grew the file past this reader's
        map) ends every read transaction of the process; the volume then
        shows the latest committed state, as if closed and opened again.
        Raises VolumeNotFoundError (and closes it) if the writer removed it.
        """
        with contextlib.suppress(Exception):
            vol._io.snapshot.abort()  # already ended by the remap
        vol._io.snapshot = None
        try:
            fresh = self._load_volume(vol.name, vol._id, None, vol.strategy.cache_bytes)
        except VolumeNotFoundError:
            vol._closed = True
            if self._open.get(vol.name) is vol:
                self._open.pop(vol.name)
            raise VolumeNotFoundError(f"volume {vol.name!r} was removed from the store") from None
        vars(vol).update({k: v for k, v in vars(fresh).items() if k != "_lock"})

    @guarded
    def remove_volume(self, name: str) -> None:
        """Delete a volume and all its history."""
        check_name(name, "volume")
        with self._lock:
            self._check_open()
            if name not in self._ids:
                raise VolumeNotFoundError(f"store has no volume {name!r}")
            vol_id = self._ids[name]
            prefix = volume_key(vol_id)
            vol = self._open.get(name)

            def body(txn: Any) -> None:
                txn.delete(prefix, db=self._storage.volumes)
                self._storage.delete_prefix(txn, self._storage.checkpoints, prefix)
                self._storage.delete_prefix(txn, self._storage.pages, prefix)
                delete_entries(self._storage, txn, vol_id)

            # An open volume's sync leader must not commit a journal entry
            # for a volume that no longer exists.
            with vol._commit_lock if vol is not None else contextlib.nullcontext():
                self._storage.write(body)
                if vol is not None:
                    vol._detach()
            self._open.pop(name, None)
            del self._ids[name]

    def _forget(self, name: str) -> None:
        self._open.pop(name, None)

    # -- lifetime -------------------------------------------------------

    def close(self) -> None:
        """Close every open volume (persisting its active state), then the store.

        If a volume cannot persist its state (a full disk: StoreFullError),
        the others are still closed, then the first error is raised and the
        store stays open with that volume open and unchanged, so that
        ``close()`` can be called again once space is freed.  (A process
        that exits instead loses nothing it was told was persisted: the
        volume's next open reports ``unclean_shutdown``.)
        """
        if self._closed:
            return
        failed: BaseException | None = None
        for vol in list(self._open.values()):
            try:
                vol.close()
            except TieredError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        self._closed = True
        self._storage.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"<tiered.Store {self.path!r} {state}>"

    # -- transfer (tiered/transfer/) --------------------------------------

    @guarded
    def load(self, file: Any, name: str | None = None) -> Volume:
        """Add the volume dumped by :meth:`Volume.dump` in ``file`` (a path
        or a binary file object), as ``name`` or its dumped name, all or
        nothing; returns it open.  See :func:`tiered.transfer.load_volume`."""
        from .transfer.load import load_volume

        return load_volume(self, file, name)

    @guarded
    def backup(self, path: Any) -> dict[str, Any]:
        """Copy the whole store, consistent and compacted, into ``path`` (a
        missing or empty directory).  See :func:`tiered.transfer.backup_store`."""
        from .transfer.backup import backup_store

        return backup_store(self, path)

    # -- checking (tiered/fsck/) ------------------------------------------

    def check(self, volume: str | None = None, repair: bool = False, remove_unreadable: bool = False) -> Any:
        """Check every stored value and key (or one volume's); with
        ``repair=True`` contain the damage (:mod:`tiered.fsck`, docs/api.md)."""
        from .fsck import check_store

        return check_store(self, volume, repair, remove_unreadable)
