"""The trace formats: one line parser each, and detection from the first lines.

Formats (``format=`` names):

``"fio"``
    fio's ``write_iolog`` output (fio's HOWTO, "Trace file format"; fio's
    ``iolog.c``), version 2 (``file action [offset length]``) or 3
    (``time file action [offset length]``).  ``write`` and ``trim`` are kept.
    fio logs every I/O it queues, so the log also holds ``read``, ``sync``,
    ``datasync``, ``sync_file_range``, ``wait`` and, from newer fio,
    ``syncfs`` and ``file_operation`` lines: these write nothing and are
    passed over, as fio's own replay passes over actions it does not replay.
    File actions (``add``, ``open``, ``close``) are not I/Os.  fio's HOWTO
    calls the v3 time nanoseconds, but fio writes it with
    ``utime_since_now`` and replays it as microseconds, so it is read as
    microseconds.  The file name is ignored: the writes of every file in the
    log come out together.
``"blkparse"``
    blkparse's default text output (blkparse(1), "DEFAULT OUTPUT"):
    ``maj,min cpu seq time pid action RWBS sector + count [process]``.
    Only queue (``Q``) events are used, so an I/O is not counted again at
    dispatch (``D``) and completion (``C``).  A trace recorded with only
    completions (``blktrace -a complete``) has no ``Q`` events and is read
    by its ``C`` events instead: while no ``Q`` event has been seen, up to
    65,536 write completions are held back; the first ``Q`` event drops them,
    and once that many have been held (or the input ends) without one, they
    and every later completion are the writes (a ``Q`` event after that is an
    error: the trace cannot be read both ways).  RWBS holding ``W`` is a
    write, ``D`` a discard.  Sectors are 512 bytes.  An event without data,
    such as a flush ``Q FWS [kworker/0:1H]`` or its completion
    ``C WS 7928928 [0]`` (no ``+ count``), writes nothing.  Lines that do
    not start with ``major,minor`` -- the ``Input file sda.blktrace.0 added``
    lines (first on a terminal, last when stdout is a file), the per-CPU and
    total summaries at the end, blank lines -- are not events and are passed
    over.  All devices in the output come out together.
``"msr"``
    MSR Cambridge CSV (the README of the MSR Cambridge traces, SNIA IOTTA):
    ``Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime``, times in
    Windows filetime (100 ns ticks), with or without a header line.  All
    disks come out together.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .source import CorruptInput, TraceInput, open_input
from ...errors import TraceFormatError

FORMATS = ("fio", "blkparse", "msr")
SECTOR = 512
INT64_MAX = (1 << 63) - 1
# Write completions a blkparse trace may open with before its first Q event.
BLKPARSE_LOOKAHEAD = 65536


class BadLine(Exception):
    """A malformed line; the reader adds the file name and line number."""


class Fatal(Exception):
    """A line that makes the whole trace unreadable, even with skip_bad."""


class Release(Exception):
    """Held-back events to yield now (blkparse completions, see the module doc)."""

    def __init__(self, events: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        super().__init__()
        self.events = events


# ASCII digits only: int() would take other scripts' digits, a trace never has them.
_BLK_EVENT = re.compile(
    r"\s*\d+,\d+\s+\d+\s+\d+\s+(\d+\.\d+)\s+\d+\s+(\S+)\s+(\S+)\s*(.*)$", re.ASCII
)
# An event (or malformed event) line starts with the device's major,minor.
_BLK_DEVICE = re.compile(r"\s*\d+,\d+\s", re.ASCII)
_BLK_SPAN = re.compile(r"(\d+)\s*\+\s*(\d+)", re.ASCII)
# An event without data: a lone sector, or nothing, before the [process] or error.
_BLK_NO_DATA = re.compile(r"(\d+\s*)?(\[.*)?$", re.ASCII)
_BLK_PREAMBLE = re.compile(r"Input file \S.* added\s*$")
_BLK_SUMMARY = re.compile(r"(CPU\d+|Total) \(.*\):\s*$")
_FIO_HEADER = re.compile(r"fio version (\d+) iolog\s*$", re.ASCII)


def _to_int(text: str, what: str) -> int:
    # int() alone accepts "+5", "1_000" and blanks; traces never do.  isdigit()
    # also holds for digits int() refuses, such as superscripts.
    if text.isdigit():
        try:
            return int(text)
        except ValueError:
            pass
    raise BadLine(f"{what} {text!r} is not a non-negative integer")


def _span(offset: int, length: int) -> tuple[int, int]:
    if offset + length > INT64_MAX:
        raise BadLine(f"write [{offset}, {offset}+{length}) does not fit in int64")
    return offset, length


# -- per-format line parsers ---------------------------------------------
#
# parse(line) returns (offset, length, seconds) for a write to keep, None for
# a line to pass over, and raises BadLine for a malformed one.  ``ignored``
# counts the I/Os passed over because they write nothing.


class FioParser:
    FILE_ACTIONS = frozenset({"add", "open", "close"})
    # Every action fio's write_iolog names (io_ddir_name in fio's io_ddir.h).
    IO_ACTIONS = frozenset(
        {"read", "write", "trim", "sync", "datasync", "sync_file_range", "syncfs", "wait", "file_operation"}
    )
    KEEP = frozenset({"write", "trim"})

    def __init__(self, version: int | None = None) -> None:
        self.version = version
        self.header_seen = False
        self.ignored = 0

    @property
    def has_times(self) -> bool:
        return self.version == 3

    def parse(self, line: str) -> tuple[int, int, float] | None:
        if not self.header_seen:
            self._header(line)
            return None
        fields = line.split()
        if not fields:
            return None
        seconds = 0.0
        if self.version == 3:
            # fio writes microseconds here, whatever its HOWTO says.
            seconds = _to_int(fields[0], "timestamp") * 1e-6
            fields = fields[1:]
        if len(fields) == 2:
            if fields[1] not in self.FILE_ACTIONS:
                raise BadLine(f"unknown file action {fields[1]!r}")
            return None
        if len(fields) != 4:
            raise BadLine(f"expected {'time ' if self.version == 3 else ''}file action [offset length]")
        action = fields[1]
        if action not in self.IO_ACTIONS:
            raise BadLine(f"unknown action {action!r}")
        offset = _to_int(fields[2], "offset")
        length = _to_int(fields[3], "length")
        if action not in self.KEEP or not length:
            self.ignored += 1
            return None
        return (*_span(offset, length), seconds)

    def _header(self, line: str) -> None:
        if not line.strip():
            return  # blank lines before the header are harmless
        match = _FIO_HEADER.match(line.strip())
        version = None if match is None else int(match.group(1))
        if version not in (2, 3) or (self.version is not None and version != self.version):
            want = f"{self.version}" if self.version is not None else "2 iolog' or 'fio version 3"
            raise Fatal(f"expected the header 'fio version {want} iolog'")
        self.version = version
        self.header_seen = True


class BlkparseParser:
    has_times = True

    def __init__(self) -> None:
        self.action: str | None = None  # "Q" or "C", once known
        self.ignored_by = {"Q": 0, "C": 0}
        self.held = 0  # completions held back while the action is unknown
        self.holding: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def ignored(self) -> int:
        # No action yet: no Q event so far, so the trace reads as completions.
        return self.ignored_by[self.action or "C"]

    def parse(self, line: str) -> tuple[int, int, float] | None:
        match = _BLK_EVENT.match(line)
        if match is None:
            if _BLK_DEVICE.match(line) is None:
                return None  # "Input file", summaries, blank lines: not events
            raise BadLine("event line without time, pid, action and RWBS columns")
        time_text, action, rwbs, rest = match.groups()
        if action == "Q":
            if self.action != "Q":
                if self.action == "C":
                    raise Fatal(
                        f"a queue (Q) event after {BLKPARSE_LOOKAHEAD:,} write completions without one: "
                        "the trace cannot be read both by Q and by C events"
                    )
                self.action, self.holding, self.held = "Q", None, 0
        elif action != "C" or self.action == "Q":
            return None  # other stages of an I/O, and messages
        if "W" not in rwbs and "D" not in rwbs:
            self.ignored_by[action] += 1  # reads, flushes without data ("N")
            return None
        span = _BLK_SPAN.match(rest)
        if span is None:
            if _BLK_NO_DATA.match(rest) is None:
                raise BadLine(f"expected 'sector + count', got {rest!r}")
            self.ignored_by[action] += 1  # e.g. a flush "Q FWS [kworker]" or "C WS 7928928 [0]"
            return None
        sectors = int(span.group(2))
        if not sectors:
            self.ignored_by[action] += 1
            return None
        event = (*_span(int(span.group(1)) * SECTOR, sectors * SECTOR), float(time_text))
        if self.action is None:
            self._hold(event)
            return None
        return event

    def _hold(self, event: tuple[int, int, float]) -> None:
        if self.holding is None:
            self.holding = (
                np.empty(BLKPARSE_LOOKAHEAD, np.int64), np.empty(BLKPARSE_LOOKAHEAD, np.int64),
                np.empty(BLKPARSE_LOOKAHEAD, np.float64),
            )
        offsets, lengths, times = self.holding
        n = self.held
        offsets[n], lengths[n], times[n] = event
        self.held = n + 1
        if self.held == BLKPARSE_LOOKAHEAD:
            raise Release(self._release())

    def _release(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.holding is not None
        self.action = "C"
        offsets, lengths, times = self.holding
        n, self.holding = self.held, None
        return offsets[:n], lengths[:n], times[:n]

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The completions still held at the end: the trace had no Q event."""
        return self._release() if self.action is None and self.held else None


class MsrParser:
    has_times = True

    def __init__(self) -> None:
        self.start: int | None = None  # first record's filetime
        self.ignored = 0

    def parse(self, line: str) -> tuple[int, int, float] | None:
        if not line.strip():
            return None
        fields = line.rstrip("\r\n").split(",")
        if self.start is None and fields[0].strip().lower() == "timestamp":
            return None  # optional header line
        if len(fields) != 7:
            raise BadLine(f"expected 7 comma-separated fields, got {len(fields)}")
        ticks = _to_int(fields[0].strip(), "timestamp")
        if self.start is None:
            self.start = ticks
        kind = fields[3].strip().lower()
        if kind not in ("read", "write"):
            raise BadLine(f"type {fields[3]!r} is neither Read nor Write")
        offset = _to_int(fields[4].strip(), "offset")
        length = _to_int(fields[5].strip(), "size")
        if kind == "read" or not length:
            self.ignored += 1
            return None
        # Filetime ticks are 100 ns; times count from the first record.
        return (*_span(offset, length), (ticks - self.start) * 1e-7)


Parser = FioParser | BlkparseParser | MsrParser


# -- format detection ----------------------------------------------------


def _telling(line: str) -> bool:
    """Whether ``line`` can tell the format: not blank, not blkparse's preamble."""
    return bool(line.strip()) and _BLK_PREAMBLE.match(line) is None


def _enough(lines: list[str]) -> bool:
    # A telling line, complete (the last line read ahead may be cut short).
    return any(_telling(line) and line.endswith(("\n", "\r")) for line in lines)


def judge(lines: list[str], name: str) -> tuple[str, int]:
    """(format, fio iolog version or 0) from the first lines of ``name``."""
    number, first = next(((i, line) for i, line in enumerate(lines, 1) if _telling(line)), (0, None))
    if first is None:
        if any(_BLK_PREAMBLE.match(line) for line in lines):
            return "blkparse", 0  # blkparse's output of a trace without events
        raise TraceFormatError(
            f"{name}:{len(lines) + 1}: the trace is empty; expected a fio iolog, blkparse output or MSR CSV"
        )
    stripped = first.strip()
    match = _FIO_HEADER.match(stripped)
    if match is not None:
        version = int(match.group(1))
        if version not in (2, 3):
            raise TraceFormatError(f"{name}:{number}: fio iolog version {version} is not supported (only 2 and 3)")
        return "fio", version
    if _BLK_EVENT.match(first) is not None or _BLK_SUMMARY.match(stripped) is not None:
        return "blkparse", 0
    fields = [f.strip() for f in stripped.split(",")]
    if len(fields) == 7 and (
        fields[0].lower() == "timestamp"
        or (fields[0].isascii() and fields[0].isdigit() and fields[3].lower() in ("read", "write"))
    ):
        return "msr", 0
    raise TraceFormatError(
        f"{name}:{number}: cannot tell the trace format from this line; pass format= one of {', '.join(FORMATS)}"
    )


def peek(source: TraceInput) -> list[str]:
    try:
        return source.peek_lines(_enough)
    except CorruptInput as exc:
        raise TraceFormatError(f"{source.name}:{exc.line}: {exc}") from None


def detect_format(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(format name, fio iolog version or 0), judged from the first line that
    is not blank and not blkparse's ``Input file ... added``.

    This reads the start of ``path``: for a pipe, use :func:`read_trace`,
    which parses the lines it looked at.
    """
    with open_input(path) as source:
        return judge(peek(source), source.name)
