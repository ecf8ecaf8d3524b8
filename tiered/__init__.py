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

from .config import Strategy
from .errors import (
    AlreadyExistsError,
    CheckpointLimitError,
    CheckpointNotFoundError,
    ClosedError,
    CorruptionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ReadOnlyError,
    StoreBusyError,
    StrategyMismatchError,
    TieredError,
    VolumeNotFoundError,
)
from .extents import Extents
from .store import Store, open
from .volume import Checkpoint, Volume

__version__ = "0.1.0"

__all__ = sorted(
    [
        "AlreadyExistsError",
        "Checkpoint",
        "CheckpointLimitError",
        "CheckpointNotFoundError",
        "ClosedError",
        "CorruptionError",
        "Extents",
        "InvalidArgumentError",
        "NotFoundError",
        "OutOfRangeError",
        "ReadOnlyError",
        "Store",
        "StoreBusyError",
        "Strategy",
        "StrategyMismatchError",
        "TieredError",
        "Volume",
        "VolumeNotFoundError",
        "open",
    ]
)
