"""The dump stream: a header, typed and checksummed records, a trailer.

A dump is read and written one record at a time, so neither side ever holds
more than one record (at most :data:`MAX_PAYLOAD` bytes) in memory::

    header   16 bytes   magic b"TIERDUMP", stream version (u16), flags (u16, 0),
                        CRC-32 of those 12 bytes (u32)
    record   9 + n      kind (u8), payload length n (u32), payload (n bytes),
                        CRC-32 of (record index as u64, kind, length, payload) (u32)
    ...
    trailer  a record of kind END whose payload is the number of records
             before it (u64), the stream offset where it starts (u64) and
             the CRC-32 of every byte before it, header included (u32)

Every integer is little-endian.  The index in a record's CRC makes a record
moved, dropped or repeated fail at once rather than at the trailer; the
trailer proves that nothing is missing at the end.  Nothing may follow it.

Kinds below 0x80 are *critical*: a reader that does not know one refuses the
stream.  Kinds from 0x80 up are *optional*: a reader that does not know one
skips it.  Critical kinds come in the order of their *phase*
(:data:`PHASES`), so a loader sees the volume record before anything that
depends on it.  To add a kind: give it a number and a phase here, write it
in :mod:`.dump`, read it in :mod:`.load`, and document it in docs/format.md.

Every failure to read a stream is a :class:`~tiered.errors.StreamError`
naming the record index and the byte offset; an I/O error of the file is a
:class:`~tiered.errors.StorageError` naming it (see :mod:`.files`).
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, BinaryIO, Iterator

from ..errors import StreamError, TieredError

MAGIC = b"TIERDUMP"
#: The stream version this code writes and reads.
STREAM_VERSION = 1
HEADER = struct.Struct("<8sHHI")
_HEADER_CHECKED = HEADER.size - 4
RECORD_HEAD = struct.Struct("<BI")
_CRC = struct.Struct("<I")
_INDEX = struct.Struct("<Q")
TRAILER = struct.Struct("<QQI")
PAGE_HEAD = struct.Struct("<cQQB")  # tag, generation, page number, envelope kind

# Record kinds (docs/format.md, "Dump streams").
KIND_VOLUME = 0x01  # JSON: the volume record and where it came from
KIND_CHECKPOINT = 0x02  # JSON: one checkpoint's generation and stored record
KIND_PAGE = 0x03  # binary: one stored page's key fields and payload
KIND_JOURNAL = 0x04  # binary: one journal entry's sequence number (u64 LE) and payload
KIND_END = 0x7F  # the trailer
OPTIONAL = 0x80  # kinds with this bit set may be skipped by a reader

NAMES = {
    KIND_VOLUME: "volume",
    KIND_CHECKPOINT: "checkpoint",
    KIND_PAGE: "page",
    KIND_JOURNAL: "journal",
    KIND_END: "end",
}
#: Critical kinds appear in non-decreasing phase order.
PHASES = {KIND_VOLUME: 0, KIND_CHECKPOINT: 1, KIND_PAGE: 2, KIND_JOURNAL: 3, KIND_END: 4}

#: The largest payload of a page record: a page of 1,024 raw segments of
#: 4-byte generations is about 16.8 MiB.
MAX_PAYLOAD = 64 << 20
#: The largest payload of a JSON record.
MAX_JSON = 1 << 20


def limit(kind: int) -> int:
    """The largest payload a record of ``kind`` may have."""
    return MAX_JSON if kind in (KIND_VOLUME, KIND_CHECKPOINT) else MAX_PAYLOAD


def _name(kind: int) -> str:
    return NAMES.get(kind, f"kind {kind:#04x}")


class StreamWriter:
    """Writes a stream to a binary file object, one record at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.offset = 0
        self.records = 0
        self._crc = 0

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self.offset += len(data)

    def header(self) -> None:
        head = HEADER.pack(MAGIC, STREAM_VERSION, 0, 0)[:_HEADER_CHECKED]
        self._emit(head + _CRC.pack(zlib.crc32(head)))

    def record(self, kind: int, payload: bytes) -> None:
        """Append one record of ``kind`` (at most :func:`limit` bytes)."""
        if len(payload) > limit(kind):
            # A reader would refuse it: never write a stream no one can load.
            raise TieredError(f"a {_name(kind)} record of {len(payload)} bytes is over the limit of {limit(kind)}")
        head = RECORD_HEAD.pack(kind, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head, zlib.crc32(_INDEX.pack(self.records))))
        self._emit(head)
        self._emit(payload)
        self._emit(_CRC.pack(crc))
        self.records += 1

    def json(self, kind: int, document: dict[str, Any]) -> None:
        self.record(kind, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())

    def finish(self) -> None:
        """Append the trailer; the stream is complete once this returns."""
        self.record(KIND_END, TRAILER.pack(self.records, self.offset, self._crc))


class Record:
    """One record read and checked: its index, the offset where it starts,
    its kind and its payload."""

    __slots__ = ("index", "offset", "kind", "payload")

    def __init__(self, index: int, offset: int, kind: int, payload: bytes) -> None:
        self.index, self.offset, self.kind, self.payload = index, offset, kind, payload

    @property
    def where(self) -> str:
        return f"record {self.index} ({_name(self.kind)}) at byte {self.offset}"

    def error(self, message: str) -> StreamError:
        return StreamError(f"dump stream {self.where}: {message}; nothing was loaded")

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        try:
            document = json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self.error(f"malformed JSON ({exc})") from None
        if not isinstance(document, dict):
            raise self.error(f"holds JSON {type(document).__name__}, not an object")
        return document

    def page(self) -> tuple[bytes, int, int, int, bytes]:
        """(tag, generation, page, envelope kind, payload) of a page record."""
        if len(self.payload) < PAGE_HEAD.size:
            raise self.error(f"is {len(self.payload)} bytes, too short for a page record")
        tag, gen, page, kind = PAGE_HEAD.unpack_from(self.payload)
        return tag, gen, page, kind, self.payload[PAGE_HEAD.size :]


def page_payload(tag: bytes, gen: int, page: int, kind: int, payload: bytes) -> bytes:
    """The payload of a page record."""
    return PAGE_HEAD.pack(tag, gen, page, kind) + payload


class StreamReader:
    """Reads and checks a stream from a binary file object, record by record.

    :meth:`records` yields each critical or known record once it passed its
    CRC and ordering checks; it ends only after the trailer matched and the
    file ended, and raises StreamError otherwise.
    """

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.offset = 0
        self._crc = 0
        self.index = 0

    def _read(self, n: int, what: str) -> bytes:
        parts = []
        need = n
        while need:
            chunk = self._src.read(need)
            if not chunk:
                break
            parts.append(chunk)
            need -= len(chunk)
        data = b"".join(parts)
        if len(data) < n:
            raise StreamError(
                f"dump stream is truncated: {what} at byte {self.offset} needs {n} bytes, "
                f"the stream ends after {len(data)}; nothing was loaded"
            )
        self._crc = zlib.crc32(data, self._crc)
        self.offset += n
        return data

    def header(self) -> None:
        if self.offset:
            raise AssertionError("header read twice")
        try:
            head = self._read(HEADER.size, "the header")
        except StreamError:
            raise StreamError(
                "not a tiered dump: the stream is shorter than a dump header; nothing was loaded"
            ) from None
        magic, version, flags, crc = HEADER.unpack(head)
        if magic != MAGIC:
            raise StreamError(f"not a tiered dump (it starts with {magic!r}, not {MAGIC!r}); nothing was loaded")
        if crc != zlib.crc32(head[:_HEADER_CHECKED]):
            raise StreamError("dump stream header at byte 0: checksum mismatch; nothing was loaded")
        if version != STREAM_VERSION:
            raise StreamError(
                f"dump stream version {version}; this tiered reads version {STREAM_VERSION}; nothing was loaded"
            )
        if flags:
            raise StreamError(f"dump stream header: unknown flags {flags:#x}; nothing was loaded")

    def records(self) -> Iterator[Record]:
        phase = 0
        while True:
            start = self.offset
            crc_before = self._crc
            where = f"record {self.index} at byte {start}"
            kind, length = RECORD_HEAD.unpack(self._read(RECORD_HEAD.size, f"the head of {where}"))
            if length > limit(kind):
                raise StreamError(
                    f"dump stream {where} ({_name(kind)}): length {length} is over the limit of {limit(kind)} bytes; "
                    "nothing was loaded"
                )
            payload = self._read(length, f"the payload of {where} ({_name(kind)})")
            (crc,) = _CRC.unpack(self._read(_CRC.size, f"the checksum of {where}"))
            head = RECORD_HEAD.pack(kind, length)
            if crc != zlib.crc32(payload, zlib.crc32(head, zlib.crc32(_INDEX.pack(self.index)))):
                raise StreamError(
                    f"dump stream {where} ({_name(kind)}): checksum mismatch (the record is damaged, "
                    "or records were moved, dropped or repeated); nothing was loaded"
                )
            record = Record(self.index, start, kind, payload)
            self.index += 1
            if kind == KIND_END:
                self._finish(record, crc_before)
                return
            if kind & OPTIONAL:
                if kind in NAMES:
                    yield record
                continue  # an optional kind this code does not know
            if kind not in NAMES:
                raise record.error(
                    "is of a kind this tiered does not know and that may not be skipped "
                    "(a newer tiered wrote this dump)"
                )
            if PHASES[kind] < phase:
                raise record.error("comes after records that must follow it")
            phase = PHASES[kind]
            yield record

    def _finish(self, record: Record, crc_before: int) -> None:
        if len(record.payload) != TRAILER.size:
            raise record.error(f"is {len(record.payload)} bytes, not {TRAILER.size}")
        count, offset, crc = TRAILER.unpack(record.payload)
        if count != record.index or offset != record.offset:
            raise record.error(
                f"says the stream holds {count} records in {offset} bytes before it, "
                f"but it holds {record.index} in {record.offset}"
            )
        if crc != crc_before:
            raise record.error("checksum of the whole stream does not match")
        if self._src.read(1):
            raise StreamError(
                f"dump stream has bytes after its trailer (at byte {self.offset}); nothing was loaded"
            )
