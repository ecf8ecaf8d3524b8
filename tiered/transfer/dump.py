"""``Volume.dump``: stream one volume's tracking state (see :mod:`.stream`).

Records, in this order:

1. ``volume``: ``{"volume": <the stored volume record>, "tiered": version,
   "store_format": N, "dumped": unix time}``.  The record is copied as a
   whole, whatever fields it holds, without ``id`` and ``pages_digest``
   (store-local: the loader recomputes them); a format-1 record's ``dirty``
   is renamed ``unflushed`` and it gains its ``checkpoints`` count.
2. ``checkpoint``, one per live checkpoint in generation order:
   ``{"generation": g, "record": <the stored checkpoint record>}``.
3. ``page``, one per stored page in key order (tag, generation, page):
   the page's payload without the store's envelope, whose CRC covers the
   store-local key; the loader wraps it again under its own key.  The
   active state travels here too: a flush stores it as the ``A`` pages
   (one-bit, hybrid) or in ``G`` (multi-bit).
4. ``journal``, one per stored journal entry in sequence order (only a
   read-only volume of a sync-mode writer that has not flushed since, or
   that crashed, has any): the sequence number (u64 little-endian) and the
   entry's payload without its envelope (:mod:`tiered.storage.journal`).
5. the trailer.

A writer first persists what RAM holds (the flush path, under the volume's
lock), takes one read transaction while still holding the lock, and
streams from it after releasing the lock: the dump is the state at that
instant, however the volume is marked meanwhile.  A read-only volume dumps
the snapshot it was opened in, holding its lock while it streams (its
queries wait); if the writer had marks in RAM then, its record says
``unflushed`` and the loaded copy answers conservatively, as the reader does.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Iterator

import lmdb

from . import stream
from .files import open_output
from ..errors import ClosedError, CorruptionError, InvalidArgumentError, StorageError, TieredError
from ..storage import codec
from ..storage.journal import JOURNAL_KEY_SIZE
from ..volume import stored_generation_id
from ..storage.keys import checkpoint_key_gen, parse_page_key, volume_key

if TYPE_CHECKING:
    from ..volume import Volume

#: Volume record fields that only mean something in the store that holds it.
STORE_LOCAL_FIELDS = ("id", "pages_digest")


def dump_volume(vol: "Volume", file: Any) -> dict[str, Any]:
    """Write ``vol`` to ``file`` (a path or a binary file object).

    Returns ``{"volume", "generation_id", "records", "checkpoints", "pages", "bytes"}``.
    Raises ClosedError, InvalidArgumentError (``file`` is neither a path
    nor a binary file object), StorageError (an I/O error of ``file`` or of
    the store, or the store's map grew in this process during the dump,
    which ends its read transaction: run it again), StoreFullError (the
    flush found the store full) or CorruptionError (a stored value failed
    its check: the dump stops and, for a path, leaves no file).
    """
    storage = vol._storage
    begun: list[int] = []  # the storage epoch when the read transaction began
    try:
        with open_output(file) as out, _snapshot(vol, begun) as txn:
            return _write(vol, txn, stream.StreamWriter(out))
    except (TieredError, lmdb.Error) as exc:
        if not begun or storage.epoch == begun[0] or isinstance(exc, (ClosedError, InvalidArgumentError)):
            raise
        # py-lmdb ends every read transaction of the process when the map
        # is remapped; the dump's reads then fail half way.
        raise StorageError(
            f"volume {vol.name!r}: the store's map grew in this process during the dump, which ended "
            "the dump's read transaction; the stream is incomplete (a load refuses it): run the dump again"
        ) from None


@contextlib.contextmanager
def _snapshot(vol: "Volume", begun: list[int]) -> Iterator[Any]:
    """The read transaction to dump from (see the module docstring);
    appends to ``begun`` the storage epoch it was taken in."""
    storage = vol._storage
    if storage.readonly:
        with vol._lock:
            vol._check_open()
            begun.append(storage.epoch)
            yield vol._io.snapshot
        return
    with vol._commit_lock, vol._lock:
        vol._check_writable()
        vol._transact(vol._history.flush, persists=True)
        txn = storage.begin_read()
        begun.append(storage.epoch)
    try:
        with storage.guard("a dump"):
            yield txn
    finally:
        with contextlib.suppress(Exception):  # a remap may have ended it
            txn.abort()


def _write(vol: "Volume", txn: Any, writer: stream.StreamWriter) -> dict[str, Any]:
    from .. import __version__

    storage = vol._storage
    version = vol._io.version
    prefix = volume_key(vol._id)
    key = prefix
    record = codec.unpack_json(txn.get(key, db=storage.volumes), key, version, f"volume record of {vol.name!r}")
    if "dirty" in record:  # format 1's name of "unflushed"
        record.setdefault("unflushed", record.pop("dirty"))
        record.pop("dirty", None)
    if "checkpoints" not in record:  # format 1 did not count them
        record["checkpoints"] = sum(1 for _ in storage.scan_prefix(txn, storage.checkpoints, prefix))
    for field in STORE_LOCAL_FIELDS:
        record.pop(field, None)

    writer.header()
    writer.json(
        stream.KIND_VOLUME,
        {"volume": record, "tiered": __version__, "store_format": version, "dumped": time.time()},
    )
    checkpoints = 0
    for k, v in storage.scan_prefix(txn, storage.checkpoints, prefix):
        gen = checkpoint_key_gen(k, vol._id)
        stored = codec.unpack_json(v, k, version, f"checkpoint of volume {vol.name!r}")
        writer.json(stream.KIND_CHECKPOINT, {"generation": gen, "record": stored})
        checkpoints += 1
    pages = 0
    for k, v in storage.scan_prefix(txn, storage.pages, prefix):
        tag, gen, page = parse_page_key(k, vol._id)
        kind = v[3] if len(v) > 3 else -1
        if kind not in (codec.KIND_BITS_PAGE, codec.KIND_GENS_PAGE):
            kind = codec.KIND_BITS_PAGE  # let unwrap name what is wrong
        what = f"volume {vol.name!r} page {tag.decode('latin-1')}/{gen}/{page}"
        payload = codec.unwrap(v, kind, bytes(k), version, what)
        writer.record(stream.KIND_PAGE, stream.page_payload(tag, gen, page, kind, bytes(payload)))
        pages += 1
    entries = 0
    if storage.journal is not None:
        for k, v in storage.scan_prefix(txn, storage.journal, prefix):
            if len(k) != JOURNAL_KEY_SIZE:
                raise CorruptionError(f"volume {vol.name!r}: journal key {bytes(k).hex()} is {len(k)} bytes")
            seq = int.from_bytes(bytes(k[8:]), "big")
            payload = codec.unwrap(v, codec.KIND_JOURNAL, bytes(k), version, f"volume {vol.name!r} journal entry {seq}")
            writer.record(stream.KIND_JOURNAL, seq.to_bytes(8, "little") + bytes(payload))
            entries += 1
    writer.finish()
    return {
        "volume": vol.name,
        "generation_id": stored_generation_id({**record, "id": vol._id}),
        "records": writer.records,
        "checkpoints": checkpoints,
        "pages": pages,
        "bytes": writer.offset,
    }
