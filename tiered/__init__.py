"""tiered: change-block tracking with one-bit, multi-bit and hybrid history.

    import tiered
    with tiered.open("/var/lib/cbt") as store:
        vol = store.create_volume("vda", size=1 << 40, strategy="hybrid")
        vol.checkpoint("backup-1")
        vol.mark(4096, 65536)
        for offset, length in vol.changed_since("backup-1"):
            ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Type checkers and IDEs see the real names; at run time they are loaded
    # by __getattr__ below.
    from .config import Strategy
    from .errors import (
        AlreadyExistsError,
        CheckpointLimitError,
        CheckpointNotFoundError,
        ClosedError,
        CorruptionError,
        InvalidArgumentError,
        NotAStoreError,
        NotFoundError,
        OutOfRangeError,
        Qcow2FormatError,
        Qcow2InconsistentError,
        ReadOnlyError,
        StorageError,
        StoreBusyError,
        StoreFullError,
        StrategyMismatchError,
        StreamError,
        TieredError,
        TraceFormatError,
        VolumeNotFoundError,
    )
    from .extents import Extents
    from .fsck import CheckReport, check
    from .store import Store, open
    from .transfer import compact
    from .volume import Checkpoint, Volume

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "CheckReport",
    "Checkpoint",
    "CheckpointLimitError",
    "CheckpointNotFoundError",
    "ClosedError",
    "CorruptionError",
    "Extents",
    "InvalidArgumentError",
    "NotAStoreError",
    "NotFoundError",
    "OutOfRangeError",
    "Qcow2FormatError",
    "Qcow2InconsistentError",
    "ReadOnlyError",
    "StorageError",
    "Store",
    "StoreBusyError",
    "StoreFullError",
    "Strategy",
    "StrategyMismatchError",
    "StreamError",
    "TieredError",
    "TraceFormatError",
    "Volume",
    "VolumeNotFoundError",
    "check",
    "compact",
    "open",
]

# The engine pulls in numpy, numba (with its JIT start-up) and lmdb, which
# costs a fraction of a second; importing it lazily keeps `import tiered`
# (and so `tiered --help`) instant.  Name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    "AlreadyExistsError": "errors",
    "CheckReport": "fsck",
    "Checkpoint": "volume",
    "CheckpointLimitError": "errors",
    "CheckpointNotFoundError": "errors",
    "ClosedError": "errors",
    "CorruptionError": "errors",
    "Extents": "extents",
    "InvalidArgumentError": "errors",
    "NotAStoreError": "errors",
    "NotFoundError": "errors",
    "OutOfRangeError": "errors",
    "Qcow2FormatError": "errors",
    "Qcow2InconsistentError": "errors",
    "ReadOnlyError": "errors",
    "StorageError": "errors",
    "Store": "store",
    "StoreBusyError": "errors",
    "StoreFullError": "errors",
    "Strategy": "config",
    "StrategyMismatchError": "errors",
    "StreamError": "errors",
    "TieredError": "errors",
    "TraceFormatError": "errors",
    "Volume": "volume",
    "VolumeNotFoundError": "errors",
    "compact": "transfer",
    "check": "fsck",
    "open": "store",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups no longer reach this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
