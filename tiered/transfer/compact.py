"""``tiered.compact``: give the space of removed volumes and checkpoints back.

LMDB reuses freed pages but never shrinks ``data.mdb``.  Compacting copies
the environment, keeping only the pages in use, to a temporary file in the
store's directory, fsyncs it, checks that it holds every entry of every
database, renames it over ``data.mdb`` and fsyncs the directory.  A
failure or a crash at any point leaves the original ``data.mdb`` in place
(a leftover temporary file is removed by the next compaction).

It needs the store to itself: no writer (the directory's ``flock``) and no
reader in any process (LMDB's own lock on ``lock.mdb``, which every process
that opens the environment holds shared).  Both are held, exclusively,
until the new file is in place; a process that opens the store meanwhile
waits in LMDB and then sees the new file.  Before releasing them, the
environment is opened once normally, which sets up ``lock.mdb`` for the
new file as the first process to open a store always does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Any

import lmdb

from ..errors import NotAStoreError, StorageError, StoreBusyError, StoreFullError, TieredError
from ..storage import environment as env_module
from ..storage.environment import DB_NAMES, INITIAL_MAP_SIZE, LEGACY_WRITER_LOCK, LOCK_FILE, MAX_DBS, check_path
from ..storage.lmdbfile import DATA_FILE, check_data_file
from .backup import fsync_dir

TMP_NAME = DATA_FILE + ".compact"


def _entries(env: lmdb.Environment, where: str) -> dict[bytes, int]:
    """Entries of each database of a tiered environment; NotAStoreError if
    it is not one."""
    with env.begin() as txn:
        names = {bytes(key) for key, _ in txn.cursor()}
    if not names or names - set(DB_NAMES) or b"meta" not in names:
        raise NotAStoreError(f"{where} is an LMDB environment that is not a tiered store; it was left unchanged")
    dbs = {name: env.open_db(name, create=False) for name in sorted(names)}
    with env.begin() as txn:
        counts = {name: txn.stat(db)["entries"] for name, db in dbs.items()}
        if txn.get(b"format", db=dbs[b"meta"]) is None:
            raise NotAStoreError(f"{where} has no tiered format record; it was left unchanged")
    return counts


@contextlib.contextmanager
def _exclusive(path: str):  # type: ignore[no-untyped-def]
    """Hold the store against every other user, in this process and others."""
    with env_module._open_paths_lock:
        if path in env_module._open_paths:
            raise StoreBusyError(f"store {path!r} is open in this process; close it before compacting")
        env_module._open_paths.add(path)
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
            legacy = os.path.join(path, LEGACY_WRITER_LOCK)
            if os.path.exists(legacy):
                fds.append(os.open(legacy, os.O_RDONLY))
            for fd in fds:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(lock)
            # LMDB's own liveness lock: byte 0 of lock.mdb, held shared by
            # every process that has the environment open.
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreBusyError(
                    f"store {path!r} is open in another process (a writer or a reader); "
                    "compacting needs it to itself"
                ) from None
            raise StorageError(f"cannot lock store {path!r}: {exc.strerror or exc}") from None
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)
        with env_module._open_paths_lock:
            env_module._open_paths.discard(path)


def _failed(path: str, why: str, code: int | None) -> StorageError:
    cls = StoreFullError if code in (errno.ENOSPC, errno.EDQUOT) else StorageError
    failed = cls(f"compacting {path!r} failed ({why}); the store is unchanged")
    failed.errno = code
    return failed


def compact_store(path: object) -> dict[str, Any]:
    """Compact the store at ``path`` in place; returns ``{"path", "before",
    "after"}``, the sizes of ``data.mdb`` in bytes.

    Raises InvalidArgumentError (a bad path), NotAStoreError, StoreBusyError
    (the store is open, here or in another process), CorruptionError (a
    damaged data file), StorageError or StoreFullError (the copy could not
    be written: the store is unchanged).
    """
    real = os.path.realpath(check_path(path))
    data = os.path.join(real, DATA_FILE)
    if not os.path.isdir(real) or not os.path.exists(data):
        raise NotAStoreError(f"no store at {real!r}")
    tmp = os.path.join(real, TMP_NAME)
    with _exclusive(real):
        check_data_file(real)
        before = os.stat(data).st_size
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a compaction that crashed
        try:
            try:
                src = lmdb.open(
                    real, subdir=True, readonly=True, lock=False, max_dbs=MAX_DBS,
                    map_size=max(before, INITIAL_MAP_SIZE),
                )
            except lmdb.Error as exc:
                raise NotAStoreError(f"{real!r} holds a {DATA_FILE} LMDB cannot open ({exc})") from None
            try:
                counts = _entries(src, repr(real))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    src.copyfd(fd, compact=True)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                src.close()
            copy = lmdb.open(tmp, subdir=False, readonly=True, lock=False, max_dbs=MAX_DBS)
            try:
                if _entries(copy, repr(tmp)) != counts:
                    raise StorageError(f"the compacted copy of {real!r} does not hold every entry; store unchanged")
            finally:
                copy.close()
            os.replace(tmp, data)
            fsync_dir(real)
        except lmdb.Error as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _failed(real, str(exc), env_module._code(exc)) from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, TieredError):
                raise
            raise _failed(real, exc.strerror or str(exc), exc.errno) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # Set up lock.mdb for the new file, as the first opener does.
        with contextlib.suppress(lmdb.Error):
            lmdb.open(real, subdir=True, max_dbs=MAX_DBS, map_size=max(before, INITIAL_MAP_SIZE)).close()
        after = os.stat(data).st_size
    return {"path": real, "before": before, "after": after}
