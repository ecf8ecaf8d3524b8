"""The consistency point of a checkpoint taken while clients write.

Every write-like request (WRITE, TRIM, WRITE_ZEROES) holds the gate shared
from its mark until its data is in the image; a checkpoint holds it
exclusively.  So a checkpoint waits for the writes already marked to reach
the image, and writes that arrive meanwhile wait for the checkpoint: every
write acknowledged before the checkpoint belongs to the older period, every
write received after it to the newer one, and no write is marked in one
period with its data landing after the next period began (a backup taken at
the checkpoint would read the old data and the next incremental would skip
the chunk).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WriteGate:
    """Shared for writes, exclusive for checkpoints; a waiting checkpoint
    goes before writes that arrive after it (no starvation under load)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._exclusive = False

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                if self._writers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True  # from now on new writes wait
            while self._writers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
