"""Format versions of a store: which one a snapshot holds, and the in-place
upgrade of a format-1 store to the format this code writes.

A store is in one format at a time, named by its ``meta`` record
``b"format"``; every value must carry that version in its header
(:func:`tiered.storage.codec.unwrap`).  Readers read format 1 as it is.  A
writer upgrades a format-1 store when it opens it, in one write transaction:
every value is checked as format 1 (payload CRC, header), then written
again as format 2 (CRC over key, header and payload); volume records take
``unflushed`` for format 1's ``dirty`` and gain the count of their
checkpoints and the digest of their page keys; the ``meta`` record says 2.
A value that fails its format-1 check aborts the upgrade, which changes
nothing: rewriting it would give damaged data a valid format-2 checksum.
"""

from __future__ import annotations

from typing import Any

import lmdb

from . import codec
from ..errors import CorruptionError
from .environment import Storage
from .keys import key_digest

FORMAT_KEY = b"format"


def read_format(storage: Storage, txn: lmdb.Transaction) -> int:
    """The format of the store as of ``txn``; CorruptionError when the
    format record is missing, damaged or names a format this code cannot read."""
    value = txn.get(FORMAT_KEY, db=storage.meta)
    if value is None:
        raise CorruptionError(f"{storage.path!r} holds no tiered format record")
    # The record's own header says which check applies; the record must then
    # agree with it, so one flipped version byte cannot pick the weaker check.
    version = codec.value_version(value)
    if version not in codec.READABLE_VERSIONS:
        raise CorruptionError(
            f"{storage.path!r}: store format record has version {version}; "
            f"this tiered reads formats {codec.READABLE_VERSIONS}"
        )
    fmt = codec.unpack_json(value, FORMAT_KEY, version, "store format record").get("format")
    if fmt != version:
        raise CorruptionError(
            f"{storage.path!r}: store format record says format {fmt!r} in a value of version {version}"
        )
    return version


def format_record() -> bytes:
    """The ``meta`` format record of a new store."""
    return codec.pack_json({"format": codec.FORMAT_VERSION}, FORMAT_KEY)


def upgrade_v1(storage: Storage, txn: lmdb.Transaction) -> int:
    """Rewrite every value of a format-1 store as format 2 inside ``txn``;
    returns how many values were rewritten.  The caller has checked the
    volumes' meaning (:mod:`tiered.integrity`) in the same transaction."""
    # What format 2 records hold about each volume's keys, from the keys.
    counts: dict[bytes, int] = {}
    digests: dict[bytes, int] = {}
    for key, _ in storage.scan_prefix(txn, storage.checkpoints, b""):
        counts[bytes(key[:8])] = counts.get(bytes(key[:8]), 0) + 1
    for key, _ in storage.scan_prefix(txn, storage.pages, b""):
        digests[bytes(key[:8])] = digests.get(bytes(key[:8]), 0) ^ key_digest(key)
    rewritten = 0
    for name, db in (
        ("meta", storage.meta),
        ("volumes", storage.volumes),
        ("checkpoints", storage.checkpoints),
        ("pages", storage.pages),
    ):
        cursor = txn.cursor(db)
        more = cursor.first()
        while more:
            key = bytes(cursor.key())
            value = cursor.value()
            what = f"{name} value {key.hex()}"
            if name == "pages":
                kind = value[3] if len(value) > 3 else -1
                if kind not in (codec.KIND_BITS_PAGE, codec.KIND_GENS_PAGE):
                    raise CorruptionError(f"{what}: stored kind {kind} is not a page")
                new = codec.wrap(kind, codec.unwrap(value, kind, key, 1, what), key)
            else:
                record = codec.unpack_json(value, key, 1, what)
                record = _upgrade_record(name, key, record)
                if name == "volumes":
                    record.update(checkpoints=counts.get(key, 0), pages_digest=digests.get(key, 0))
                new = codec.pack_json(record, key)
            cursor.put(key, new)
            rewritten += 1
            more = cursor.next()
    return rewritten


def _upgrade_record(db: str, key: bytes, record: dict[str, Any]) -> dict[str, Any]:
    if db == "meta" and key == FORMAT_KEY:
        return {**record, "format": codec.FORMAT_VERSION}
    if db == "volumes" and "dirty" in record:
        record = dict(record)
        record.setdefault("unflushed", record.pop("dirty"))
        record.pop("dirty", None)
    return record


__all__ = ["FORMAT_KEY", "format_record", "read_format", "upgrade_v1"]
