"""What a reader sees of a sync-mode volume while its writer runs.

A reader opening the store sees the last commit: the volume record, the
stored active state or sealed data, and the journal entries it replays.
It must hold every mark whose sync returned (and every mark that returned
None), and nothing that was never marked.  A state machine takes that
view (a reader process opening the live store, or a crash image of
``data.mdb`` opened read-only) at the points where a commit could split a
mark from its period or from its batch: a sync leader's commit held in
flight while marks go on and a sync, checkpoint, removal or flush waits
behind it; checkpoints and removals committing the open batch of the
period they close; syncs that flush the journal instead; multi-bit
renumbering; and marks that return None (the hot-chunk and all-marked
fast paths) across periods, for every strategy.  The machine syncs any
outstanding token, not only the latest: ``sync(t)`` covers the tokens up
to ``t``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from naive import covers, to_byte_extents

import tiered
import tiered.volume_sync
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "multi-bit-16": tiered.Strategy("multi-bit", width=16),
    "hybrid-1": tiered.Strategy("hybrid", recent=1),
    "hybrid-3": tiered.Strategy("hybrid", recent=3, cache_bytes=0),
}
KEYS = sorted(STRATEGIES)

GEOMETRIES = [
    (4096, 37 * 4096 + 1000),
    (512, (3 * SEG_CHUNKS + 77) * 512 + 300),
    (512, (2 * PAGE_CHUNKS + 5000) * 512 + 100),
]


class Gate:
    """A commit hook that holds the next commit until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.release.wait(30), "the gate was never released"


class Marks:
    """Every mark, with when it was made and whether it is acknowledged.

    A mark is acknowledged once the caller may write its data: it returned
    None, or a sync covering its token returned (``sync(t)`` covers every
    token up to ``t``), or ``sync()`` or a committing call (a barrier)
    returned after it was made.
    """

    def __init__(self, granularity: int, size: int) -> None:
        self.granularity = granularity
        self.size = size
        self.clock = 0
        #: [time, first chunk, last chunk, token or None, acknowledged]
        self.marks: list[list] = []
        self.checkpoints: dict[str, int] = {}

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def mark(self, writes: list[tuple[int, int]], token: int | None) -> None:
        t = self.tick()
        for off, length in writes:
            if length:
                g = self.granularity
                self.marks.append([t, off // g, (off + length - 1) // g, token, token is None])

    def synced(self, token: int | None, before: int | None = None) -> None:
        """A sync of ``token`` returned (None: a sync of everything, or a
        barrier, called at time ``before``, by default now)."""
        for m in self.marks:
            if token is None:
                if before is None or m[0] < before:
                    m[4] = True
            elif m[3] is not None and m[3] <= token:
                m[4] = True

    def checkpoint(self, name: str, before: int | None = None) -> None:
        """Checkpoint ``name`` was created now (called at ``before``)."""
        self.synced(None, before)
        self.checkpoints[name] = self.tick()

    def names(self) -> list[str]:
        return sorted(self.checkpoints, key=self.checkpoints.__getitem__)

    def since(self, name: str, acked_only: bool) -> list[tuple[int, int]]:
        """Byte extents of the marks made after checkpoint ``name``: all of
        them, or only the acknowledged ones."""
        t0 = self.checkpoints[name]
        spans = {(a, b) for t, a, b, _tok, acked in self.marks if t > t0 and (acked or not acked_only)}
        return to_byte_extents(spans, self.granularity, 0, self.size)


def answers(path: str) -> dict[str, tuple[list, bool]]:
    """changed_since of every checkpoint of volume "v", as a reader opening
    the store at ``path`` read-only sees it (its journal replayed)."""
    with tiered.open(path, readonly=True) as s:
        vol = s.volume("v")
        out = {}
        for c in vol.checkpoints():
            got = vol.changed_since(c.name)
            out[c.name] = (list(got), got.exact)
        return out


def copy_view(path: str, dst: str) -> dict[str, tuple[list, bool]]:
    """What a reader sees of a copy of the data file as of the last commit
    (what a crash right now would leave)."""
    os.makedirs(dst)
    shutil.copy(os.path.join(path, "data.mdb"), dst)
    try:
        return answers(dst)
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def _serve_reads(conn) -> None:
    """In a forked child: answer each path with what a reader sees there."""
    while True:
        path = conn.recv()
        if path is None:
            return
        try:
            conn.send(("ok", answers(path)))
        except Exception as exc:  # noqa: BLE001 -- reported to the parent
            conn.send(("error", repr(exc)))


class ReaderProcess:
    """Another process that opens the live store read-only, as a backup
    tool does while the writer runs.  Forked once, before the first machine
    opens its store or starts a thread (a fork copies the locks other
    threads hold)."""

    _conn = None

    @classmethod
    def start(cls) -> None:
        if cls._conn is None:
            ctx = multiprocessing.get_context("fork")
            parent, child = ctx.Pipe()
            ctx.Process(target=_serve_reads, args=(child,), daemon=True).start()
            cls._conn = parent

    @classmethod
    def view(cls, path: str) -> dict[str, tuple[list, bool]]:
        cls._conn.send(path)
        reply = cls._conn.recv()
        assert reply[0] == "ok", reply
        return reply[1]


class SyncMachine(RuleBasedStateMachine):
    """One sync-mode volume driven by marks, syncs of any outstanding token
    (not only the latest), sync leaders held mid-commit while marks go on,
    checkpoints, removals, flushes, conversions and generation burns; at
    random points a reader's view is checked against the acknowledged
    marks."""

    strategy: tiered.Strategy

    def __init__(self) -> None:
        super().__init__()
        ReaderProcess.start()
        self.dir = tempfile.mkdtemp(prefix="tiered-race-")
        self.store: tiered.Store | None = None
        #: The sync leader whose commit is held, while there is one.
        self.leader: threading.Thread | None = None
        self.views = 0
        self._saved_flush = tiered.volume_sync.JOURNAL_FLUSH_ENTRIES

    def teardown(self) -> None:
        tiered.volume_sync.JOURNAL_FLUSH_ENTRIES = self._saved_flush
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(geometry=st.sampled_from(GEOMETRIES), flush_every=st.sampled_from([1, 3, 4096]))
    def create(self, geometry, flush_every):
        granularity, size = geometry
        # A short journal makes sync leaders flush now and then.
        tiered.volume_sync.JOURNAL_FLUSH_ENTRIES = flush_every
        self.store = tiered.open(os.path.join(self.dir, "s"), sync=False)
        self.vol = self.store.create_volume(
            "v", size=size, granularity=granularity, strategy=self.strategy, durability="sync"
        )
        self.model = Marks(granularity, size)
        n = -(-size // granularity)
        self.points = sorted(
            p for p in {0, 1, 7, 63, 64, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_CHUNKS - 1, PAGE_CHUNKS, n // 2, n - 1} if p < n
        )
        self.n_names = 0
        self.vol.checkpoint("c0")
        self.model.checkpoint("c0")

    # -- helpers ----------------------------------------------------------

    def _write(self, data) -> tuple[int, int]:
        g = self.model.granularity
        chunk = data.draw(st.sampled_from(self.points))
        delta = data.draw(st.integers(-g + 1, g - 1))
        offset = min(max(chunk * g + delta, 0), self.model.size)
        length = data.draw(st.sampled_from([1, g, 3 * g, SEG_CHUNKS * g + 1]) | st.integers(0, 4 * g))
        return offset, min(length, self.model.size - offset)

    def _tokens(self) -> list[int]:
        return sorted({m[3] for m in self.model.marks if m[3] is not None and not m[4]})

    def _note(self, token: int | None) -> None:
        """Label what a mark met, for --hypothesis-show-statistics."""
        if self.leader is not None:
            event("mark while a commit is in flight")
            tokens = self._tokens()
            if token is not None and tokens and token < tokens[-1]:
                event("a token older than one outstanding (the batch in flight)")

    # -- marks (allowed while a commit is in flight) ------------------------

    @rule(data=st.data())
    def mark(self, data):
        w = self._write(data)
        token = self.vol.mark(*w)
        assert token is None or (type(token) is int and token > 0)
        self._note(token)
        self.model.mark([w], token)

    @rule(data=st.data())
    def mark_many(self, data):
        n = data.draw(st.integers(1, 4))
        writes = [self._write(data) for _ in range(n)]
        token = self.vol.mark_many([w[0] for w in writes], [w[1] for w in writes])
        self._note(token)
        self.model.mark(writes, token)

    @rule(data=st.data())
    def view(self, data):
        """A reader opens the store now (in another process, or a crash
        image of it): it sees every acknowledged mark since each
        checkpoint, and nothing that was never marked."""
        self.views += 1
        event("view while a commit is in flight" if self.leader else "view")
        if self._tokens():
            event("view with marks not acknowledged")
        path = os.path.join(self.dir, "s")
        if data.draw(st.booleans(), label="in another process"):
            got = ReaderProcess.view(path)
        else:
            got = copy_view(path, os.path.join(self.dir, f"view{self.views}"))
        assert list(got) == self.model.names()
        for name, (extents, exact) in got.items():
            assert exact, name
            must = self.model.since(name, acked_only=True)
            assert covers(extents, must), (
                f"a reader missed an acknowledged mark since {name}: "
                f"missing {sorted(set(must) - set(extents))[:5]}"
            )
            assert covers(self.model.since(name, acked_only=False), extents), (
                f"a reader saw a chunk never marked since {name}"
            )

    # -- a sync leader held mid-commit ---------------------------------------

    @rule(
        data=st.data(),
        steps=st.lists(st.sampled_from(["mark", "mark_many", "view"]), min_size=1, max_size=6),
        queued=st.sampled_from([None, None, "sync", "checkpoint", "remove", "flush"]),
    )
    def commit_in_flight(self, data, steps, queued):
        """A sync leader's commit is held while marks go on (to chunks of
        the batch in flight, of the open batch, or new ones) and readers
        look, maybe with a sync or a committing call waiting behind it in
        another thread; then it completes."""
        tokens = self._tokens()
        if not tokens or self.vol.stats()["journal_entries"] >= tiered.volume_sync.JOURNAL_FLUSH_ENTRIES:
            return  # nothing to commit, or the leader would flush, under the volume's lock
        token = data.draw(st.sampled_from(tokens))
        if queued == "remove":
            if len(self.model.checkpoints) < 2:
                queued = None
            else:
                gone = data.draw(st.sampled_from(self.model.names()))
        self.n_names += 1
        name = f"c{self.n_names}"
        calls = {
            "sync": lambda: self.vol.sync(),
            "checkpoint": lambda: self.vol.checkpoint(name),
            "remove": lambda: self.vol.remove_checkpoint(gone),
            "flush": lambda: self.vol.flush(),
        }
        errors: list = []

        def run(call) -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001 -- raised in the machine
                errors.append(exc)

        gate = Gate()
        self.store._storage.commit_hook = gate
        leader = threading.Thread(target=run, args=(lambda: self.vol.sync(token),))
        leader.start()
        waiter = None
        called = None
        try:
            while not gate.entered.wait(0.01):
                if not leader.is_alive():
                    break  # it returned without committing: a commit already covered it
            else:
                self.leader = leader
                if queued is not None:
                    called = self.model.tick()
                    waiter = threading.Thread(target=run, args=(calls[queued],))
                    waiter.start()
                    event(f"{queued} waiting behind a sync leader")
                for step in steps:
                    getattr(self, step)(data)
        finally:
            gate.release.set()
            leader.join(30)
            if waiter is not None:
                waiter.join(30)
            self.store._storage.commit_hook = None
            self.leader = None
        assert not leader.is_alive() and not (waiter and waiter.is_alive())
        assert not errors, errors
        self.model.synced(token)
        if waiter is None:
            return
        if queued == "checkpoint":
            # It waited for the leader: every mark made meanwhile is older.
            self.model.checkpoint(name, before=called)
        else:
            self.model.synced(None, before=called)
            if queued == "remove":
                del self.model.checkpoints[gone]

    # -- calls that commit -----------------------------------------------

    @rule(data=st.data())
    def sync_token(self, data):
        tokens = self._tokens()
        if not tokens:
            return
        token = data.draw(st.sampled_from(tokens))
        self._sync(token)

    @rule()
    def sync_all(self):
        self._sync(None)

    @rule(data=st.data(), n=st.integers(1, 4))
    def write_and_sync(self, data, n):
        """Writes each synced at once, as most callers do: one journal
        entry each, and now and then a sync that flushes instead."""
        for _ in range(n):
            w = self._write(data)
            token = self.vol.mark(*w)
            self.model.mark([w], token)
            if token is not None:
                self._sync(token)

    def _sync(self, token: int | None) -> None:
        journal = self.vol.stats()["journal_entries"]
        self.vol.sync(token)
        self.model.synced(token)
        if journal >= tiered.volume_sync.JOURNAL_FLUSH_ENTRIES and not self.vol.stats()["unflushed"]:
            event("a sync flushed the journal")

    @rule()
    def checkpoint(self):
        self.n_names += 1
        name = f"c{self.n_names}"
        self.vol.checkpoint(name)
        self.model.checkpoint(name)

    @rule(data=st.data())
    @precondition(lambda self: len(self.model.checkpoints) > 1)
    def remove(self, data):
        name = data.draw(st.sampled_from(self.model.names()))
        self.vol.remove_checkpoint(name)
        self.model.synced(None)
        del self.model.checkpoints[name]

    @rule()
    def flush(self):
        self.vol.flush()
        self.model.synced(None)

    @rule(new=st.sampled_from(sorted(STRATEGIES)))
    def convert(self, new):
        """Another strategy: the whole state is stored again, the journal
        deleted with it."""
        self.vol.convert(STRATEGIES[new])
        self.model.synced(None)

    @rule(n=st.sampled_from([10, 120]))
    def burn_generations(self, n):
        """Checkpoints created and removed at once: multi-bit-8 renumbers."""
        gen = self.vol.stats()["generation"]
        for _ in range(n):
            self.vol.checkpoint("spent")
            self.vol.remove_checkpoint("spent")
        self.model.synced(None)
        if self.vol.stats()["generation"] < gen + n:
            event("generations renumbered")

    @invariant()
    def writer_answers_every_mark(self):
        if self.store is None:
            return
        for name in self.model.names():
            got = self.vol.changed_since(name)
            assert got.exact and list(got) == self.model.since(name, acked_only=False), name


RACE_SETTINGS = settings(
    max_examples=int(os.environ.get("TIERED_RACE_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

for _key, _strategy in STRATEGIES.items():
    _machine = type(f"SyncMachine_{_key}", (SyncMachine,), {"strategy": _strategy})
    _case = _machine.TestCase
    _case.settings = RACE_SETTINGS
    globals()[f"TestReaderView_{_key.replace('-', '_')}"] = _case
del _key, _strategy, _machine, _case
