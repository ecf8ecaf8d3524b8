"""One exception tree for everything tiered raises.

Each class is also the builtin a caller would naturally catch (``ValueError``
for bad arguments, ``KeyError`` for unknown names), so code that does not know
about tiered still handles our errors sensibly.
"""

from __future__ import annotations


class TieredError(Exception):
    """Base class of every error raised by tiered."""

    def __str__(self) -> str:
        # KeyError quotes its argument; our messages are sentences, not keys.
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgumentError(TieredError, ValueError):
    """An argument has the wrong type, dtype or value."""


class OutOfRangeError(InvalidArgumentError):
    """An offset, length or region lies outside the volume."""


class TraceFormatError(InvalidArgumentError):
    """A block trace whose format is unknown or that holds a malformed line."""


class Qcow2FormatError(InvalidArgumentError):
    """A qcow2 image that cannot be read, or whose bitmap metadata breaks the
    qcow2 specification (the message names the structure and the problem);
    an import that raised it changed nothing."""


class Qcow2InconsistentError(InvalidArgumentError):
    """A qcow2 bitmap whose content is unknown (flagged ``in_use``, or in an
    image whose bitmaps extension is flagged inconsistent); the import was
    refused and changed nothing."""


class NotFoundError(TieredError, KeyError):
    """A volume or checkpoint name that does not exist."""


class VolumeNotFoundError(NotFoundError):
    """No volume of that name in the store."""


class CheckpointNotFoundError(NotFoundError):
    """No live checkpoint of that name in the volume."""


class AlreadyExistsError(TieredError, ValueError):
    """A volume or checkpoint name that is already taken."""


class StrategyMismatchError(InvalidArgumentError):
    """Reopening a volume with fixed settings different from the stored ones."""


class CheckpointLimitError(TieredError):
    """The strategy cannot hold one more live checkpoint."""


class ReadOnlyError(TieredError):
    """A write was attempted on a store opened read-only."""


class ClosedError(TieredError):
    """The store or volume was used after close()."""


class CorruptionError(TieredError):
    """A stored value failed its checksum, format or version check, or
    stored values contradict each other (docs/format.md)."""


class StreamError(CorruptionError):
    """A dump stream is truncated, damaged, or not a tiered dump (the message
    names the record and byte offset); the load that read it changed nothing."""


class StoreBusyError(TieredError):
    """The store is already open in this process."""


class NotAStoreError(InvalidArgumentError):
    """The path is not a tiered store: empty, a regular file, a foreign LMDB
    environment, or a non-empty directory that holds no store."""


class StorageError(TieredError, OSError):
    """The store's files could not be written or read (an I/O error of the
    disk); the call that raised it changed nothing."""


class StoreFullError(StorageError):
    """The disk holding the store, or its LMDB map, is full; the call that
    raised it changed nothing, and the store works again once space returns."""
