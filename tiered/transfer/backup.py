"""``Store.backup``: a consistent, compacted copy of a whole store.

LMDB copies the environment from one read transaction of its own
(``env.copyfd(compact=True)``), so the copy is the state of one instant
however the store is written meanwhile, and holds only the pages in use.
It is written to ``DEST/data.mdb.tmp``, fsynced, renamed ``data.mdb`` and the
directory fsynced: a directory holding a ``data.mdb`` holds a whole copy.
The copy is then opened read-only and every volume cross-checked
(:mod:`tiered.integrity`, keys and records only).

The map of the source is pinned during the copy (``Storage.pinned_map``):
growing it would unmap the pages LMDB's copy is reading.  A writer thread
that must grow the map meanwhile waits for the copy.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, StorageError, TieredError
from ..storage.environment import LOCK_FILE, check_path
from ..storage.lmdbfile import DATA_FILE
from ..storage.versions import read_format

if TYPE_CHECKING:
    from ..store import Store

TMP_SUFFIX = ".tmp"


def empty_destination(dest: object) -> tuple[str, list[str]]:
    """The real path of ``dest``, created if missing; and the directories
    created (deepest first), to remove if the copy fails.  Raises
    InvalidArgumentError if it exists and is not an empty directory."""
    path = os.path.realpath(check_path(dest))
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise InvalidArgumentError(f"backup destination {path!r} exists and is not a directory")
        if os.listdir(path):
            raise InvalidArgumentError(
                f"backup destination {path!r} is not empty; a backup needs a missing or empty directory"
            )
        return path, []
    made, parent = [], path
    while not os.path.lexists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(path)
    except OSError as exc:
        raise StorageError(f"cannot create backup destination {path!r}: {exc.strerror or exc}") from None
    return path, made


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_environment(storage: Any, target: str) -> int:
    """Copy ``storage``'s environment, compacted, into the new file
    ``target``, fsynced; returns its size in bytes."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with storage.pinned_map(), storage.guard("a backup"):
            storage.env.copyfd(fd, compact=True)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def verify_store(path: str) -> None:
    """Open the store at ``path`` read-only and cross-check every volume."""
    from ..store import Store

    with Store(path, readonly=True) as copy, copy._storage.reading() as txn:
        copy._read_names(txn, read_format(copy._storage, txn), deep=True)


def backup_store(store: "Store", dest: object) -> dict[str, Any]:
    """Copy ``store`` into ``dest``, a missing or empty directory.

    A writer first flushes its open volumes, so that the copy answers
    exactly for every volume not marked during the backup; a volume marked
    meanwhile is copied as it is stored, with its ``unflushed`` flag, and
    so opens in the copy with ``unclean_shutdown`` (conservative answers).
    Returns ``{"path", "bytes"}``.  Raises InvalidArgumentError (``dest``
    is not a missing or empty directory), ClosedError, StorageError or
    StoreFullError (the copy could not be written), CorruptionError (the
    copy failed its checks); then nothing is left in ``dest`` but what was
    there.
    """
    store._check_open()
    path, made = empty_destination(dest)
    data = os.path.join(path, DATA_FILE)
    tmp = data + TMP_SUFFIX
    try:
        if not store.readonly:
            for vol in list(store._open.values()):
                with contextlib.suppress(TieredError):  # closed meanwhile
                    vol.flush()
        try:
            size = copy_environment(store._storage, tmp)
            os.replace(tmp, data)
            fsync_dir(path)
        except OSError as exc:
            if isinstance(exc, TieredError):
                raise
            raise StorageError(f"cannot write the backup into {path!r}: {exc.strerror or exc}") from None
        verify_store(path)
    except BaseException:
        for name in (tmp, data, os.path.join(path, LOCK_FILE)):
            with contextlib.suppress(OSError):
                os.unlink(name)
        for directory in made:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise
    return {"path": path, "bytes": size}
