"""Stopping a long command cleanly, however it is asked to stop.

SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``) and SIGHUP (a closed
terminal) all raise :class:`Stopped` in the main thread, so that ``finally``
blocks remove temporary files and end child processes.  The first signal
wins: later ones are ignored while the command cleans up.  Cleanup itself
runs with the signals held, so a signal cannot cut it short.

Standard library only (see :mod:`tiered.cli`).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A stop signal arrived."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")


@contextlib.contextmanager
def signals_raise_stopped() -> Iterator[None]:
    """Within: each stop signal raises :class:`Stopped` (once).  A signal the
    caller ignores (``nohup`` ignores SIGHUP) stays ignored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in SIGNALS:
            if signal.getsignal(s) is handler:
                signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {}
    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within: stop signals wait (they are delivered on leaving)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
