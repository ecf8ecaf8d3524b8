"""Moving tracking state out of a store and back in.

- :mod:`.stream`: the dump stream's record format (header, typed records
  with a CRC each, trailer), read and written one record at a time.
- :mod:`.files`: the user's file: a path (written atomically) or a binary
  file object; I/O errors as StorageError.
- :mod:`.dump`: ``Volume.dump``, one volume to a stream.
- :mod:`.load`: ``Store.load``, a stream to a new volume, in one transaction.
- :mod:`.backup`: ``Store.backup``, a consistent compacted copy of a store.
- :mod:`.compact`: ``tiered.compact``, shrink a store's data file in place.

The formats are in docs/format.md ("Dump streams").
"""

from .backup import backup_store
from .compact import compact_store
from .dump import dump_volume
from .load import load_volume


def compact(path: object) -> dict:
    """Shrink the data file of the store at ``path`` (see :func:`compact_store`)."""
    return compact_store(path)


__all__ = ["backup_store", "compact", "compact_store", "dump_volume", "load_volume"]
