"""``Store.load``: add a volume from a dump stream (see :mod:`.stream`), all
or nothing.

The whole load is one LMDB write transaction (``Storage.write``).  Each
record is checked as it arrives (its CRC, its order, and for a page its
key's range and its payload, decoded once and dropped), written, and
forgotten, so memory stays bounded by one record; before the commit the
volume's record, checkpoints and catalog are cross-checked as an opening
volume would (:mod:`tiered.integrity`).  Any failure (a damaged, truncated
or foreign stream, the name taken, a cross-check) raises before the commit
and the transaction is aborted: nothing was loaded.

The volume gets a fresh id from the store's volume counter and, unless
``name`` is given, the name it had; every other field of its record is
kept as dumped, except ``pages_digest``, computed from the keys written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import stream
from .files import open_input
from ..errors import AlreadyExistsError, CorruptionError, ReadOnlyError, StreamError
from ..storage import codec
from ..storage.journal import decode_entry, journal_key
from ..storage.keys import checkpoint_key, key_digest, page_key, volume_key
from ..config import PAGE_SEGMENTS, SEG_CHUNKS
from ..integrity import check_history, check_record
from ..strategies import gens_dtype

if TYPE_CHECKING:
    from ..store import Store
    from ..volume import Volume


def load_volume(store: "Store", file: Any, name: str | None = None) -> "Volume":
    """Load the volume dumped in ``file`` (a path or a binary file object)
    into ``store`` as ``name`` (default: its dumped name) and open it.

    Raises InvalidArgumentError (a bad ``file`` or ``name``), StreamError
    (a CorruptionError: the stream is truncated, damaged or not a dump),
    CorruptionError (the dumped volume fails its cross-checks),
    AlreadyExistsError (the name is taken), ReadOnlyError, ClosedError,
    StorageError (an I/O error of ``file`` or of the store) or
    StoreFullError; in every case nothing was loaded.
    """
    from ..store import NEXT_VOLUME_KEY
    from ..volume import check_name

    if name is not None:
        check_name(name, "volume")
    with store._lock:
        store._check_open()
        if store.readonly:
            raise ReadOnlyError(f"store {store.path!r} is open read-only")
        if name is not None and name in store._ids:
            raise AlreadyExistsError(f"store already has a volume {name!r}")
        with open_input(file) as source:

            def body(txn: Any) -> tuple[int, str]:
                source.rewind()  # the transaction may run again in a larger map
                return _Loader(store, txn, name, NEXT_VOLUME_KEY).run(stream.StreamReader(source))

            vol_id, loaded = store._storage.write(body)
        store._ids[loaded] = vol_id
        return store._open_volume(loaded, None)


class _Loader:
    """One attempt at the load transaction."""

    def __init__(self, store: "Store", txn: Any, name: str | None, counter_key: bytes) -> None:
        self.store = store
        self.storage = store._storage
        self.txn = txn
        self.name = name
        self.counter_key = counter_key
        self.vol_id = 0
        self.record: dict[str, Any] | None = None
        self.checkpoints: list[tuple[int, dict[str, Any]]] = []
        self.tables: set[tuple[bytes, int]] = set()
        self.digest = 0
        self.last_page: tuple[bytes, int, int] | None = None
        self.last_entry = 0
        self.entries: list[int] = []

    def run(self, reader: stream.StreamReader) -> tuple[int, str]:
        handlers = {
            stream.KIND_CHECKPOINT: self._checkpoint,
            stream.KIND_PAGE: self._page,
            stream.KIND_JOURNAL: self._journal,
        }
        reader.header()
        for rec in reader.records():
            if rec.kind == stream.KIND_VOLUME:
                self._volume(rec)
            elif self.record is None:
                raise rec.error("comes before the volume record")
            elif rec.kind in handlers:
                handlers[rec.kind](rec)
            else:
                raise rec.error("is of a kind this tiered cannot load")
        if self.record is None:
            raise StreamError("dump stream holds no volume record; nothing was loaded")
        return self._finish()

    def _volume(self, rec: stream.Record) -> None:
        if self.record is not None:
            raise rec.error("is a second volume record")
        document = rec.json()
        record = document.get("volume")
        if not isinstance(record, dict):
            raise rec.error("holds no volume record")
        record = dict(record)
        if self.name is not None:
            record["name"] = self.name
        counter = codec.unpack_json(
            self.txn.get(self.counter_key, db=self.storage.meta), self.counter_key,
            codec.FORMAT_VERSION, "volume counter",
        )
        self.vol_id = counter["id"]
        record.update(id=self.vol_id, pages_digest=0)
        record.setdefault("checkpoints", 0)
        try:
            self.strategy = check_record(self.vol_id, record, codec.FORMAT_VERSION)
        except CorruptionError as exc:
            raise rec.error(str(exc)) from None
        if record["name"] in self.store._ids:
            raise AlreadyExistsError(
                f"store already has a volume {record['name']!r}; load it under another name"
                " (Store.load(file, name=...), tiered load --as NAME); nothing was loaded"
            )
        self.dtype = gens_dtype(self.strategy)
        n_chunks = -(-record["size"] // record["granularity"])
        self.n_segments = -(-n_chunks // SEG_CHUNKS)
        self.n_pages = -(-self.n_segments // PAGE_SEGMENTS)
        self.txn.put(self.counter_key, codec.pack_json({"id": self.vol_id + 1}, self.counter_key), db=self.storage.meta)
        self.record = record

    def _checkpoint(self, rec: stream.Record) -> None:
        document = rec.json()
        gen, stored = document.get("generation"), document.get("record")
        if not isinstance(gen, int) or isinstance(gen, bool) or not 0 < gen < 1 << 64 or not isinstance(stored, dict):
            raise rec.error("is not a checkpoint record")
        if self.checkpoints and gen <= self.checkpoints[-1][0]:
            raise rec.error(f"generation {gen} does not follow {self.checkpoints[-1][0]}")
        if self.last_page is not None:
            raise rec.error("comes after a page record")
        key = checkpoint_key(self.vol_id, gen)
        self.txn.put(key, codec.pack_json(stored, key), db=self.storage.checkpoints)
        self.checkpoints.append((gen, stored))

    def _page(self, rec: stream.Record) -> None:
        tag, gen, page, kind, payload = rec.page()
        if (tag, gen, page) <= (self.last_page or (b"", -1, -1)):
            raise rec.error(f"page {tag!r}/{gen}/{page} does not follow {self.last_page}")
        self.last_page = (tag, gen, page)
        expected = codec.KIND_GENS_PAGE if tag == b"G" else codec.KIND_BITS_PAGE
        if kind != expected:
            raise rec.error(f"page {tag!r}/{gen}/{page} has page kind {kind}, not {expected}")
        if page >= self.n_pages:
            raise rec.error(f"page {page} lies beyond the volume's {self.n_pages} pages")
        key = page_key(self.vol_id, tag, gen, page)
        value = codec.wrap(kind, payload, key)
        what = f"dump stream {rec.where}, page {tag.decode('latin-1')}/{gen}/{page}"
        # Decode once, as a query would, so that a page that passed its CRC
        # but is malformed is refused now rather than at a query.
        try:
            codec.decode_page(
                value, page, self.dtype, what, key=key, version=codec.FORMAT_VERSION, n_segments=self.n_segments
            )
        except CorruptionError as exc:
            raise StreamError(f"{exc}; nothing was loaded") from None
        self.txn.put(key, value, db=self.storage.pages)
        self.tables.add((tag, gen))
        self.digest ^= key_digest(key)

    def _journal(self, rec: stream.Record) -> None:
        payload = rec.payload
        if len(payload) < 8:
            raise rec.error("is too short for a journal entry")
        seq = int.from_bytes(payload[:8], "little")
        if seq <= self.last_entry:
            raise rec.error(f"journal entry {seq} does not follow {self.last_entry}")
        self.last_entry = seq
        key = journal_key(self.vol_id, seq)
        value = codec.wrap(codec.KIND_JOURNAL, bytes(payload[8:]), key)
        n_chunks = -(-self.record["size"] // self.record["granularity"])
        try:  # checked now, as a reopen would replay it
            decode_entry(value, key, codec.FORMAT_VERSION, n_chunks, f"dump stream {rec.where}, journal entry {seq}")
        except CorruptionError as exc:
            raise StreamError(f"{exc}; nothing was loaded") from None
        self.txn.put(key, value, db=self.storage.journal)
        self.entries.append(seq)

    def _finish(self) -> tuple[int, str]:
        record = self.record
        assert record is not None
        record["pages_digest"] = self.digest
        try:
            check_record(self.vol_id, record, codec.FORMAT_VERSION)
            check_history(self.vol_id, record, self.strategy, self.checkpoints, sorted(self.tables), self.digest)
            span = [record.get(f, 0) for f in ("journal_from", "journal_last", "journal_count")]
            if (span[2], span[0] if span[2] else 0, span[1] if span[2] else 0) != (
                len(self.entries), self.entries[0] if self.entries else 0, self.entries[-1] if self.entries else 0
            ):
                raise CorruptionError(f"its record names journal entries {span}, the stream holds {len(self.entries)}")
        except CorruptionError as exc:
            raise StreamError(f"dump stream: the dumped volume is inconsistent: {exc}; nothing was loaded") from None
        key = volume_key(self.vol_id)
        self.txn.put(key, codec.pack_json(record, key), db=self.storage.volumes)
        return self.vol_id, record["name"]
