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
``journal``
    volume id + sequence number (8 + 8 bytes) -> chunks a sync-mode volume
    dirtied since its last flush (:mod:`tiered.storage.journal`).  Stores
    written before it existed lack it; a writer adds it when it opens one.

Names live inside values, not keys, because LMDB keys stop at 511 bytes and
names may take 1023.  Storage knows keys and bytes, never strategies.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import threading
import contextlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import lmdb

from ..errors import (
    CorruptionError,
    InvalidArgumentError,
    NotAStoreError,
    ReadOnlyError,
    StorageError,
    StoreBusyError,
    StoreFullError,
    TieredError,
)
from .lmdbfile import DATA_FILE, check_data_file

T = TypeVar("T")

INITIAL_MAP_SIZE = 64 << 20
# A reader maps this much address space (not memory) from the start, so that
# a writer growing the file rarely forces a remap, which would end every
# read transaction of the process (see Storage.begin_read).
READER_MAP_SIZE = 1 << 40
#: Written by tiered before 0.2; still honoured so an older writer excludes a newer one.
LEGACY_WRITER_LOCK = "writer.lock"
LOCK_FILE = "lock.mdb"
DB_NAMES = (b"meta", b"volumes", b"checkpoints", b"pages", b"journal")
#: Databases a store may lack: it was written before they existed.
OPTIONAL_DBS = (b"journal",)
MAX_DBS = len(DB_NAMES)
# Below this much free space, an I/O error at commit is taken for a full disk:
# LMDB reports a write cut short by a full disk as EIO, not ENOSPC.
NEARLY_FULL_BYTES = 16 << 20

# One Environment per path per process: LMDB forbids opening the same
# environment twice in one process (locks are per process).
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


def check_path(path: object) -> str:
    """A store path as a non-empty str, or InvalidArgumentError."""
    try:
        text = os.fspath(path)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(f"store path must be a str or path-like, got {type(path).__name__}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        # "" would silently put a store in the current directory
        raise InvalidArgumentError("store path must not be empty")
    return text


def _code(exc: lmdb.Error) -> int | None:
    """The errno (or LMDB code) behind an lmdb error, if it carries one."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code:
        return code
    text = str(exc)
    for known in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES):
        if text.endswith(os.strerror(known)):
            return known
    return None


class Storage:
    """An LMDB environment that grows its map by itself.

    Every lmdb exception is turned into a :class:`TieredError` here (see
    :meth:`error`); callers outside reach LMDB through :func:`guarded` methods.
    """

    #: Called with no argument just before each write transaction commits;
    #: raising aborts it exactly as a failed commit would.  None in normal
    #: use: it lets tests fail the k-th commit the way a full disk does.
    commit_hook: Callable[[], None] | None = None

    def __init__(
        self,
        path: object,
        *,
        readonly: bool,
        sync: bool,
        map_size: int | None,
        init: Callable[[lmdb.Transaction, dict[bytes, Any]], None] | None = None,
    ) -> None:
        """Open the environment at ``path``.

        A writer creates a store in a missing or empty directory, calling
        ``init(txn, dbs)`` in the transaction that creates the sub-databases.
        Raises InvalidArgumentError (bad path), NotAStoreError (a regular
        file, a foreign LMDB environment, a non-empty directory without a
        store, or for a reader no store), CorruptionError (a truncated or
        damaged data file), StoreBusyError, StorageError or StoreFullError.
        """
        # realpath: the same store reached through a symlink is the same store
        self.path = os.path.realpath(check_path(path))
        self.readonly = readonly
        self._closed = True
        #: Bumped whenever a remap ended the process's read transactions.
        self.epoch = 0
        #: Held around every remap, and by :meth:`pinned_map`.
        self._remap_lock = threading.RLock()
        # Short reads pin the map (:meth:`reading`); growing it waits until
        # none is pinned, and new pins wait while it grows.  Write
        # transactions of the process take turns (LMDB allows one anyway)
        # so that none is open while another thread grows the map.
        self._pins = 0
        self._growing = False
        self._pin_cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        with _open_paths_lock:
            if self.path in _open_paths:
                raise StoreBusyError(
                    f"store {self.path!r} is already open in this process; share the open store"
                )
            _open_paths.add(self.path)
        self._locks: list[int] = []
        self._locked = False
        made: list[str] = []  # what this open created, removed again if it fails
        self.env: lmdb.Environment | None = None
        try:
            if readonly:
                if not os.path.isdir(self.path) or not os.path.exists(os.path.join(self.path, DATA_FILE)):
                    raise NotAStoreError(f"no store at {self.path!r}")
            else:
                made = self._prepare_dir()
            check_data_file(self.path)
            self.env = self._open(readonly, sync, map_size)
            self._open_dbs(init)
        except BaseException:
            if self.env is not None:
                self.env.close()
            if self._locked and made:
                self._remove_created(made)
            self._unlock_writer()
            with _open_paths_lock:
                _open_paths.discard(self.path)
            raise
        self._closed = False

    # -- opening ----------------------------------------------------------

    def _prepare_dir(self) -> list[str]:
        """Create the directory if missing and take the writer lock.  Returns
        what a failed open must remove: the directories it created (as
        absolute paths), then the LMDB files that do not exist yet."""
        made: list[str] = []
        try:
            if os.path.lexists(self.path) and not os.path.isdir(self.path):
                raise NotAStoreError(f"{self.path!r} exists and is not a directory, so it cannot be a store")
            if not os.path.exists(self.path):
                # Every directory created here, deepest first, goes if the open fails.
                missing, parent = [], self.path
                while not os.path.lexists(parent):
                    missing.append(parent)
                    parent = os.path.dirname(parent)
                os.makedirs(self.path)
                made += missing  # absolute: self.path is a realpath
            self._lock_writer()
            present = set(os.listdir(self.path))
        except FileExistsError:
            raise NotAStoreError(f"{self.path!r} exists and is not a directory, so it cannot be a store") from None
        except OSError as exc:
            raise StorageError(f"cannot open store directory {self.path!r}: {exc.strerror or exc}") from None
        if DATA_FILE not in present and present - {LOCK_FILE, LEGACY_WRITER_LOCK}:
            raise NotAStoreError(
                f"{self.path!r} is a non-empty directory that holds no tiered store; "
                "a new store needs a missing or empty directory"
            )
        made += [f for f in (DATA_FILE, LOCK_FILE) if f not in present]
        return made

    def _remove_created(self, made: list[str]) -> None:
        """Undo what a failed open created (the lock is still held)."""
        for name in made:
            if not os.path.isabs(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.path, name))
        for name in made:
            if os.path.isabs(name):
                with contextlib.suppress(OSError):
                    os.rmdir(name)

    def _lock_writer(self) -> None:
        """Take the store's single-writer lock, or fail at once.

        The active state of a volume lives in the RAM of the process that
        marks it: two writers would each seal their own half of the writes.
        The lock is an flock on the store directory itself, which no one
        deletes by mistake while the store is in use (a lock file could be).
        """
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        self._locks.append(fd)
        legacy = os.path.join(self.path, LEGACY_WRITER_LOCK)
        if os.path.exists(legacy):
            self._locks.append(os.open(legacy, os.O_RDONLY))  # flock needs no write access
        for fd in self._locks:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusyError(
                    f"store {self.path!r} is open for writing in another process, and a store has one "
                    "writer at a time: stop that process and retry, or open the store readonly=True to read"
                ) from None
        self._locked = True

    def _unlock_writer(self) -> None:
        self._locked = False
        while self._locks:
            os.close(self._locks.pop())  # closing the descriptor releases the lock

    def _open(self, readonly: bool, sync: bool, map_size: int | None) -> lmdb.Environment:
        size = max(map_size or 0, INITIAL_MAP_SIZE)
        try:
            if not readonly:
                return self._open_env(readonly, sync, size, lock=True)
            try:
                return self._open_env(readonly, sync, max(size, READER_MAP_SIZE), lock=True)
            except lmdb.InvalidError:
                raise
            except lmdb.Error:
                # A store on read-only media cannot take the reader lock; read
                # it without (safe only while no writer runs).
                return self._open_env(readonly, sync, max(size, READER_MAP_SIZE), lock=False)
        except lmdb.Error as exc:
            raise self.error(exc, "open") from None

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

    def _open_dbs(self, init: Callable[[lmdb.Transaction, dict[bytes, Any]], None] | None) -> None:
        """Recognise the store by its own databases and format record, or
        create them (one transaction) in an empty environment."""
        env = self.env
        assert env is not None
        try:
            with env.begin() as txn:
                names = {key for key, _ in txn.cursor()}
            if not names:
                if self.readonly or init is None:
                    raise NotAStoreError(f"{self.path!r} holds no tiered store")
                with env.begin(write=True) as txn:
                    dbs = {name: env.open_db(name, txn=txn, create=True) for name in DB_NAMES}
                    init(txn, dbs)
                    if self.commit_hook is not None:
                        self.commit_hook()
            else:
                foreign = sorted(n.decode("utf-8", "replace") for n in names - set(DB_NAMES))
                if foreign or b"meta" not in names:
                    raise NotAStoreError(
                        f"{self.path!r} is an LMDB environment that is not a tiered store "
                        f"(it holds {', '.join(foreign) or 'no tiered meta database'}); it was left unchanged"
                    )
                dbs = {name: env.open_db(name, create=False) for name in DB_NAMES if name in names}
                with env.begin() as txn:
                    if txn.get(b"format", db=dbs[b"meta"]) is None:
                        raise NotAStoreError(
                            f"{self.path!r} is an LMDB environment without a tiered format record; "
                            "it was left unchanged"
                        )
                missing = [n.decode() for n in DB_NAMES if n not in dbs and n not in OPTIONAL_DBS]
                if missing:
                    raise CorruptionError(f"store {self.path!r} lacks its {', '.join(missing)} database")
                if not self.readonly:
                    with env.begin(write=True) as txn:
                        for name in OPTIONAL_DBS:
                            if name not in dbs:
                                dbs[name] = env.open_db(name, txn=txn, create=True)
        except lmdb.Error as exc:
            raise self.error(exc, "open") from None
        self.meta, self.volumes = dbs[b"meta"], dbs[b"volumes"]
        self.checkpoints, self.pages = dbs[b"checkpoints"], dbs[b"pages"]
        #: None in a store opened read-only that predates the journal.
        self.journal = dbs.get(b"journal")

    # -- errors -----------------------------------------------------------

    def _nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES

    def error(self, exc: lmdb.Error, doing: str) -> TieredError:
        """The TieredError that tells a user what an lmdb error means."""
        where = f"store {self.path!r}"
        if isinstance(exc, lmdb.MapFullError):
            return StoreFullError(f"{where}: the LMDB map is full and cannot grow ({exc}); nothing was changed")
        if isinstance(exc, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.VersionMismatchError)):
            return CorruptionError(f"{where} is damaged: {exc}")
        if isinstance(exc, lmdb.InvalidError):
            if doing == "open":
                return NotAStoreError(f"{self.path!r} holds a {DATA_FILE} that is not an LMDB file")
            return CorruptionError(f"{where} is damaged: {exc}")
        if isinstance(exc, lmdb.PanicError):
            return StorageError(
                f"{where}: LMDB stopped the environment after a failed write ({exc}); "
                "close the store and open it again"
            )
        if isinstance(exc, lmdb.ReadersFullError):
            return TieredError(f"{where} has no free reader slot: close some read-only volumes or stores")
        code = _code(exc)
        if code in (errno.ENOSPC, errno.EDQUOT) or (code == errno.EIO and self._nearly_full()):
            full = StoreFullError(
                f"{where}: the disk holding it is full ({doing} failed: {exc}); nothing was changed, "
                "and the store works again once space is freed"
            )
            full.errno = errno.ENOSPC
            return full
        failed = StorageError(f"{where}: {doing} failed ({exc}); nothing was changed")
        failed.errno = code if code and code > 0 else None
        return failed

    @contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """Turn lmdb errors raised inside into TieredErrors."""
        try:
            yield
        except lmdb.Error as exc:
            raise self.error(exc, doing) from None

    # -- transactions -------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            assert self.env is not None
            self.env.close()
        finally:
            self._unlock_writer()
            with _open_paths_lock:
                _open_paths.discard(self.path)

    def begin_read(self, buffers: bool = False) -> lmdb.Transaction:
        """A read transaction, adopting a map the writer has grown meanwhile."""
        assert self.env is not None
        try:
            try:
                return self.env.begin(write=False, buffers=buffers)
            except lmdb.MapResizedError:
                self._adopt_map()
                return self.env.begin(write=False, buffers=buffers)
        except lmdb.Error as exc:
            raise self.error(exc, "a read") from None

    def _adopt_map(self) -> None:
        """Map the space a writer has grown the file to.

        Remapping ends every read transaction of this process, so the map
        is made twice as large as needed (remaps stay rare) and ``epoch``
        tells the read-only volumes that their snapshots are gone.
        """
        assert self.env is not None
        with self._remap_lock:
            self.env.set_mapsize(0)  # 0: take the size the writer set
            info = self.env.info()
            self.env.set_mapsize(max(info["map_size"] * 2, READER_MAP_SIZE))
            self.epoch += 1

    @contextmanager
    def pinned_map(self) -> Iterator[None]:
        """No remap of this process's map happens inside (another thread
        that must grow or adopt the map waits).  For LMDB calls that read
        the map with a transaction of their own, out of the reach of
        py-lmdb's invalidation, such as ``env.copyfd``."""
        with self._remap_lock:
            yield

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """No thread of this process grows the map inside: a remap would end
        (or, for ``buffers=True`` reads, unmap under) the read transactions
        begun inside.  Nothing inside may write to the store."""
        with self._pin_cond:
            while self._growing:
                self._pin_cond.wait()
            self._pins += 1
        try:
            yield
        finally:
            with self._pin_cond:
                self._pins -= 1
                if not self._pins:
                    self._pin_cond.notify_all()

    @contextmanager
    def reading(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction, with the map pinned (see :meth:`pinned`)."""
        with self.pinned():
            txn = self.begin_read()
            try:
                with self.guard("a read"):
                    yield txn
            finally:
                txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction and commit it.

        ``fn`` must only write to the transaction, never change state in RAM:
        when the map is full it is run again from scratch in a larger map,
        and when the commit fails nothing of it may remain.  Raises
        ReadOnlyError, StoreFullError (disk or map full), StorageError (I/O
        error) or CorruptionError; in every case nothing was changed.
        """
        if self.readonly:
            raise ReadOnlyError(f"store {self.path!r} is open read-only")
        assert self.env is not None
        with self._write_lock:
            while True:
                try:
                    with self.env.begin(write=True) as txn:
                        result = fn(txn)
                        if self.commit_hook is not None:
                            self.commit_hook()
                    return result
                except lmdb.MapFullError:
                    self._grow_map()
                except lmdb.Error as exc:
                    raise self.error(exc, "a commit") from None

    def _grow_map(self) -> None:
        assert self.env is not None
        with self._pin_cond:
            self._growing = True
            while self._pins:
                self._pin_cond.wait()
        try:
            self._remap_grown()
        finally:
            with self._pin_cond:
                self._growing = False
                self._pin_cond.notify_all()

    def _remap_grown(self) -> None:
        with self._remap_lock:
            current = self.env.info()["map_size"]
            try:
                # Doubling keeps the number of retries logarithmic in the data size.
                self.env.set_mapsize(current * 2)
            except lmdb.Error as exc:
                raise StoreFullError(
                    f"store {self.path!r}: the LMDB map is full at {current} bytes and cannot grow ({exc}); "
                    "nothing was changed"
                ) from None
            self.epoch += 1

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

    def key_owners(self, txn: lmdb.Transaction, db: Any) -> Iterator[bytes]:
        """The distinct first 8 bytes (a volume id) of the keys of ``db``,
        in order, one seek per volume rather than a read per key.  A key
        shorter than that is yielded whole."""
        cursor = txn.cursor(db)
        more = cursor.first()
        sought: bytes | None = None  # the owner the last seek went past
        while more:
            owner = bytes(cursor.key()[:8])
            if sought is not None and owner <= sought:
                # Only a damaged B-tree returns keys out of order; seeking
                # past ``sought`` again would then loop forever.
                raise CorruptionError(f"store {self.path!r} is damaged: its keys are out of order")
            yield owner
            if len(owner) < 8 or owner == b"\xff" * 8:
                sought, more = None, cursor.next()
                continue
            sought = owner
            # The first key of the next volume id, past every key of this one.
            more = cursor.set_range((int.from_bytes(owner, "big") + 1).to_bytes(8, "big"))

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


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Decorate a public method of an object with a ``_storage``: lmdb errors
    raised inside reach the caller as TieredErrors."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except lmdb.Error as exc:
            raise self._storage.error(exc, method.__name__) from None

    return wrapper
