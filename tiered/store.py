"""A store: one LMDB environment holding many volumes."""

from __future__ import annotations

import threading
import time
from typing import Any

from .storage.codec import pack_json, unpack_json
from .config import Strategy
from .errors import (
    AlreadyExistsError,
    ClosedError,
    CorruptionError,
    ReadOnlyError,
    VolumeNotFoundError,
)
from .storage.environment import Storage
from .storage.keys import volume_key
from .checks import as_int, check_geometry
from .volume import Volume, check_name

FORMAT = 1
def open(path: str, readonly: bool = False, *, sync: bool = True, map_size: int | None = None) -> "Store":  # noqa: A001
    """Open (or create) the store at ``path``.

    ``sync=False`` skips fsync at commit: faster, but a power loss may then
    undo recent checkpoints (never corrupt the store).  ``map_size`` is only
    the starting size; the map grows by itself.
    """
    return Store(path, readonly=readonly, sync=sync, map_size=map_size)


class Store:
    """Many volumes in one LMDB environment.  Use as a context manager."""

    def __init__(self, path: str, *, readonly: bool = False, sync: bool = True, map_size: int | None = None) -> None:
        self._storage = Storage(path, readonly=readonly, sync=sync, map_size=map_size)
        self._lock = threading.Lock()
        self._open: dict[str, Volume] = {}
        self._closed = False
        try:
            if readonly:
                with self._storage.reading() as txn:
                    self._check_format(txn.get(b"format", db=self._storage.meta))
            else:
                self._storage.write(self._init_meta)
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

    def _init_meta(self, txn: Any) -> None:
        value = txn.get(b"format", db=self._storage.meta)
        if value is None:
            txn.put(b"format", pack_json({"format": FORMAT}), db=self._storage.meta)
            txn.put(b"next_volume", pack_json({"id": 1}), db=self._storage.meta)
            return
        self._check_format(value)

    def _check_format(self, value: bytes | None) -> None:
        if value is None:
            raise CorruptionError(f"{self.path!r} holds no tiered format record")
        fmt = unpack_json(value, "store format record").get("format")
        if fmt != FORMAT:
            raise CorruptionError(f"store format {fmt}, this tiered reads format {FORMAT}")

    def _load_names(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        with self._storage.reading() as txn:
            for key, value in self._storage.scan_prefix(txn, self._storage.volumes, b""):
                record = unpack_json(value, f"volume record {key.hex()}")
                ids[record["name"]] = record["id"]
        return ids

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"store {self.path!r} is closed")

    # -- volumes --------------------------------------------------------

    def _refresh_names(self) -> None:
        # A writer may add or remove volumes under a reader at any time.
        if self.readonly:
            self._ids = self._load_names()

    def volumes(self) -> list[str]:
        """Names of the volumes in the store, sorted."""
        with self._lock:
            self._check_open()
            self._refresh_names()
            return sorted(self._ids)

    def create_volume(
        self,
        name: str,
        size: int,
        granularity: int = 64 << 10,
        strategy: Strategy | str | None = None,
    ) -> Volume:
        """Create a volume of ``size`` bytes tracked in chunks of ``granularity`` bytes."""
        check_name(name, "volume")
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
                "created": time.time(),
            }

            def body(txn: Any) -> int:
                counter = unpack_json(txn.get(b"next_volume", db=self._storage.meta), "volume counter")
                vol_id = counter["id"]
                txn.put(b"next_volume", pack_json({"id": vol_id + 1}), db=self._storage.meta)
                txn.put(volume_key(vol_id), pack_json({**record, "id": vol_id}), db=self._storage.volumes)
                return vol_id

            vol_id = self._storage.write(body)
            self._ids[name] = vol_id
            return self._open_volume(name, chosen)

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
        # A reader keeps the transaction it loaded the volume in, so that its
        # catalog and the pages it reads later come from one snapshot even
        # while another process writes.
        txn = self._storage.begin_read()
        try:
            value = txn.get(volume_key(self._ids[name]), db=self._storage.volumes)
            if value is None:  # removed by the writer since this reader listed it
                raise VolumeNotFoundError(f"store has no volume {name!r}")
            record = unpack_json(value, f"volume record of {name!r}")
            stored = record["strategy"]
            if strategy is None:
                strategy = Strategy(**stored)
            else:
                strategy.check_compatible(stored, name)
            vol = Volume(self, record, strategy, txn)
        except BaseException:
            txn.abort()
            raise
        if self.readonly:
            vol._io.snapshot = txn
        else:
            txn.abort()
        self._open[name] = vol
        return vol

    def remove_volume(self, name: str) -> None:
        """Delete a volume and all its history."""
        check_name(name, "volume")
        with self._lock:
            self._check_open()
            if name not in self._ids:
                raise VolumeNotFoundError(f"store has no volume {name!r}")
            vol_id = self._ids[name]
            prefix = volume_key(vol_id)

            def body(txn: Any) -> None:
                txn.delete(prefix, db=self._storage.volumes)
                self._storage.delete_prefix(txn, self._storage.checkpoints, prefix)
                self._storage.delete_prefix(txn, self._storage.pages, prefix)

            self._storage.write(body)
            vol = self._open.pop(name, None)
            if vol is not None:
                vol._detach()
            del self._ids[name]

    def _forget(self, name: str) -> None:
        self._open.pop(name, None)

    # -- lifetime -------------------------------------------------------

    def close(self) -> None:
        """Close every open volume (persisting its active state), then the store."""
        if self._closed:
            return
        for vol in list(self._open.values()):
            vol.close()
        self._closed = True
        self._storage.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"<tiered.Store {self.path!r} {state}>"
