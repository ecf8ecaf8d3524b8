"""Progress of a long run on stderr: a bar with a total and an ETA on a
terminal, a short status line every few seconds anywhere else (a log, a CI
job), nothing when turned off.

One :class:`Progress` lives for the whole run; each stage (recording, then
replaying) calls :meth:`Progress.stage` with its own total.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..units import format_seconds

# Seconds between two status lines when stderr is not a terminal.
STATUS_SECONDS = 5.0


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        try:
            self.terminal = enabled and self.stream.isatty()
        except (AttributeError, ValueError):
            self.terminal = False
        self.interval = STATUS_SECONDS if interval is None else interval
        self._bar: Any = None
        self._desc = ""
        self._unit = ""
        self._total: float | None = None
        self._n = 0.0
        self._start = self._last = time.monotonic()

    def stage(self, desc: str, total: float | None, unit: str) -> None:
        """Start counting something new (closes the previous bar)."""
        self._close_bar()
        self._desc, self._total, self._unit, self._n = desc, total, unit, 0.0
        self._start = self._last = time.monotonic()
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                             leave=False, dynamic_ncols=True)

    def describe(self, desc: str) -> None:
        """Rename the current stage (the configuration now running)."""
        self._desc = desc
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=False)

    def update(self, n: float) -> None:
        self.set(self._n + n)

    def set(self, n: float) -> None:
        """The stage's count so far."""
        if self._bar is not None:
            self._bar.update(n - self._bar.n)
        self._n = n
        self.tick()

    def tick(self) -> None:
        """Print a status line if one is due (not on a terminal: the bar refreshes itself)."""
        if not self.enabled or self.terminal:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.note(self.status(now))

    def status(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._start
        done = f"{self._n:,.0f}"
        if self._total:
            fraction = min(self._n / self._total, 1.0)
            done += f" of {self._total:,.0f} {self._unit} ({fraction:.0%})"
            if fraction > 0:
                done += f", {format_seconds(elapsed)} elapsed, about {format_seconds(elapsed / fraction - elapsed)} left"
        else:
            done += f" {self._unit}, {format_seconds(elapsed)} elapsed"
        return f"{self._desc}: {done}"

    def note(self, line: str) -> None:
        """A line of its own, above the bar on a terminal."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(f"tiered compare: {line}\n")
            self.stream.flush()

    def print(self, text: str, out: TextIO) -> None:
        """A line of output (not progress) on ``out``, without tearing the bar."""
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            out.write(text + "\n")
        out.flush()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
