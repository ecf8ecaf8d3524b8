"""Streaming readers of real block-trace formats, yielding writes in batches.

    reader = read_trace("trace.txt")            # format detected from content
    for b in reader:
        vol.mark_many(b.offsets, b.lengths)     # one call per batch, not per write

Traces can be larger than RAM: the input is read line by line and writes are
gathered into numpy arrays of ``batch`` entries, each yielded when full.
Writes and discards/trims are kept, because a discard changes what a backup
must copy just as a write does.  I/Os that write nothing -- reads, syncs and
flushes, fio's waits, zero-length writes and trims -- are passed over and
counted in ``ignored``, apart from malformed lines (``skipped``).

The input may be a file, ``"-"`` for stdin, or a pipe such as
``/dev/stdin``, and may be gzip, xz or zstd compressed (told by its magic
number, see :mod:`tiered.replay.traces.source`).  Nothing is read twice: the
lines that tell the format are looked at ahead and then parsed with the
rest, so a pipe loses none of them.

The formats, and where each is specified, are in
:mod:`tiered.replay.traces.formats`: fio iolog v2/v3 (``"fio"``), blkparse text
output (``"blkparse"``) and MSR Cambridge CSV (``"msr"``).

A missing file raises ``FileNotFoundError`` from :func:`read_trace`; any
other fault of the input -- a format that cannot be detected, a malformed
line, compressed data that is corrupt or cut short -- raises
:class:`~tiered.errors.TraceFormatError` (a ``ValueError``) naming
``file:line``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..batches import WriteBatch
from .formats import (
    FORMATS, BadLine, BlkparseParser, Fatal, FioParser, MsrParser, Parser, Release, detect_format, judge, peek,
)
from .source import CorruptInput, TraceInput, open_input
from ...errors import InvalidArgumentError, TraceFormatError

DEFAULT_BATCH = 65536

__all__ = ["DEFAULT_BATCH", "FORMATS", "TraceReader", "WriteBatch", "detect_format", "read_trace"]


class TraceReader:
    """An iterable of :class:`WriteBatch` over one trace.

    After (or during) iteration, ``lines`` is the number of lines read,
    ``writes`` the number of writes yielded, ``ignored`` the number of I/Os
    passed over because they write nothing (reads, syncs, flushes, waits,
    zero-length writes) and ``skipped`` the number of malformed lines passed
    over (only with ``skip_bad=True``).  Iterating again re-reads a file and
    resets the counts; a pipe or stdin can be read only once.
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
        source = open_input(self.path)  # a missing file fails here, not mid-iteration
        self.name = source.name
        self.compression = source.compression
        try:
            if format is None:
                self.format, self._fio_version = judge(peek(source), self.name)
            else:
                self.format, self._fio_version = format, 0
                if format == "fio":
                    # The header's version says whether lines have times; a
                    # wrong or missing header is reported at its line.
                    self._fio_version = _fio_version(source)
        except BaseException:
            source.close()
            raise
        # A file is opened again to be read; a pipe keeps what was looked at.
        self._rereadable = source.rereadable
        self._source: TraceInput | None = None
        if self._rereadable:
            source.close()
        else:
            self._source = source
        self.lines = 0
        self.writes = 0
        self.skipped = 0
        self._parser: Parser | None = None

    @property
    def ignored(self) -> int:
        return 0 if self._parser is None else self._parser.ignored

    def __repr__(self) -> str:
        return f"TraceReader({self.path!r}, format={self.format!r}, batch={self.batch})"

    def close(self) -> None:
        """Close a pipe not read to its end (a file is open only while read)."""
        if self._source is not None:
            self._source.close()
            self._source = None

    def _new_parser(self) -> Parser:
        if self.format == "fio":
            return FioParser(self._fio_version or None)
        if self.format == "blkparse":
            return BlkparseParser()
        return MsrParser()

    def __iter__(self) -> Iterator[WriteBatch]:
        if self._source is not None:
            source, self._source = self._source, None
        elif self._rereadable:
            source = open_input(self.path)
        else:
            raise InvalidArgumentError(f"{self.name} is a pipe or terminal: it can be read only once")
        with source:
            yield from self._read(source)

    def _read(self, source: TraceInput) -> Iterator[WriteBatch]:
        self.lines = self.writes = self.skipped = 0
        self._parser = parser = self._new_parser()
        parse = parser.parse
        size, with_times = self.batch, parser.has_times
        offsets, lengths, times = self._buffers(size, with_times)
        n = number = 0
        try:
            for number, line in enumerate(source.text, 1):
                try:
                    event = parse(line)
                except BadLine as exc:
                    if not self.skip_bad:
                        raise TraceFormatError(f"{self.name}:{number}: {exc}") from None
                    self.skipped += 1
                    continue
                except Release as held:
                    # Nothing was kept before the held events were released.
                    self.lines = number
                    yield from self._split(held.events)
                    continue
                if event is None:
                    continue
                offsets[n], lengths[n] = event[0], event[1]
                if times is not None:
                    times[n] = event[2]
                n += 1
                if n == size:
                    self.lines = number
                    self.writes += n
                    # Hand the full arrays over and start new ones, so a
                    # caller may keep a batch while reading the next.
                    yield WriteBatch(offsets, lengths, times)
                    offsets, lengths, times = self._buffers(size, with_times)
                    n = 0
        except Fatal as exc:
            raise TraceFormatError(f"{self.name}:{number}: {exc}") from None
        except CorruptInput as exc:
            raise TraceFormatError(f"{self.name}:{number + 1}: {exc}") from None
        self.lines = number
        if isinstance(parser, FioParser) and not parser.header_seen:
            raise TraceFormatError(
                f"{self.name}:{max(number, 1)}: expected the header 'fio version 2 iolog' or 'fio version 3 iolog'"
            )
        if n:
            self.writes += n
            yield WriteBatch(offsets[:n], lengths[:n], None if times is None else times[:n])
        if isinstance(parser, BlkparseParser):
            held = parser.finish()
            if held is not None:
                yield from self._split(held)

    def _split(self, events: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Iterator[WriteBatch]:
        offsets, lengths, times = events
        for start in range(0, len(offsets), self.batch):
            stop = start + self.batch
            self.writes += len(offsets[start:stop])
            yield WriteBatch(offsets[start:stop].copy(), lengths[start:stop].copy(), times[start:stop].copy())

    @staticmethod
    def _buffers(size: int, with_times: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return (
            np.empty(size, np.int64),
            np.empty(size, np.int64),
            np.empty(size, np.float64) if with_times else None,
        )


def _fio_version(source: TraceInput) -> int:
    try:
        detected, version = judge(peek(source), source.name)
    except TraceFormatError:
        return 0
    return version if detected == "fio" else 0


def read_trace(
    path: str | os.PathLike[str],
    format: str | None = None,
    batch: int = DEFAULT_BATCH,
    skip_bad: bool = False,
) -> TraceReader:
    """Open a block trace for streaming; iterate the result for :class:`WriteBatch` es.

    ``path`` is a file (plain, or gzip, xz or zstd compressed), a pipe, or
    ``"-"`` for stdin.  ``format`` is ``"fio"``, ``"blkparse"``, ``"msr"`` or
    None to detect it from the first line that is not blank (nor blkparse's
    ``Input file ... added``).  With ``skip_bad`` a malformed line is counted
    in ``.skipped`` instead of raising :class:`TraceFormatError`.
    """
    return TraceReader(path, format, batch, skip_bad)
