"""Converting a volume to another strategy, keeping every checkpoint.

:class:`Conversion` holds :meth:`tiered.Volume.convert`: the old history
exports an image every strategy can adopt
(:class:`tiered.strategies.base.HistoryImage`), the new one stores it, and
one transaction replaces the old pages, so a crash leaves one strategy or
the other, never a mix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .config import MAX_GEN_32, Strategy
from .errors import CheckpointLimitError
from .storage.codec import pack_json
from .storage.environment import guarded
from .storage.journal import delete_entries
from .storage.keys import volume_key
from .storage.pages import PageCache, PageIO
from .strategies import gens_dtype, make_history
from .volume_sync import check_durability


class Conversion:
    """:meth:`convert` of :class:`tiered.Volume` (a mixin: the state is the
    volume's)."""

    @guarded
    def convert(self, strategy: Strategy | str, durability: str | None = None) -> None:
        """Keep this volume's history with another strategy from now on.

        Every checkpoint stays, and every answer keeps every chunk it had:
        where the old strategy knew only the last period that wrote a chunk
        (multi-bit, or hybrid's folded periods), the new one knows no more,
        and answers about those intervals stay supersets (``exact=False``).
        One transaction, which also persists what RAM holds: a crash leaves
        the old strategy or the new one, never a mix.  ``durability``, if
        given, switches it in the same transaction (see set_durability).
        """
        target = Strategy.coerce(strategy)
        mode = self.durability if durability is None else check_durability(durability)
        with self._commit_lock, self._lock:
            self._check_writable()
            self._drain()
            if target.fixed() == self.strategy.fixed():
                # Only the cache budget, which is not stored, can differ.
                self._transact(self._history.flush, persists=True, durability=mode)
                self.durability = mode
                self._io.cache = PageCache(target.cache_bytes)
                self.strategy = target
                self._update_marking()
                return
            io = PageIO(self._storage, self._id, target.cache_bytes, gens_dtype(target), self._n_chunks)
            history = make_history(target, io, self._n_chunks)
            live = np.array([c.generation for c in self._checkpoints], np.int64)
            renumber = self._gen > history.max_generation
            if self._gen > MAX_GEN_32 or (renumber and (not history.can_renumber or len(live) > history.max_generation)):
                raise CheckpointLimitError(
                    f"volume {self.name!r} is at generation {self._gen} with {len(live)} live "
                    f"checkpoints, more than a {target.describe()} can hold"
                )
            if self._history.unsettled:
                # Finish a fold spread over checkpoints, in its own transaction.
                self._transact(self._history.settle)
            gen, lost, superset, checkpoints = self._gen, self._lost, self._superset, self._checkpoints
            if renumber:
                gen = len(live)
                lost = int(np.searchsorted(live, self._lost, side="right"))
                superset = int(np.searchsorted(live, self._superset, side="right"))
                checkpoints = [dataclasses.replace(c, generation=i) for i, c in enumerate(checkpoints, start=1)]
            old_fields = self._history.record_fields()
            staged: dict[str, Any] = {}

            def body(txn: Any) -> None:
                image = self._history.export(txn, self._gen)
                old = self._io.batch(txn)
                for tag, g in list(self._io.catalog):
                    old.delete(tag, g)
                new = io.batch(txn)
                staged["after"] = history.adopt(new, image, live)
                staged["batch"] = new
                if renumber:
                    self._put_checkpoints(txn, checkpoints)
                delete_entries(self._storage, txn, self._id)
                record = {
                    k: v for k, v in self._volume_record(superset_generation=superset).items() if k not in old_fields
                }
                record.update(
                    strategy=target.fixed(), generation=gen, lost_generation=lost, unflushed=False,
                    checkpoints=len(checkpoints), pages_digest=new.digest_after(), durability=mode,
                    journal_from=0, journal_last=0, journal_count=0, **new.record
                )
                key = volume_key(self._id)
                txn.put(key, pack_json(record, key), db=self._storage.volumes)
                staged["record"] = record

            try:
                self._storage.write(body)
            except BaseException:
                if "batch" in staged:
                    io.forget(staged["batch"])
                raise
            io.apply(staged["batch"])
            staged["after"]()
            self._io, self._history, self.strategy = io, history, target
            self._sync.hot.clear()
            self._sync.flushed()
            self.durability = mode
            self._record = staged["record"]
            self._gen, self._lost, self._unflushed = gen, lost, False
            self._superset = superset
            self._checkpoints = checkpoints
            self._by_name = {c.name: c for c in checkpoints}
            self._update_marking()
            self.version += 1

