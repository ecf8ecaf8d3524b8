"""The LMDB layout: one environment per store, four sub-databases.

``meta``
    ``b"format"`` -> JSON ``{"format": 2}``; ``b"next_volume"`` -> JSON counter.
``volumes``
    volume id (8 bytes big-endian) -> JSON volume record (name, geometry,
    strategy, generation counter, clean flag...).
``checkpoints``
    volume id + generation (8 + 8 bytes) -> JSON ``{"name", "created"}``.
``pages``
    volume id + tag + generation + page (8 + 1 + 8 + 8 bytes) -> encoded page.
    Tags: ``W`` sealed writeset of one period, ``A`` snapshot of the active
    writeset taken by flush, ``G`` generation array.

Names live inside values, not keys, because LMDB keys stop at 511 bytes and
names may take 1023.  Storage knows keys and bytes, never strategies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from ..errors import ReadOnlyError, StoreBusyError, TieredError

T = TypeVar("T")

INITIAL_MAP_SIZE = 64 << 20
WRITER_LOCK = "writer.lock"
MAX_DBS = 4

# One Environment per path per process: LMDB forbids opening the same
# environment twice in one process (locks are per process).
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


class Storage:
    """An LMDB environment that grows its map by itself."""

    def __init__(self, path: str, *, readonly: bool, sync: bool, map_size: int | None) -> None:
        # realpath: the same store reached through a symlink is the same store
        self.path = os.path.realpath(path)
        self.readonly = readonly
        with _open_paths_lock:
            if self.path in _open_paths:
                raise StoreBusyError(
                    f"store {self.path!r} is already open in this process; share the open store"
                )
            _open_paths.add(self.path)
        self._writer_lock: int | None = None
        try:
            if not readonly:
                os.makedirs(self.path, exist_ok=True)
                self._writer_lock = self._lock_writer()
            elif not os.path.isdir(self.path):
                raise TieredError(f"no store at {self.path!r}")
            try:
                self.env = self._open_env(readonly, sync, max(map_size or 0, INITIAL_MAP_SIZE), lock=True)
            except lmdb.Error as exc:
                if not readonly:
                    raise TieredError(f"cannot open store {self.path!r}: {exc}") from None
                # A store on read-only media cannot take the reader lock; read
                # it without (safe only while no writer runs).
                try:
                    self.env = self._open_env(readonly, sync, INITIAL_MAP_SIZE, lock=False)
                except lmdb.Error as exc2:
                    raise TieredError(f"cannot open store {self.path!r}: {exc2}") from None
            create = not readonly
            try:
                self.meta = self.env.open_db(b"meta", create=create)
                self.volumes = self.env.open_db(b"volumes", create=create)
                self.checkpoints = self.env.open_db(b"checkpoints", create=create)
                self.pages = self.env.open_db(b"pages", create=create)
            except lmdb.Error as exc:
                self.env.close()
                raise TieredError(f"{self.path!r} is not a tiered store: {exc}") from None
        except BaseException:
            self._unlock_writer()
            with _open_paths_lock:
                _open_paths.discard(self.path)
            raise
        self._closed = False

    def _lock_writer(self) -> int:
        """Take the store's single-writer lock, or fail at once.

        The active state of a volume lives in the RAM of the process that
        marks it: two writers would each seal their own half of the writes.
        """
        fd = os.open(os.path.join(self.path, WRITER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreBusyError(
                f"store {self.path!r} is open for writing in another process, and a store has one "
                "writer at a time: stop that process and retry, or open the store readonly=True to read"
            ) from None
        return fd

    def _unlock_writer(self) -> None:
        if self._writer_lock is not None:
            os.close(self._writer_lock)  # closing the descriptor releases the lock
            self._writer_lock = None

    def _open_env(self, readonly: bool, sync: bool, map_size: int, lock: bool) -> lmdb.Environment:
        # A reader's map_size is only a starting point: LMDB adopts the
        # writer's larger size when it opens the environment.
        return lmdb.open(
            self.path,
            subdir=True,
            readonly=readonly,
            map_size=map_size,
            max_dbs=MAX_DBS,
            sync=sync,
            metasync=sync,
            lock=lock,
            max_readers=126,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.env.close()
        self._unlock_writer()
        with _open_paths_lock:
            _open_paths.discard(self.path)

    def begin_read(self, buffers: bool = False) -> lmdb.Transaction:
        """A read transaction, adopting a map the writer has grown meanwhile."""
        try:
            try:
                return self.env.begin(write=False, buffers=buffers)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # 0: take the size the writer set
                return self.env.begin(write=False, buffers=buffers)
        except lmdb.ReadersFullError:
            raise TieredError(
                f"store {self.path!r} has no free reader slot: close some read-only volumes or stores"
            ) from None

    @contextmanager
    def reading(self) -> Iterator[lmdb.Transaction]:
        txn = self.begin_read()
        try:
            yield txn
        finally:
            txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction and commit it.

        ``fn`` must only write to the transaction, never change state in RAM:
        when the map is full it is run again from scratch in a larger map.
        """
        if self.readonly:
            raise ReadOnlyError(f"store {self.path!r} is open read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow_map()

    def _grow_map(self) -> None:
        current = self.env.info()["map_size"]
        # Doubling keeps the number of retries logarithmic in the data size.
        self.env.set_mapsize(current * 2)

    def disk_bytes(self) -> int:
        """Bytes the environment occupies in its files (the used part of the map)."""
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def scan_prefix(self, txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        cursor = txn.cursor(db)
        if not cursor.set_range(prefix):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            yield key, value

    def delete_prefix(self, txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
        cursor = txn.cursor(db)
        removed = 0
        if not cursor.set_range(prefix):
            return 0
        # delete() moves the cursor to the next key (b"" past the end)
        while cursor.key().startswith(prefix):
            cursor.delete()
            removed += 1
        return removed
