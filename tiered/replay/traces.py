"""Streaming readers of real block-trace formats, yielding writes in batches.

    reader = read_trace("trace.txt")            # format detected from content
    for b in reader:
        vol.mark_many(b.offsets, b.lengths)     # one call per batch, not per write

Traces can be larger than RAM: a file is read line by line and writes are
gathered into numpy arrays of ``batch`` entries, each yielded when full.
Reads are skipped; writes and discards/trims are kept, because a discard
changes what a backup must copy just as a write does.  Zero-length events are
dropped: they change nothing.

Formats (``format=`` names):

``"fio"``
    fio's ``write_iolog`` output, version 2 (``file action [offset length]``)
    or 3 (``time file action [offset length]``).  ``write`` and ``trim`` are
    kept.  fio's HOWTO calls the v3 time nanoseconds, but fio writes it with
    ``utime_since_now`` and replays it as microseconds, so it is read as
    microseconds.  The file name is ignored: the writes of every file in the
    log come out together.
``"blkparse"``
    blkparse's default text output.  Only queue (``Q``) events are used, so
    an I/O is not counted again at dispatch (``D``) and completion (``C``);
    a trace recorded with only completions (``blktrace -a complete``) has no
    ``Q`` events and is then read a second time using ``C``.  RWBS holding
    ``W`` is a write, ``D`` a discard.  Sectors are 512 bytes.  Lines that do
    not start with ``major,minor`` (the summary blkparse prints at the end,
    per-CPU totals, blank lines) are not events and are passed over.  All
    devices in the output come out together.
``"msr"``
    MSR Cambridge CSV: ``Timestamp,Hostname,DiskNumber,Type,Offset,Size,
    ResponseTime``, times in Windows filetime (100 ns ticks), with or
    without a header line.  All disks come out together.

A missing file raises ``FileNotFoundError`` from :func:`read_trace`; a format
that cannot be detected, or a malformed line, raises
:class:`~tiered.errors.TraceFormatError` (a ``ValueError``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

from .batches import WriteBatch
from ..errors import InvalidArgumentError, TraceFormatError

FORMATS = ("fio", "blkparse", "msr")
DEFAULT_BATCH = 65536
SECTOR = 512
INT64_MAX = (1 << 63) - 1


class _BadLine(Exception):
    """A malformed line; the reader adds the file name and line number."""


# An event (or malformed event) line starts with the device's major,minor.
_BLK_DEVICE = re.compile(r"\s*\d+,\d+\s")
_BLK_EVENT = re.compile(
    r"\s*\d+,\d+\s+\d+\s+\d+\s+(\d+\.\d+)\s+\d+\s+(\S+)\s+(\S+)\s*(.*)$"
)
_BLK_SPAN = re.compile(r"(\d+)\s*\+\s*(\d+)")
_FIO_HEADER = re.compile(r"fio version (\d+) iolog\s*$")


def _to_int(text: str, what: str) -> int:
    # int() alone accepts "+5", "1_000" and surrounding blanks; traces never do.
    if not text.isdigit():
        raise _BadLine(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def _span(offset: int, length: int) -> tuple[int, int]:
    if offset + length > INT64_MAX:
        raise _BadLine(f"write [{offset}, {offset}+{length}) does not fit in int64")
    return offset, length


# -- per-format line parsers ---------------------------------------------
#
# parse(line) returns (offset, length, seconds) for a write to keep, None for
# a line to pass over, and raises _BadLine for a malformed one.


class _FioParser:
    FILE_ACTIONS = frozenset({"add", "open", "close"})
    IO_ACTIONS = frozenset({"read", "write", "sync", "datasync", "trim", "wait"})
    KEEP = frozenset({"write", "trim"})

    def __init__(self, version: int) -> None:
        self.version = version
        self.has_times = version == 3
        self.header_seen = False

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
                raise _BadLine(f"unknown file action {fields[1]!r}")
            return None
        if len(fields) != 4:
            raise _BadLine(f"expected {'time ' if self.version == 3 else ''}file action [offset length]")
        action = fields[1]
        if action not in self.IO_ACTIONS:
            raise _BadLine(f"unknown action {action!r}")
        offset = _to_int(fields[2], "offset")
        length = _to_int(fields[3], "length")
        if action not in self.KEEP:
            return None
        return (*_span(offset, length), seconds)

    def _header(self, line: str) -> None:
        if not line.strip():
            return  # blank lines before the header are harmless
        match = _FIO_HEADER.match(line.strip())
        if match is None or int(match.group(1)) != self.version:
            raise _BadLine(f"expected the header 'fio version {self.version} iolog'")
        self.header_seen = True


class _BlkparseParser:
    has_times = True

    def __init__(self, action: str = "Q") -> None:
        self.action = action
        self.kept = 0
        self.completions = 0  # data-carrying C events, for the fallback to C

    def parse(self, line: str) -> tuple[int, int, float] | None:
        if _BLK_DEVICE.match(line) is None:
            return None  # summary, per-CPU totals, blank: not an event
        match = _BLK_EVENT.match(line)
        if match is None:
            raise _BadLine("event line without time, pid, action and RWBS columns")
        time_text, action, rwbs, rest = match.groups()
        if action != self.action and action != "C":
            return None
        if "W" not in rwbs and "D" not in rwbs:
            return None  # reads, flushes without data ("N"), and so on
        span = _BLK_SPAN.match(rest)
        if span is None:
            if rest[:1].isdigit():
                raise _BadLine(f"expected 'sector + count', got {rest!r}")
            return None  # e.g. an empty flush "Q FWS [kworker]": no sectors
        sectors = int(span.group(2))
        if not sectors:
            return None
        if action == "C" and self.action != "C":
            self.completions += 1
            return None
        self.kept += 1
        return (*_span(int(span.group(1)) * SECTOR, sectors * SECTOR), float(time_text))


class _MsrParser:
    has_times = True

    def __init__(self) -> None:
        self.start: int | None = None  # first record's filetime

    def parse(self, line: str) -> tuple[int, int, float] | None:
        if not line.strip():
            return None
        fields = line.rstrip("\r\n").split(",")
        if self.start is None and fields[0].strip().lower() == "timestamp":
            return None  # optional header line
        if len(fields) != 7:
            raise _BadLine(f"expected 7 comma-separated fields, got {len(fields)}")
        ticks = _to_int(fields[0].strip(), "timestamp")
        if self.start is None:
            self.start = ticks
        kind = fields[3].strip().lower()
        if kind not in ("read", "write"):
            raise _BadLine(f"type {fields[3]!r} is neither Read nor Write")
        offset = _to_int(fields[4].strip(), "offset")
        length = _to_int(fields[5].strip(), "size")
        if kind == "read" or not length:
            return None
        # Filetime ticks are 100 ns; times count from the first record.
        return (*_span(offset, length), (ticks - self.start) * 1e-7)


def _first_line(path: str | os.PathLike[str]) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return line
    return ""


def detect_format(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(format name, fio iolog version or 0) judged from the first non-blank line."""
    line = _first_line(path)
    stripped = line.strip()
    match = _FIO_HEADER.match(stripped)
    if match is not None:
        version = int(match.group(1))
        if version not in (2, 3):
            raise TraceFormatError(f"{os.fspath(path)}: fio iolog version {version} is not supported (only 2 and 3)")
        return "fio", version
    if _BLK_EVENT.match(line) is not None:
        return "blkparse", 0
    fields = [f.strip() for f in stripped.split(",")]
    if len(fields) == 7 and (
        fields[0].lower() == "timestamp"
        or (fields[0].isdigit() and fields[3].lower() in ("read", "write"))
    ):
        return "msr", 0
    raise TraceFormatError(
        f"{os.fspath(path)}: cannot tell the trace format from its first line; "
        f"pass format= one of {', '.join(FORMATS)}"
    )


class TraceReader:
    """An iterable of :class:`WriteBatch` over one trace file.

    After (or during) iteration, ``lines`` is the number of lines read,
    ``writes`` the number of writes yielded and ``skipped`` the number of
    malformed lines passed over (only with ``skip_bad=True``).  Iterating
    again re-reads the file and resets the counts.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        format: str | None = None,
        batch: int = DEFAULT_BATCH,
        skip_bad: bool = False,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidArgumentError(f"batch must be a positive int, got {batch!r}")
        if format is not None and format not in FORMATS:
            raise InvalidArgumentError(f"format must be one of {', '.join(FORMATS)} or None, got {format!r}")
        self.path = os.fspath(path)
        self.batch = batch
        self.skip_bad = skip_bad
        if format is None:
            self.format, self._fio_version = detect_format(self.path)
        else:
            open(self.path, "rb").close()  # a missing file fails here, not mid-iteration
            self.format = format
            self._fio_version = 0
        self.lines = 0
        self.writes = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return f"TraceReader({self.path!r}, format={self.format!r}, batch={self.batch})"

    def _parser(self) -> _FioParser | _BlkparseParser | _MsrParser:
        if self.format == "fio":
            return _FioParser(self._fio_version or self._read_fio_version())
        if self.format == "blkparse":
            return _BlkparseParser()
        return _MsrParser()

    def _read_fio_version(self) -> int:
        match = _FIO_HEADER.match(_first_line(self.path).strip())
        if match is None or match.group(1) not in ("2", "3"):
            raise TraceFormatError(f"{self.path}:1: expected the header 'fio version 2 iolog' or 'fio version 3 iolog'")
        return int(match.group(1))

    def __iter__(self) -> Iterator[WriteBatch]:
        parser = self._parser()
        yield from self._read(parser)
        if isinstance(parser, _BlkparseParser) and not parser.kept and parser.completions:
            # Completions only (blktrace -a complete): nothing came out of the
            # first pass, so a second pass over C events cannot double count.
            yield from self._read(_BlkparseParser("C"))

    def _read(self, parser: _FioParser | _BlkparseParser | _MsrParser) -> Iterator[WriteBatch]:
        self.lines = self.writes = self.skipped = 0
        size, with_times = self.batch, parser.has_times
        offsets, lengths, times = self._buffers(size, with_times)
        n = 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                self.lines = number
                try:
                    event = parser.parse(line)
                except _BadLine as exc:
                    if not self.skip_bad:
                        raise TraceFormatError(f"{self.path}:{number}: {exc}") from None
                    self.skipped += 1
                    continue
                if event is None:
                    continue
                offsets[n], lengths[n] = event[0], event[1]
                if times is not None:
                    times[n] = event[2]
                n += 1
                if n == size:
                    self.writes += n
                    # Hand the full arrays over and start new ones, so a
                    # caller may keep a batch while reading the next.
                    yield WriteBatch(offsets, lengths, times)
                    offsets, lengths, times = self._buffers(size, with_times)
                    n = 0
        if n:
            self.writes += n
            yield WriteBatch(offsets[:n], lengths[:n], None if times is None else times[:n])

    @staticmethod
    def _buffers(size: int, with_times: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return (
            np.empty(size, np.int64),
            np.empty(size, np.int64),
            np.empty(size, np.float64) if with_times else None,
        )


def read_trace(
    path: str | os.PathLike[str],
    format: str | None = None,
    batch: int = DEFAULT_BATCH,
    skip_bad: bool = False,
) -> TraceReader:
    """Open a block trace for streaming; iterate the result for :class:`WriteBatch` es.

    ``format`` is ``"fio"``, ``"blkparse"``, ``"msr"`` or None to detect it
    from the first non-blank line.  With ``skip_bad`` a malformed line is
    counted in ``.skipped`` instead of raising :class:`TraceFormatError`.
    """
    return TraceReader(path, format, batch, skip_bad)
