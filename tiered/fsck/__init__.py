"""Find, report and contain damage: ``tiered check`` and ``Store.check``.

* :mod:`.scan` walks the store (meta records, the keys of every database,
  keys of no volume) and :mod:`.volumes` checks each volume: every value,
  every page decoded, records, checkpoints, catalog and journal
  cross-checked, collecting every problem instead of stopping at the first;
* :mod:`.plan` decides what a repair changes (which periods are marked
  lost, which values deleted), without touching the store;
* :mod:`.repair` makes those changes in one write transaction;
* :mod:`.report` holds the result objects and their text and JSON forms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, ReadOnlyError
from .report import CheckReport, Problem, VolumeReport

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["CheckReport", "Problem", "VolumeReport", "check", "check_store"]


def check(path: str, volume: str | None = None, *, repair: bool = False,
          remove_unreadable: bool = False) -> CheckReport:
    """Check the store at ``path`` without opening its volumes, so that it
    works on a store that :func:`tiered.open` refuses.  ``volume``: check
    only that one (and no store-level record).  ``repair=True`` opens the
    store for writing (its single writer) and repairs what it can, in one
    transaction; ``remove_unreadable=True`` also removes volumes whose
    record is unreadable.  Raises NotAStoreError, StoreBusyError,
    VolumeNotFoundError, CorruptionError (the format record is damaged:
    nothing can be repaired), StorageError or StoreFullError."""
    from ..storage.environment import Storage
    from .repair import check_storage, repair_storage

    if remove_unreadable and not repair:
        raise InvalidArgumentError("remove_unreadable needs repair=True")
    # A reader first: a writer would create a store at a missing path.
    reader = Storage(path, readonly=True, sync=True, map_size=None)
    if not repair:
        try:
            return check_storage(reader, volume)
        finally:
            reader.close()
    reader.close()
    storage = Storage(path, readonly=False, sync=True, map_size=None)
    try:
        return repair_storage(storage, volume, remove_unreadable)
    finally:
        storage.close()


def check_store(store: "Store", volume: str | None = None, repair: bool = False,
                remove_unreadable: bool = False) -> CheckReport:
    """:meth:`tiered.Store.check`: as :func:`check`, through an open store.
    A repair needs a writer with no volume open (their RAM state would
    contradict what the repair writes)."""
    from .repair import check_storage, repair_storage

    if remove_unreadable and not repair:
        raise InvalidArgumentError("remove_unreadable needs repair=True")
    with store._lock:
        store._check_open()
        if not repair:
            return check_storage(store._storage, volume)
        if store.readonly:
            raise ReadOnlyError(f"store {store.path!r} is open read-only: a repair needs a writer")
        if store._open:
            raise InvalidArgumentError(
                f"close the open volumes of store {store.path!r} before repairing it: "
                + ", ".join(sorted(store._open))
            )
        report = repair_storage(store._storage, volume, remove_unreadable)
        try:
            store._ids = store._load_names()
        except Exception:  # noqa: BLE001 - what is still damaged is in the report
            pass
        return report
