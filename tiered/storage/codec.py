"""Stored values: a checksummed, versioned envelope around every payload.

Layout of every value in LMDB::

    magic  b"TD"   2 bytes
    format version 1 byte   (1 or 2; see docs/format.md)
    kind           1 byte   (what the payload is)
    flags          1 byte   (zero: reserved for future encodings)
    reserved       1 byte   (zero)
    crc32          4 bytes  little-endian
    payload

Format 2 computes the CRC-32 over the value's LMDB key, then the first six
header bytes, then the payload.  So a value read under another key (a key
with a flipped bit, say: the key carries the volume, generation and page)
fails its check, as does any change to the header, at no extra stored byte.
Format 1 covered the payload only; its values are read (a store is in one
format, named by its ``meta`` record) but never written, and a writer
upgrades a format-1 store in place when it opens it
(:mod:`tiered.storage.upgrade`).

Pages of a bitmap or generation table are encoded by the kernels, per
segment, as whichever is smallest of absent, full/uniform, delta-varint
positions, varint runs, sparse pairs or raw.  No general-purpose compressor
runs on top: on random, clustered and dense patterns the encoding alone is
already below roaring's serialized size, and zlib on top saved only 10-15%
on random bitmaps while doubling the cost of sealing and of cold queries.

Every failure is a :class:`~tiered.errors.CorruptionError` naming the value.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from . import gen_page_kernels as G
from . import page_kernels as K
from . import scan_kernels as S
from ..config import PAGE_SEGMENTS, PAGE_SHIFT, SEG_CHUNKS, SEG_WORDS
from ..errors import CorruptionError
from ..bitmaps.table import SegmentTable, Spans

MAGIC = b"TD"
#: The format this code writes.
FORMAT_VERSION = 2
#: The formats this code reads.
READABLE_VERSIONS = (1, 2)
HEADER = struct.Struct("<2sBBBBI")
# The header bytes before the CRC, which format 2's CRC covers.
_CHECKED_HEADER = HEADER.size - 4

KIND_JSON = 1
KIND_BITS_PAGE = 2
KIND_GENS_PAGE = 3
KIND_JOURNAL = 4


def _crc(version: int, key: bytes, header: bytes, payload: bytes) -> int:
    """The CRC a value of ``version`` stores (see the module docstring)."""
    if version == 1:
        return zlib.crc32(payload)
    return zlib.crc32(payload, zlib.crc32(header[:_CHECKED_HEADER], zlib.crc32(key)))


def wrap(kind: int, payload: bytes, key: bytes, version: int = FORMAT_VERSION) -> bytes:
    """The stored value of ``payload`` under LMDB key ``key``.

    ``version`` other than FORMAT_VERSION only serves tests and fixtures
    that need format-1 values.
    """
    head = HEADER.pack(MAGIC, version, kind, 0, 0, 0)
    return HEADER.pack(MAGIC, version, kind, 0, 0, _crc(version, key, head, payload)) + payload


def unwrap(value: bytes, kind: int, key: bytes, version: int, what: str) -> bytes:
    """Check and strip the envelope of a value read under ``key`` from a
    store of format ``version``; ``what`` names the value in errors.

    A value must carry its store's version: a format-1 header in a format-2
    store would otherwise skip the key check.
    """
    if len(value) < HEADER.size:
        raise CorruptionError(f"{what}: stored value is truncated ({len(value)} bytes)")
    magic, got_version, got_kind, flags, reserved, crc = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise CorruptionError(f"{what}: not a tiered value (bad magic {bytes(magic)!r})")
    if got_version != version:
        raise CorruptionError(
            f"{what}: stored format version {got_version} in a store of format {version}"
            + ("" if got_version in READABLE_VERSIONS else f"; this tiered reads versions {READABLE_VERSIONS}")
        )
    if got_kind != kind:
        raise CorruptionError(f"{what}: stored kind {got_kind}, expected {kind}")
    if flags:
        raise CorruptionError(f"{what}: unknown flags {flags:#x}")
    if reserved:
        raise CorruptionError(f"{what}: reserved header byte is {reserved:#x}, not 0")
    payload = value[HEADER.size :]
    if _crc(version, key, value[:HEADER.size], payload) != crc:
        raise CorruptionError(
            f"{what}: checksum mismatch (the value is damaged or stored under the wrong key)"
            if version >= 2 else f"{what}: checksum mismatch"
        )
    return payload


def value_version(value: bytes) -> int | None:
    """The format version a value's header claims (None if it has no header),
    unchecked: only to read the ``meta`` format record, which names the
    version every other value must carry."""
    if len(value) < HEADER.size or bytes(value[:2]) != MAGIC:
        return None
    return value[2]


def pack_json(record: dict[str, Any], key: bytes, version: int = FORMAT_VERSION) -> bytes:
    return wrap(KIND_JSON, json.dumps(record, sort_keys=True, separators=(",", ":")).encode(), key, version)


def unpack_json(value: bytes, key: bytes, version: int, what: str) -> dict[str, Any]:
    """A JSON record (a dict), checked as stored under ``key``."""
    try:
        record = json.loads(unwrap(value, KIND_JSON, key, version, what))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptionError(f"{what}: bad record: {exc}") from None
    if not isinstance(record, dict):
        raise CorruptionError(f"{what}: bad record type {type(record).__name__}")
    return record


def _check_page(page: int, n_segments: int, what: str) -> None:
    """The page number (from the key) must lie inside the volume, before a
    kernel shifts it."""
    if not 0 <= page <= (n_segments - 1) >> PAGE_SHIFT:
        raise CorruptionError(f"{what}: page {page} lies outside the volume ({n_segments} segments)")


def encode_bits_page(spans: Spans, page: int, key: bytes) -> bytes:
    """The stored value of the spans of one page of a bitmap, under ``key``."""
    out = np.empty(16 + len(spans) * (24 + 8 * SEG_WORDS), np.uint8)
    n = K.encode_bit_spans(spans.first, spans.count, spans.ref, spans.rows, page, out)
    return wrap(KIND_BITS_PAGE, out[:n].tobytes(), key)


def decode_bits_page(value: bytes, page: int, what: str, *, key: bytes, version: int, n_segments: int) -> Spans:
    """Spans of a stored bitmap page of a volume of ``n_segments`` segments."""
    buf = bits_payload(value, page, what, key, version, n_segments)
    ok, first, count, ref, rows = K.decode_bit_spans(buf, page, n_segments)
    if not ok:
        raise CorruptionError(f"{what}: malformed bitmap page")
    return Spans(first, count, ref, rows)


def decode_page(value: bytes, page: int, dtype: np.dtype, what: str, *, key: bytes, version: int, n_segments: int) -> Spans:
    """Decode a stored bitmap or generation page, whichever its envelope says."""
    if len(value) >= HEADER.size and value[3] == KIND_GENS_PAGE:
        return decode_gens_page(value, page, dtype, what, key=key, version=version, n_segments=n_segments)
    return decode_bits_page(value, page, what, key=key, version=version, n_segments=n_segments)


def encode_gens_page(spans: Spans, page: int, key: bytes) -> bytes:
    """The stored value of the spans of one page of a generation table.

    The first payload byte is the width in bytes, so a page read back with
    another width is caught instead of misread.
    """
    width = spans.rows.itemsize
    out = np.empty(17 + len(spans) * (24 + width * SEG_CHUNKS), np.uint8)
    out[0] = width
    n = G.encode_gen_spans(spans.first, spans.count, spans.ref, spans.rows, page, out[1:])
    return wrap(KIND_GENS_PAGE, out[: n + 1].tobytes(), key)


def bits_payload(value: bytes, page: int, what: str, key: bytes, version: int, n_segments: int) -> np.ndarray:
    """The checked payload of a stored bitmap page, as bytes (uint8)."""
    _check_page(page, n_segments, what)
    return np.frombuffer(unwrap(value, KIND_BITS_PAGE, key, version, what), np.uint8)


def gens_payload(value: bytes, page: int, dtype: np.dtype, what: str, key: bytes, version: int, n_segments: int) -> np.ndarray:
    _check_page(page, n_segments, what)
    buf = np.frombuffer(unwrap(value, KIND_GENS_PAGE, key, version, what), np.uint8)
    if len(buf) < 1 or buf[0] != np.dtype(dtype).itemsize:
        raise CorruptionError(f"{what}: generation width does not match the volume")
    return buf[1:]


def decode_gens_page(value: bytes, page: int, dtype: np.dtype, what: str, *, key: bytes, version: int, n_segments: int) -> Spans:
    """Spans of a stored generation page (rows of ``dtype``)."""
    ok, first, count, ref, rows = G.decode_gen_spans(
        gens_payload(value, page, dtype, what, key, version, n_segments), page, n_segments, np.empty((0, 0), dtype)
    )
    if not ok:
        raise CorruptionError(f"{what}: malformed generation page")
    return Spans(first, count, ref, rows)


def or_gens_page_at_least(
    value: bytes, page: int, dtype: np.dtype, what: str, table: SegmentTable, at_least: int, *, key: bytes, version: int
) -> None:
    """OR into a bitmap table the chunks of a stored generation page >= at_least,
    decoding one segment at a time instead of the whole page; the table's
    size bounds the page."""
    payload = gens_payload(value, page, dtype, what, key, version, table.n_segments)
    table.reserve(rows=PAGE_SEGMENTS, pages=1)
    row = np.empty((1, SEG_CHUNKS), dtype)
    if not S.or_gen_page_at_least(
        payload, page, table.n_segments, row, table.index, table.pool, table.n_top, at_least, S.deposit_table()
    ):
        raise CorruptionError(f"{what}: malformed generation page")
