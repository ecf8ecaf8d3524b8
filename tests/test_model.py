"""Every strategy against the naive reference model, over random histories.

A hypothesis state machine drives one volume through marks, batches (good
and bad), checkpoints, removals, flushes, reopenings, crashes,
conversions to other strategies and switches of durability, and compares
every answer with :class:`naive.ReferenceVolume`.  In sync mode the machine
is a correct caller (it syncs every token a mark returns), so a crash must
lose nothing: a mark that returned None for a chunk not yet durable shows
as a missed chunk after the next crash.  The same machine runs for each
strategy; only the strategy differs.
"""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from naive import ReferenceVolume, covers

import tiered
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

# (granularity, size): a tiny volume with a ragged end, one spanning a few
# segments, and one spanning three pages so page-level paths are exercised.
GEOMETRIES = [
    (4096, 37 * 4096 + 1000),
    (512, (3 * SEG_CHUNKS + 77) * 512 + 300),
    (512, (2 * PAGE_CHUNKS + 5000) * 512 + 100),
]

STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "multi-bit-16": tiered.Strategy("multi-bit", width=16),
    "multi-bit-32": tiered.Strategy("multi-bit", width=32),
    "hybrid": tiered.Strategy("hybrid", recent=1),
    "hybrid-3": tiered.Strategy("hybrid", recent=3, cache_bytes=0),
}

NAMES = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "ü-ß", "x" * 1023])


def interesting_chunks(n_chunks: int) -> list[int]:
    points = {0, 1, 63, 64, 65, SEG_CHUNKS - 1, SEG_CHUNKS, SEG_CHUNKS + 1, PAGE_CHUNKS - 1,
              PAGE_CHUNKS, PAGE_CHUNKS + 1, 2 * PAGE_CHUNKS, n_chunks // 2, n_chunks - 2, n_chunks - 1}
    return sorted(p for p in points if 0 <= p < n_chunks)


class VolumeMachine(RuleBasedStateMachine):
    strategy: tiered.Strategy

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tiered-model-")
        self.store: tiered.Store | None = None

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(geometry=st.sampled_from(GEOMETRIES))
    def create(self, geometry):
        granularity, size = geometry
        self.store = tiered.open(self.dir, sync=False)
        self.vol = self.store.create_volume("vol", size=size, granularity=granularity, strategy=self.strategy)
        self.model = ReferenceVolume(size, granularity)
        self.points = interesting_chunks(-(-size // granularity))
        # Marks the store has not persisted yet: a crash now loses them, and
        # then every existing checkpoint must answer "everything".
        self.unpersisted = False
        self.lost: set[str] = set()
        self.sync_mode = False
        # This open replayed a journal after a crash that lost nothing.
        self.replayed = False
        # Sync mode: journal entries committed since the state was last
        # persisted, which make the next crash an unclean shutdown.
        self.journaled = False
        # Only a history kept one-bit from the start answers every interval exactly.
        self.always_exact = self.strategy.mode == "one-bit"

    def _marked(self, lengths, token) -> None:
        if not self.sync_mode:
            assert token is None
            if self.model.checkpoints and any(lengths):
                self.unpersisted = True
            return
        if token is not None:
            assert type(token) is int and token > 0
            self.vol.sync(token)
            self.journaled = True

    def _persisted(self) -> None:
        self.unpersisted = False
        self.journaled = False

    def ready(self) -> bool:
        return self.store is not None

    def _draw_write(self, data) -> tuple[int, int]:
        g = self.model.granularity
        chunk = data.draw(st.sampled_from(self.points))
        delta = data.draw(st.integers(-g + 1, g - 1))
        offset = min(max(chunk * g + delta, 0), self.model.size)
        length = data.draw(
            st.sampled_from([0, 1, g, 2 * g + 3, 64 * g, SEG_CHUNKS * g, PAGE_CHUNKS * g + 1])
            | st.integers(0, 3 * SEG_CHUNKS * g)
        )
        return offset, min(length, self.model.size - offset)

    @rule(data=st.data())
    @precondition(ready)
    def mark(self, data):
        offset, length = self._draw_write(data)
        token = self.vol.mark(offset, length)
        self.model.mark(offset, length)
        self._marked([length], token)

    @rule(data=st.data(), n=st.integers(1, 6))
    @precondition(ready)
    def mark_many(self, data, n):
        writes = [self._draw_write(data) for _ in range(n)]
        token = self.vol.mark_many([w[0] for w in writes], [w[1] for w in writes])
        for w in writes:
            self.model.mark(*w)
        self._marked([w[1] for w in writes], token)

    @rule(data=st.data(), n=st.integers(1, 4), bad_at=st.integers(0, 3),
          how=st.sampled_from(["negative", "past-end", "huge"]))
    @precondition(ready)
    def bad_batch_changes_nothing(self, data, n, bad_at, how):
        writes = [self._draw_write(data) for _ in range(n)]
        size = self.model.size
        bad = {"negative": (-1, 10), "past-end": (size - 1, 2), "huge": (0, 1 << 62)}[how]
        writes.insert(min(bad_at, n), bad)
        with pytest.raises(tiered.OutOfRangeError):
            self.vol.mark_many([w[0] for w in writes], [w[1] for w in writes])

    @rule(name=NAMES)
    @precondition(ready)
    def checkpoint(self, name):
        if name in self.model.checkpoints:
            with pytest.raises(tiered.AlreadyExistsError):
                self.vol.checkpoint(name)
            return
        cp = self.vol.checkpoint(name)
        assert cp.name == name
        self.model.checkpoint(name)
        if self.strategy.mode != "multi-bit":
            self._persisted()  # sealing a one-bit writeset persists it

    @rule(data=st.data())
    @precondition(lambda self: self.ready() and self.model.checkpoints)
    def remove(self, data):
        name = data.draw(st.sampled_from(self.model.names()))
        self.vol.remove_checkpoint(name)
        self.model.remove(name)
        self.lost.discard(name)
        if not self.model.checkpoints:
            self._persisted()
        with pytest.raises(tiered.CheckpointNotFoundError):
            self.vol.changed_since(name)

    @rule()
    @precondition(ready)
    def flush(self):
        self.vol.flush()
        self._persisted()

    @rule(mode=st.sampled_from(["lazy", "sync"]), how=st.sampled_from(["set", "convert"]))
    @precondition(ready)
    def switch_durability(self, mode, how):
        changed = mode != self.vol.durability
        if how == "set":
            self.vol.set_durability(mode)  # persists only a change
        else:
            self.vol.convert(self.strategy, durability=mode)  # always persists
        assert self.vol.durability == mode
        self.sync_mode = mode == "sync"
        if changed or how == "convert":
            self._persisted()

    @rule()
    @precondition(ready)
    def reopen(self):
        self.store.close()
        self.store = tiered.open(self.dir, sync=False)
        self.vol = self.store.volume("vol", strategy=self.strategy)
        self._persisted()
        self.replayed = False
        assert self.vol.unclean_shutdown == bool(self.lost)
        assert self.vol.durability == ("sync" if self.sync_mode else "lazy")

    @rule()
    @precondition(ready)
    def crash(self):
        """Drop the process state without close or flush, as a crash would."""
        self.store._storage.close()
        self.store = tiered.open(self.dir, sync=False)
        gid = self.vol.generation_id
        self.vol = self.store.volume("vol")
        lost_now = self.unpersisted and bool(self.model.checkpoints)
        if lost_now:
            self.lost |= set(self.model.checkpoints)
        assert (self.vol.generation_id != gid) == lost_now
        self.replayed = self.journaled
        assert self.vol.unclean_shutdown == (bool(self.lost) or self.replayed)
        self._persisted()

    @rule(new=st.sampled_from(list(STRATEGIES.values())))
    @precondition(ready)
    def convert(self, new):
        self.vol.convert(new)
        self.strategy = new
        self.always_exact = self.always_exact and new.mode == "one-bit"
        self._persisted()  # converting stores the whole state
        assert self.vol.strategy == new
        assert self.vol.unclean_shutdown == (bool(self.lost) or self.replayed)

    @rule(data=st.data())
    @precondition(lambda self: self.ready() and self.model.checkpoints)
    def changed_since_region(self, data):
        name = data.draw(st.sampled_from(self.model.names()))
        size = self.model.size
        lo = data.draw(st.sampled_from([0, 1, self.model.granularity, size // 3, size - 1]))
        hi = data.draw(st.integers(lo, size))
        got = self.vol.changed_since(name, offset=lo, length=hi - lo)
        if name in self.lost:
            assert list(got) == ([(lo, hi - lo)] if hi > lo else [])
            assert got.exact == (hi == lo)
            return
        assert list(got) == self.model.changed_since(name, lo, hi)
        assert got.exact

    @rule(data=st.data())
    @precondition(lambda self: self.ready() and len(self.model.checkpoints) >= 2)
    def changed_between(self, data):
        names = self.model.names()
        i = data.draw(st.integers(0, len(names) - 2))
        j = data.draw(st.integers(i + 1, len(names) - 1))
        got = self.vol.changed_between(names[i], names[j])
        if names[i] in self.lost:
            assert list(got) == [(0, self.model.size)] and not got.exact
            return
        exact = self.model.changed_between(names[i], names[j])
        since = self.model.changed_since(names[i])
        if got.exact:
            assert list(got) == exact
        else:
            assert covers(list(got), exact), "changed_between missed a chunk"
            assert covers(since, list(got)), "changed_between reported a chunk not changed since"
        if self.always_exact:
            assert got.exact
        with pytest.raises(tiered.InvalidArgumentError):
            self.vol.changed_between(names[j], names[i])

    @invariant()
    def answers_match(self):
        if self.store is None:
            return
        names = self.model.names()
        assert [c.name for c in self.vol.checkpoints()] == names
        answers = {}
        for name in names:
            got = answers[name] = list(self.vol.changed_since(name))
            if name in self.lost:
                assert got == [(0, self.model.size)], f"lost changed_since({name!r})"
            else:
                assert got == self.model.changed_since(name), f"changed_since({name!r})"
        # Volume.version: an answer of the same open volume at the same version is still current.
        seen = getattr(self, "seen", None)
        if seen is not None and seen[0] is self.vol and seen[1] == self.vol.version:
            for name, before in seen[2].items():
                assert answers.get(name) == before, f"changed_since({name!r}) changed, version {seen[1]} did not"
        self.seen = (self.vol, self.vol.version, answers)


MODEL_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# One test class per strategy, all running the same machine.
for _key, _strategy in STRATEGIES.items():
    _machine = type(f"Machine_{_key}", (VolumeMachine,), {"strategy": _strategy})
    _case = _machine.TestCase
    _case.settings = MODEL_SETTINGS
    globals()[f"TestReference_{_key.replace('-', '_')}"] = _case
del _key, _strategy, _machine, _case
