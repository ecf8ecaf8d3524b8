"""Sealed pages of one volume: catalog, lazy loading, byte-bounded cache.

The catalog (which pages each sealed table has) lives in RAM so a query
knows what to read without scanning LMDB; the pages themselves are decoded
only when a query or a merge needs them, through an LRU cache bounded in
bytes.  Writes go through a :class:`PageWrites` bound to one LMDB transaction;
the catalog and cache follow only once that transaction has committed.

Nothing read is trusted: page keys are parsed with their length and volume
checked, a page number beyond the volume is a ``CorruptionError`` when the
catalog loads (before any kernel sees it), and every value is checked
against the key it was read under and the format of the snapshot it came
from (:mod:`tiered.storage.codec`).
"""

from __future__ import annotations

import bisect
import contextlib
from typing import Iterable, Iterator

import cachetools
import lmdb
import numpy as np

from . import codec
from ..errors import CorruptionError
from ..bitmaps.table import SegmentTable, Spans
from ..config import PAGE_SEGMENTS, SEG_CHUNKS
from .environment import Storage
from .keys import key_digest, page_key, parse_page_key
from .versions import read_format

Key = tuple[bytes, int]  # (tag, generation)


class PageCache:
    """cachetools' LRU cache bounded in decoded bytes, with hit counters.

    A query that reads more pages than the budget holds would, under plain
    LRU, evict its own pages before it could reuse them, so that asking the
    same question again hits nothing.  During a :meth:`scan` the cache
    therefore stops admitting pages once those the scan has touched (hit or
    admitted, and so at the recent end) fill the budget: a repeated large
    query then keeps hitting a budget's worth of its pages.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: cachetools.LRUCache = cachetools.LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=lambda spans: spans.nbytes
        )
        self.hits = 0
        self.misses = 0
        #: Bytes of pages touched by the current scan; None outside a scan.
        self._scanned: int | None = None

    @contextlib.contextmanager
    def scan(self) -> Iterator[None]:
        """Treat the reads inside as one query (see the class docstring)."""
        self._scanned = 0
        try:
            yield
        finally:
            self._scanned = None

    def get(self, key: tuple) -> Spans | None:
        spans = self._lru.get(key)
        if spans is None:
            self.misses += 1
        else:
            self.hits += 1
            if self._scanned is not None:
                self._scanned += spans.nbytes
        return spans

    def put(self, key: tuple, spans: Spans) -> None:
        size = spans.nbytes
        if size > self.max_bytes:
            return  # larger than the whole budget: use once, keep nothing
        if self._scanned is not None:
            if self._scanned + size > self.max_bytes:
                return  # admitting it would evict a page this scan already uses
            self._scanned += size
        self._lru[key] = spans

    def drop(self, key: tuple) -> None:
        self._lru.pop(key, None)

    def clear(self) -> None:
        self._lru.clear()

    @property
    def nbytes(self) -> int:
        return int(self._lru.currsize)


class PageWrites:
    """Page writes and deletes staged in one write transaction."""

    def __init__(self, io: "PageIO", txn: lmdb.Transaction) -> None:
        self.io = io
        self.txn = txn
        self.written: dict[Key, set[int]] = {}
        self.deleted: set[Key] = set()
        #: Volume record fields that change with this batch; they are written
        #: in the same transaction, so a crash never pairs new pages with an
        #: old record.
        self.record: dict[str, object] = {}

    def put_table(self, tag: bytes, gen: int, table: SegmentTable, only: np.ndarray | None = None) -> None:
        """Write every page of ``table`` (or those in ``only``) under
        (tag, gen); other pages stay."""
        spans = table.spans()
        pages = self.written.setdefault((tag, gen), set())
        chosen = spans.pages() if only is None else np.intersect1d(spans.pages(), only)
        for page in chosen.tolist():
            part = spans.page_slice(page)
            key = page_key(self.io.vol_id, tag, gen, page)
            if table.is_bits:
                value = codec.encode_bits_page(part, page, key)
            else:
                value = codec.encode_gens_page(part, page, key)
            self.txn.put(key, value, db=self.io.storage.pages)
            pages.add(page)

    def digest_after(self) -> int:
        """The digest of the volume's page keys once this batch commits
        (see :func:`tiered.storage.keys.key_digest`); the volume record
        stores it in the same transaction.  Costs a hash per page key added
        or removed, and a binary search per page rewritten."""
        io = self.io
        digest = io.digest
        for key in set(self.written) | self.deleted:
            tag, gen = key
            old = io.catalog.get(key, np.empty(0, np.int64))  # sorted
            new = np.fromiter(self.written.get(key, ()), np.int64)
            if key in self.deleted:
                changed = np.setxor1d(old, new)
            else:
                at = np.searchsorted(old, new).clip(max=max(len(old) - 1, 0))
                known = (old[at] == new) if len(old) else np.zeros(len(new), bool)
                changed = new[~known]
            for page in changed.tolist():
                digest ^= key_digest(page_key(io.vol_id, tag, gen, page))
        return digest

    def put_gens_payload(self, tag: bytes, gen: int, page: int, payload: bytes) -> None:
        """Write one generation page from its payload (a fold encodes its
        pages segment by segment, see :mod:`tiered.storage.fold`)."""
        key = page_key(self.io.vol_id, tag, gen, page)
        self.txn.put(key, codec.wrap(codec.KIND_GENS_PAGE, payload, key), db=self.io.storage.pages)
        self.written.setdefault((tag, gen), set()).add(page)

    def delete(self, tag: bytes, gen: int) -> None:
        """Delete every stored page of (tag, gen), committed or staged."""
        for page in self.io.catalog.get((tag, gen), ()):
            self.txn.delete(page_key(self.io.vol_id, tag, gen, page), db=self.io.storage.pages)
        for page in self.written.pop((tag, gen), ()):
            self.txn.delete(page_key(self.io.vol_id, tag, gen, page), db=self.io.storage.pages)
        self.deleted.add((tag, gen))


class PageIO:
    """Reads, writes and caches the stored pages of one volume of
    ``n_chunks`` chunks."""

    def __init__(self, storage: Storage, vol_id: int, cache_bytes: int, gens_dtype: np.dtype, n_chunks: int) -> None:
        self.storage = storage
        self.vol_id = vol_id
        self.gens_dtype = np.dtype(gens_dtype)
        #: Segments of the volume: what bounds every page a decoder fills.
        self.n_segments = -(-n_chunks // SEG_CHUNKS)
        self.n_pages = -(-self.n_segments // PAGE_SEGMENTS)
        #: Format of the store this volume's pages are read from: the one
        #: this code writes, unless load_catalog found a format-1 snapshot
        #: (a reader of a store no writer has upgraded yet).
        self.version = codec.FORMAT_VERSION
        self.cache = PageCache(cache_bytes)
        #: A read-only volume reads every page from the snapshot it was
        #: loaded from; a writer owns the store and reads the latest state.
        self.snapshot: lmdb.Transaction | None = None
        self.catalog: dict[Key, np.ndarray] = {}
        #: XOR of key_digest over the stored page keys (the catalog's keys).
        self.digest = 0
        # Generations per tag, kept sorted so range lookups stay logarithmic
        # with tens of thousands of sealed periods.
        self._gens: dict[bytes, list[int]] = {}

    def load_catalog(self, txn: lmdb.Transaction) -> None:
        """List the stored pages (keys only: nothing is decoded), and take
        the store's format from the same snapshot.

        Raises CorruptionError for a malformed key or a page beyond the
        volume, which no decoder may be handed."""
        self.version = read_format(self.storage, txn)
        found: dict[Key, list[int]] = {}
        digest = 0
        prefix = page_key(self.vol_id, b"\0", 0, 0)[:8]
        for key, _ in self.storage.scan_prefix(txn, self.storage.pages, prefix):
            tag, gen, page = parse_page_key(key, self.vol_id)
            digest ^= key_digest(key)
            if page >= self.n_pages:
                raise CorruptionError(
                    f"volume {self.vol_id}: stored page {tag!r}/{gen}/{page} lies beyond the volume's "
                    f"{self.n_pages} pages"
                )
            found.setdefault((tag, gen), []).append(page)
        self.catalog = {k: np.array(v, np.int64) for k, v in found.items()}
        self.digest = digest
        self._gens = {}
        for tag, gen in sorted(self.catalog):
            self._gens.setdefault(tag, []).append(gen)

    def gens(self, tag: bytes, lo: int = 0, hi: int | None = None) -> list[int]:
        """Generations in [lo, hi) that have stored pages under ``tag``, ascending."""
        gens = self._gens.get(tag, [])
        start = bisect.bisect_left(gens, lo)
        stop = len(gens) if hi is None else bisect.bisect_left(gens, hi)
        return gens[start:stop]

    def pages(self, tag: bytes, gen: int, page_range: range | None = None) -> list[int]:
        pages = self.catalog.get((tag, gen))
        if pages is None:
            return []
        if page_range is not None:
            pages = pages[(pages >= page_range.start) & (pages < page_range.stop)]
        return pages.tolist()

    def read(
        self, tag: bytes, gen: int, page: int, txn: lmdb.Transaction | None = None, keep: bool = True
    ) -> Spans:
        """A decoded page, through the cache; ``keep=False`` for a page about
        to be rewritten, which would only push useful pages out."""
        key = (tag, gen, page)
        spans = self.cache.get(key)
        if spans is not None:
            return spans
        if txn is None:
            txn = self.snapshot
        if txn is None:
            with self.storage.reading() as own:
                value, what = self._fetch(own, tag, gen, page)
        else:
            value, what = self._fetch(txn, tag, gen, page)
        spans = codec.decode_page(
            value, page, self.gens_dtype, what,
            key=page_key(self.vol_id, tag, gen, page), version=self.version, n_segments=self.n_segments,
        )
        if keep:
            self.cache.put(key, spans)
        return spans

    def _fetch(self, txn: lmdb.Transaction, tag: bytes, gen: int, page: int) -> tuple[bytes, str]:
        """A stored page's value, and how to name it in an error."""
        what = f"volume {self.vol_id} page {tag.decode()}/{gen}/{page}"
        value = txn.get(page_key(self.vol_id, tag, gen, page), db=self.storage.pages)
        if value is None:
            raise CorruptionError(f"{what}: listed in the catalog but missing from the store")
        return value, what

    def payload(self, tag: bytes, gen: int, page: int, txn: lmdb.Transaction, gens: bool = False) -> np.ndarray:
        """The checked payload of a stored bitmap page, or (``gens``) of a
        generation page past its width byte, in memory of its own (it
        outlives ``txn``): for a fold, which reads pages as it writes them."""
        value, what = self._fetch(txn, tag, gen, page)
        key = page_key(self.vol_id, tag, gen, page)
        value = bytes(value)
        if gens:
            return codec.gens_payload(value, page, self.gens_dtype, what, key, self.version, self.n_segments)
        return codec.bits_payload(value, page, what, key, self.version, self.n_segments)

    def or_at_least(self, tag: bytes, gen: int, page_range: range, table: SegmentTable, at_least: int) -> None:
        """OR into a bitmap table the chunks ``>= at_least`` of a stored
        generation table, streaming each page instead of caching it decoded
        (a decoded generation page costs 4 bytes per chunk)."""
        pages = self.pages(tag, gen, page_range)
        if not pages:
            return
        own = None
        txn = self.snapshot
        # buffers=True reads straight from the map: no copy of the page, and
        # the map must stay where it is meanwhile (Storage.pinned).
        with contextlib.nullcontext() if txn is not None else self.storage.pinned():
            if txn is None:
                txn = own = self.storage.begin_read(buffers=True)
            try:
                for page in pages:
                    value, what = self._fetch(txn, tag, gen, page)
                    codec.or_gens_page_at_least(
                        value, page, self.gens_dtype, what, table, at_least,
                        key=page_key(self.vol_id, tag, gen, page), version=self.version,
                    )
            finally:
                if own is not None:
                    own.abort()

    def read_table(
        self,
        tag: bytes,
        gen: int,
        page_range: range | None = None,
        txn: lmdb.Transaction | None = None,
        keep: bool = True,
    ) -> Iterable[Spans]:
        for page in self.pages(tag, gen, page_range):
            yield self.read(tag, gen, page, txn, keep)

    def batch(self, txn: lmdb.Transaction) -> PageWrites:
        return PageWrites(self, txn)

    def apply(self, batch: PageWrites) -> None:
        """Bring catalog and cache in line with a committed batch."""
        self.digest = batch.digest_after()
        for key in batch.deleted:
            pages = self.catalog.pop(key, None)
            if pages is None:
                continue
            for page in pages:
                self.cache.drop((*key, int(page)))
            tag, gen = key
            self._gens[tag].pop(bisect.bisect_left(self._gens[tag], gen))
        for key, pages in batch.written.items():
            if not pages:
                continue
            old = self.catalog.get(key)
            if old is None:
                old = np.empty(0, np.int64)
                bisect.insort(self._gens.setdefault(key[0], []), key[1])
            self.catalog[key] = np.union1d(old, np.fromiter(pages, np.int64, len(pages)))
            for page in pages:
                self.cache.drop((*key, page))

    def forget(self, batch: PageWrites) -> None:
        """After a failed transaction: drop anything the batch may have cached,
        committed pages of the tables it touched and pages it staged (a page
        read back inside the transaction holds a value that never committed)."""
        for key in list(batch.written) + list(batch.deleted):
            for page in self.catalog.get(key, ()):
                self.cache.drop((*key, int(page)))
        for key, pages in batch.written.items():
            for page in pages:
                self.cache.drop((*key, page))

    def disk_bytes(self, txn: lmdb.Transaction) -> int:
        prefix = page_key(self.vol_id, b"\0", 0, 0)[:8]
        return sum(len(k) + len(v) for k, v in self.storage.scan_prefix(txn, self.storage.pages, prefix))
