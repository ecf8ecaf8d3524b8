"""What the process itself holds in RAM, as the kernel counts it (Linux).

Elsewhere every figure reads 0: measuring needs ``/proc``.
"""

from __future__ import annotations

import os
import threading

# How often the sampler thread reads the resident memory.
SAMPLE_SECONDS = 0.002

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def anon_rss() -> int:
    """Resident memory that is not a mapped file (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return 0
    return (int(fields[1]) - int(fields[2])) * _PAGE


def _status_bytes(field: bytes) -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0


def reset_rss_high_water_mark() -> bool:
    """Restart the kernel's resident high-water mark (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakSampler:
    """The highest anonymous RSS seen, by a thread and by explicit samples.

    The kernels release the GIL, so the thread also sees memory that lives
    only inside one call.
    """

    def __init__(self) -> None:
        self.peak = anon_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> int:
        now = anon_rss()
        if now > self.peak:
            self.peak = now
        return now

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def rss_now() -> int:
    """The whole resident set, mapped files included."""
    return _status_bytes(b"VmRSS:")


def rss_high_water_mark() -> int:
    """The highest resident set since start or the last reset."""
    return _status_bytes(b"VmHWM:")
