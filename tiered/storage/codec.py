"""Stored values: a checksummed, versioned envelope around every payload.

Layout of every value in LMDB::

    magic  b"TD"   2 bytes
    format version 1 byte   (FORMAT_VERSION)
    kind           1 byte   (what the payload is)
    flags          1 byte   (zero: reserved for future encodings)
    reserved       1 byte   (zero)
    crc32          4 bytes  little-endian, of the payload as stored
    payload

Pages of a bitmap or generation table are encoded by the kernels, per
segment, as whichever is smallest of absent, full/uniform, delta-varint
positions, varint runs, sparse pairs or raw.  No general-purpose compressor
runs on top: on random, clustered and dense patterns the encoding alone is
already below roaring's serialized size, and zlib on top saved only 10-15%
on random bitmaps while doubling the cost of sealing and of cold queries.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from . import page_kernels as K
from . import scan_kernels as S
from ..config import PAGE_SEGMENTS, SEG_CHUNKS, SEG_WORDS
from ..errors import CorruptionError
from ..bitmaps.table import SegmentTable, Spans

MAGIC = b"TD"
FORMAT_VERSION = 1
HEADER = struct.Struct("<2sBBBBI")

KIND_JSON = 1
KIND_BITS_PAGE = 2
KIND_GENS_PAGE = 3



def wrap(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, kind, 0, 0, zlib.crc32(payload)) + payload


def unwrap(value: bytes, kind: int, what: str) -> bytes:
    """Check and strip the envelope; ``what`` names the value in errors."""
    if len(value) < HEADER.size:
        raise CorruptionError(f"{what}: stored value is truncated ({len(value)} bytes)")
    magic, version, got_kind, flags, _, crc = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise CorruptionError(f"{what}: not a tiered value (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptionError(
            f"{what}: stored format version {version}, this tiered reads version {FORMAT_VERSION}"
        )
    if got_kind != kind:
        raise CorruptionError(f"{what}: stored kind {got_kind}, expected {kind}")
    if flags:
        raise CorruptionError(f"{what}: unknown flags {flags:#x}")
    payload = value[HEADER.size :]
    if zlib.crc32(payload) != crc:
        raise CorruptionError(f"{what}: checksum mismatch")
    return payload


def pack_json(record: dict[str, Any]) -> bytes:
    return wrap(KIND_JSON, json.dumps(record, sort_keys=True, separators=(",", ":")).encode())


def unpack_json(value: bytes, what: str) -> dict[str, Any]:
    try:
        record = json.loads(unwrap(value, KIND_JSON, what))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptionError(f"{what}: bad record: {exc}") from None
    if not isinstance(record, dict):
        raise CorruptionError(f"{what}: bad record type {type(record).__name__}")
    return record


def encode_bits_page(spans: Spans, page: int) -> bytes:
    """Encode the spans of one page of a bitmap."""
    out = np.empty(16 + len(spans) * (24 + 8 * SEG_WORDS), np.uint8)
    n = K.encode_bit_spans(spans.first, spans.count, spans.ref, spans.rows, page, out)
    return wrap(KIND_BITS_PAGE, out[:n].tobytes())


def decode_bits_page(value: bytes, page: int, what: str) -> Spans:
    buf = np.frombuffer(unwrap(value, KIND_BITS_PAGE, what), np.uint8)
    ok, first, count, ref, rows = K.decode_bit_spans(buf, page)
    if not ok:
        raise CorruptionError(f"{what}: malformed bitmap page")
    return Spans(first, count, ref, rows)


def decode_page(value: bytes, page: int, dtype: np.dtype, what: str) -> Spans:
    """Decode a stored bitmap or generation page, whichever its envelope says."""
    if len(value) >= HEADER.size and value[3] == KIND_GENS_PAGE:
        return decode_gens_page(value, page, dtype, what)
    return decode_bits_page(value, page, what)


def encode_gens_page(spans: Spans, page: int) -> bytes:
    """Encode the spans of one page of a generation table.

    The first payload byte is the width in bytes, so a page read back with
    another width is caught instead of misread.
    """
    width = spans.rows.itemsize
    out = np.empty(17 + len(spans) * (24 + width * SEG_CHUNKS), np.uint8)
    out[0] = width
    n = K.encode_gen_spans(spans.first, spans.count, spans.ref, spans.rows, page, out[1:])
    return wrap(KIND_GENS_PAGE, out[: n + 1].tobytes())


def _gens_payload(value: bytes, dtype: np.dtype, what: str) -> np.ndarray:
    buf = np.frombuffer(unwrap(value, KIND_GENS_PAGE, what), np.uint8)
    if len(buf) < 1 or buf[0] != np.dtype(dtype).itemsize:
        raise CorruptionError(f"{what}: generation width does not match the volume")
    return buf[1:]


def decode_gens_page(value: bytes, page: int, dtype: np.dtype, what: str) -> Spans:
    no_table = np.empty(0, np.int32)
    ok, first, count, ref, rows = K.decode_gen_spans(
        _gens_payload(value, dtype, what), page, np.empty((0, 0), dtype),
        no_table, np.empty((0, SEG_WORDS), np.uint64), 0, 0,
    )
    if not ok:
        raise CorruptionError(f"{what}: malformed generation page")
    return Spans(first, count, ref, rows)


def load_gens_page(value: bytes, page: int, dtype: np.dtype, what: str, table: SegmentTable) -> None:
    """Decode a stored generation page straight into ``table``, where that
    page must be empty."""
    payload = _gens_payload(value, dtype, what)
    table.reserve(rows=PAGE_SEGMENTS, pages=1)
    if not K.load_gen_page(payload, page, table.index, table.pool, table.n_top):
        raise CorruptionError(f"{what}: malformed generation page")


def or_gens_page_at_least(value: bytes, page: int, dtype: np.dtype, what: str, table: SegmentTable, at_least: int) -> None:
    """OR into a bitmap table the chunks of a stored generation page >= at_least,
    decoding one segment at a time instead of the whole page."""
    payload = _gens_payload(value, dtype, what)
    table.reserve(rows=PAGE_SEGMENTS, pages=1)
    row = np.empty((1, SEG_CHUNKS), dtype)
    if not S.or_gen_page_at_least(payload, page, row, table.index, table.pool, table.n_top, at_least, S.deposit_table()):
        raise CorruptionError(f"{what}: malformed generation page")
