"""The sync-mode journal: the chunks a volume newly dirtied since its last flush.

Each sync that has something to make durable commits one *entry* in the
``journal`` database, in the transaction that also records the range of
entries in the volume record (``journal_from``, ``journal_last``).  Entry
``s`` of volume ``v`` lives under key ``v`` + ``s`` (8 + 8 bytes
big-endian, so a volume's entries are one contiguous range in commit
order); its value is a checksummed envelope (:mod:`tiered.storage.codec`,
kind ``KIND_JOURNAL``) around::

    period  u64 little-endian   the generation the chunks were marked in
    count   u64 little-endian
    count x (first chunk u64, last chunk u64), inclusive ranges

A flush or a checkpoint persists the active state itself and deletes the
entries in the same transaction, so the journal holds only what was
dirtied since; reopening after a crash replays it, in key order, over the
last flushed state.  Because the record names the exact range of entries,
a lost, moved or extra entry is a :class:`~tiered.errors.CorruptionError`,
never a silently missing chunk.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import numpy as np

from . import codec
from ..errors import CorruptionError
from .environment import Storage

_KEY = struct.Struct(">QQ")
_HEAD = struct.Struct("<QQ")
JOURNAL_KEY_SIZE = _KEY.size


def journal_key(vol_id: int, seq: int) -> bytes:
    return _KEY.pack(vol_id, seq)


def encode_entry(period: int, ranges: np.ndarray, key: bytes) -> bytes:
    """The stored value of one entry: ``ranges`` is an int64 array of shape
    (n, 2) of inclusive chunk ranges marked in ``period``."""
    payload = _HEAD.pack(period, len(ranges)) + np.ascontiguousarray(ranges, "<u8").tobytes()
    return codec.wrap(codec.KIND_JOURNAL, payload, key)


def decode_entry(value: bytes, key: bytes, version: int, n_chunks: int, what: str) -> tuple[int, np.ndarray]:
    """(period, int64 array (n, 2) of inclusive chunk ranges) of a stored
    entry of a volume of ``n_chunks`` chunks; CorruptionError if it fails
    its checksum or holds a range outside the volume."""
    payload = codec.unwrap(value, codec.KIND_JOURNAL, key, version, what)
    if len(payload) < _HEAD.size:
        raise CorruptionError(f"{what}: truncated journal entry ({len(payload)} bytes)")
    period, count = _HEAD.unpack_from(payload)
    if len(payload) != _HEAD.size + 16 * count:
        raise CorruptionError(f"{what}: journal entry of {count} ranges holds {len(payload)} bytes")
    ranges = np.frombuffer(payload, "<u8", offset=_HEAD.size).reshape(count, 2)
    if count and (np.any(ranges[:, 0] > ranges[:, 1]) or int(ranges[:, 1].max()) >= n_chunks):
        raise CorruptionError(f"{what}: journal entry holds a chunk range outside the volume")
    return period, ranges.astype(np.int64)


def read_entries(
    storage: Storage, txn: Any, vol_id: int, span: tuple[int, int, int], n_chunks: int, version: int, label: str
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(seq, period, ranges) of the entries of a volume, in commit order.

    ``span`` is what the volume record names: (first seq, last seq, count);
    a failed commit leaves a gap, so seqs ascend but need not be
    consecutive.  CorruptionError as soon as an entry is found missing,
    damaged or extra: the caller (a volume being opened) is then dropped
    with whatever it had applied.
    """
    first, last, count = span
    seen = 0
    prev = first - 1
    db = storage.journal
    if db is not None:
        for key, value in storage.scan_prefix(txn, db, _KEY.pack(vol_id, 0)[:8]):
            if len(key) != JOURNAL_KEY_SIZE:
                raise CorruptionError(f"{label}: journal key {bytes(key).hex()} is {len(key)} bytes")
            seq = _KEY.unpack(key)[1]
            if not count:
                raise CorruptionError(f"{label}: journal entry {seq} exists, but the record names none")
            if seq <= prev or seq > last or (seen == 0 and seq != first) or seen == count:
                raise CorruptionError(
                    f"{label}: journal entry {seq} is not among the {count} entries {first}..{last} the record names"
                )
            period, ranges = decode_entry(value, key, version, n_chunks, f"{label}: journal entry {seq}")
            yield seq, period, ranges
            prev = seq
            seen += 1
    if seen != count or (count and prev != last):
        raise CorruptionError(
            f"{label}: the record names {count} journal entries {first}..{last}; the store holds {seen}"
        )


def delete_entries(storage: Storage, txn: Any, vol_id: int) -> int:
    """Delete every journal entry of a volume inside ``txn``."""
    if storage.journal is None:
        return 0
    return storage.delete_prefix(txn, storage.journal, _KEY.pack(vol_id, 0)[:8])
