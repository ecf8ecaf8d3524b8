"""The crash-exact contract of ``durability="sync"``, call by call.

A mark returns None when every chunk it touches is already durably marked in
the current period, else a token; ``sync(token)`` (or ``sync()``, or any call
that commits: checkpoint, removal, flush) makes it durable.  "Durable" is
checked on crash images: a copy of the store's ``data.mdb`` taken after a
commit returned, while the writer still runs, is what a crash right there
would leave; reopening it replays the journal.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time

import numpy as np
import pytest
from naive import ReferenceVolume, covers

import tiered
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

GRAN = 512
SIZE = (PAGE_CHUNKS + 2 * SEG_CHUNKS + 300) * GRAN - 100
STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "multi-bit-16": tiered.Strategy("multi-bit", width=16),
    "hybrid-1": tiered.Strategy("hybrid", recent=1),
}
KEYS = sorted(STRATEGIES)


def image(store: tiered.Store, dst: str) -> str:
    """A crash image of ``store`` as of its last commit."""
    os.makedirs(dst)
    shutil.copy(os.path.join(store.path, "data.mdb"), dst)
    return dst


def chunk(c: int) -> tuple[int, int]:
    return c * GRAN, GRAN


def answers(vol: tiered.Volume) -> dict[str, tuple[list, bool]]:
    out = {}
    for c in vol.checkpoints():
        got = vol.changed_since(c.name)
        out[c.name] = (list(got), got.exact)
    return out


def check(vol: tiered.Volume, model: ReferenceVolume, where: str, exact_between: bool = True) -> None:
    names = model.names()
    assert [c.name for c in vol.checkpoints()] == names, where
    for i, name in enumerate(names):
        got = vol.changed_since(name)
        assert got.exact, f"{where}: changed_since({name!r}) not exact"
        assert list(got) == model.changed_since(name), f"{where}: changed_since({name!r})"
        for newer in names[i + 1 :]:
            got = vol.changed_between(name, newer)
            want = model.changed_between(name, newer)
            assert covers(list(got), want), f"{where}: changed_between({name!r}, {newer!r}) missed a chunk"
            if got.exact:
                assert list(got) == want, f"{where}: changed_between({name!r}, {newer!r})"


@pytest.fixture
def store(tmp_path):
    s = tiered.open(str(tmp_path / "s"), sync=False)
    yield s
    s.close()


def new_volume(store, key: str, durability: str = "sync") -> tiered.Volume:
    return store.create_volume("v", size=SIZE, granularity=GRAN, strategy=STRATEGIES[key], durability=durability)


# -- tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_token_rules(store, key):
    vol = new_volume(store, key)
    assert vol.durability == "sync" and vol.stats()["durability"] == "sync"
    assert vol.mark(*chunk(3)) is None  # no checkpoint: nothing is tracked
    vol.checkpoint("a")
    t1 = vol.mark(*chunk(3))
    assert type(t1) is int and t1 > 0
    # Journaled but not committed: the write must still wait.
    assert vol.mark(3 * GRAN + 7, 1) == t1
    assert vol.mark_many(np.array([3 * GRAN]), np.array([GRAN])) == t1
    vol.sync(t1)
    # Hot chunk after its sync: nothing to wait for, whatever part is written.
    assert vol.mark(*chunk(3)) is None
    assert vol.mark(3 * GRAN + 100, 3) is None
    assert vol.mark_many([3 * GRAN, 3 * GRAN + 5], [1, 2]) is None
    assert vol.mark(0, 0) is None and vol.mark_many([], []) is None
    # A write over a durable chunk and a new one needs a sync.
    t2 = vol.mark(3 * GRAN, 2 * GRAN)
    assert type(t2) is int and t2 > t1
    assert vol.mark(*chunk(3)) is None  # chunk 3 itself stays durable
    assert vol.mark(*chunk(4)) == t2
    assert vol.mark_many([9 * GRAN, 3 * GRAN], [1, 1]) == t2  # any new write makes the batch wait
    vol.sync()
    assert vol.mark_many([3 * GRAN, 4 * GRAN, 9 * GRAN], [1, 1, 1]) is None
    # A new period: the chunks are not marked in it yet.
    vol.checkpoint("b")
    t3 = vol.mark(*chunk(3))
    assert type(t3) is int and t3 > t2
    # Across segments and pages.
    t4 = vol.mark((PAGE_CHUNKS - 5) * GRAN, 10 * GRAN)
    vol.sync(t4)
    assert vol.mark((PAGE_CHUNKS - 5) * GRAN, 10 * GRAN) is None
    assert vol.mark((PAGE_CHUNKS - 6) * GRAN, 10 * GRAN) is not None


def test_durable_chunk_next_to_a_new_one_needs_no_sync(store):
    vol = new_volume(store, "one-bit")
    vol.checkpoint("a")
    vol.sync(vol.mark(*chunk(3)))
    t = vol.mark(3 * GRAN, 2 * GRAN)  # chunk 3 is durable, chunk 4 is new
    assert t is not None
    assert vol.mark(*chunk(3)) is None  # chunk 3 alone needs nothing


@pytest.mark.parametrize("key", KEYS)
def test_mark_while_a_commit_is_in_flight(store, key):
    vol = new_volume(store, key)
    vol.checkpoint("a")
    t1 = vol.mark(*chunk(10))
    entered, release = threading.Event(), threading.Event()

    def slow_commit() -> None:
        entered.set()
        assert release.wait(10)

    store._storage.commit_hook = slow_commit
    leader = threading.Thread(target=vol.sync, args=(t1,))
    leader.start()
    assert entered.wait(10)
    # The batch holding chunk 10 is being committed: a write to it waits for that commit ...
    assert vol.mark(*chunk(10)) == t1
    # ... a new chunk goes to the next batch ...
    t2 = vol.mark(*chunk(11))
    assert t2 > t1
    # ... and a write over both waits for the later one.
    assert vol.mark(10 * GRAN, 2 * GRAN) == t2
    assert vol.mark_many([10 * GRAN], [1]) == t1
    release.set()
    store._storage.commit_hook = None
    leader.join()
    assert vol.mark(*chunk(10)) is None
    assert vol.mark(*chunk(11)) == t2
    vol.sync(t2)
    assert vol.mark(10 * GRAN, 2 * GRAN) is None


@pytest.mark.parametrize("key", KEYS)
def test_sync_semantics_and_invalid_tokens(store, key):
    vol = new_volume(store, key)
    vol.checkpoint("a")
    commits = vol.stats()["sync_commits"]
    vol.sync()  # nothing to do: no commit
    assert vol.stats()["sync_commits"] == commits
    t = vol.mark(*chunk(1))
    for bad in (0, -1, "1", 1.0, True, t + 1, 1 << 70):
        with pytest.raises(tiered.InvalidArgumentError):
            vol.sync(bad)
    vol.sync(t)
    assert vol.stats()["sync_commits"] == commits + 1
    vol.sync(t)  # already durable: no commit
    vol.sync()
    assert vol.stats()["sync_commits"] == commits + 1
    assert vol.stats()["journal_entries"] >= 1
    vol.flush()
    assert vol.stats()["journal_entries"] == 0 and not vol.stats()["unflushed"]
    vol.sync(t)  # an old token stays valid
    vol.close()
    with pytest.raises(tiered.ClosedError):
        vol.sync()


def test_lazy_mode_marks_return_none_and_sync_flushes(store):
    vol = new_volume(store, "one-bit", durability="lazy")
    vol.checkpoint("a")
    assert vol.mark(*chunk(1)) is None and vol.mark_many([0], [1]) is None
    assert vol.stats()["unflushed"]
    vol.sync()
    assert not vol.stats()["unflushed"]


def test_readonly_volume_refuses_marks(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        vol = new_volume(s, "one-bit")
        vol.checkpoint("a")
        vol.sync(vol.mark(*chunk(1)))
    with tiered.open(path, readonly=True) as s:
        vol = s.volume("v")
        vol.sync()  # nothing to make durable
        with pytest.raises(tiered.ReadOnlyError):
            vol.mark(*chunk(2))
        assert list(vol.changed_since("a")) == [chunk(1)]


# -- durability, checked on crash images ------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("barrier", ["sync-token", "sync-all", "checkpoint", "remove", "flush"])
def test_barriers_make_every_earlier_mark_durable(tmp_path, key, barrier):
    """Each barrier, on a clean volume (just flushed) and on one with a
    journal, makes every mark before it survive a crash, exactly."""
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = new_volume(store, key)
    model = ReferenceVolume(SIZE, GRAN)
    for name in ("a", "b"):
        vol.checkpoint(name)
        model.checkpoint(name)
    gid = vol.generation_id
    for rnd in range(3):
        if rnd == 1:
            vol.flush()  # a clean volume: the barrier must journal what follows
        writes = [chunk(5 + rnd), (PAGE_CHUNKS * GRAN - 700 - 4 * GRAN * rnd, 1400), (SEG_CHUNKS * GRAN * (rnd + 1), SEG_CHUNKS * GRAN + 1)]
        tokens = []
        for w in writes:
            tokens.append(vol.mark(*w))
            model.mark(*w)
        assert all(tokens)
        if barrier == "sync-token":
            for t in tokens:
                vol.sync(t)
        elif barrier == "sync-all":
            vol.sync()
        elif barrier == "checkpoint":
            vol.checkpoint(f"k{rnd}")
            model.checkpoint(f"k{rnd}")
        elif barrier == "remove":
            vol.checkpoint(f"k{rnd}")  # a barrier already; mark again, then remove
            model.checkpoint(f"k{rnd}")
            vol.mark(*chunk(40 + rnd))
            model.mark(*chunk(40 + rnd))
            vol.remove_checkpoint("b" if rnd == 0 else f"k{rnd - 1}")
            model.remove("b" if rnd == 0 else f"k{rnd - 1}")
        else:
            vol.flush()
        crash = image(store, str(tmp_path / f"crash{rnd}"))
        for readonly in (True, False):
            with tiered.open(crash, readonly=readonly, sync=False) as s:
                v = s.volume("v")
                where = f"{barrier} round {rnd} {'reader' if readonly else 'writer'}"
                check(v, model, where)
                assert v.generation_id == gid, where
                if barrier in ("sync-token", "sync-all"):
                    assert v.unclean_shutdown, where  # the journal was replayed
        # The replay was persisted: a clean reopen answers the same.
        with tiered.open(crash, sync=False) as s:
            v = s.volume("v")
            assert not v.unclean_shutdown
            check(v, model, f"{barrier} round {rnd} reopened twice")
            assert v.stats()["journal_entries"] == 0
    store.close()
    with tiered.open(str(tmp_path / "s"), sync=False) as s:
        check(s.volume("v"), model, "closed and reopened")


@pytest.mark.parametrize("key", KEYS)
def test_journal_spans_periods_and_renumbering(tmp_path, key):
    """Marks journaled over many checkpoints (multi-bit-8 renumbers) replay exactly."""
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = new_volume(store, key)
    model = ReferenceVolume(SIZE, GRAN)
    for _ in range(250):
        vol.checkpoint("spent")
        vol.remove_checkpoint("spent")
    rng = np.random.default_rng(3)
    for i in range(12):
        vol.checkpoint(f"c{i}")
        model.checkpoint(f"c{i}")
        if i > 4 and i % 2:
            vol.remove_checkpoint(f"c{i - 4}")
            model.remove(f"c{i - 4}")
        for _ in range(3):
            c = int(rng.integers(0, SIZE // GRAN))
            model.mark(*chunk(c))
            vol.sync(vol.mark(*chunk(c)))
        crash = image(store, str(tmp_path / f"crash{i}"))
        with tiered.open(crash, sync=False) as s:
            check(s.volume("v"), model, f"after checkpoint c{i}")
    store.close()


# -- switching modes and strategies ------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_set_durability_and_convert_round_trips(tmp_path, key):
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = new_volume(store, key, durability="lazy")
    model = ReferenceVolume(SIZE, GRAN)
    vol.checkpoint("a")
    model.checkpoint("a")
    n = 0

    def write() -> None:
        nonlocal n
        n += 1
        w = chunk(n * 97)
        t = vol.mark(*w)
        if vol.durability == "sync":
            assert t is not None
            vol.sync(t)
        else:
            assert t is None
        model.mark(*w)

    write()
    with pytest.raises(tiered.InvalidArgumentError):
        vol.set_durability("eager")
    with pytest.raises(tiered.InvalidArgumentError):
        vol.convert(STRATEGIES[key], durability="eager")
    for step, (target, mode) in enumerate(
        [(key, "sync"), (key, "lazy"), ("one-bit", "sync"), ("multi-bit-8", None), ("hybrid-1", "lazy"), (key, "sync")]
    ):
        if target == key and step < 2:
            vol.set_durability(mode)
            vol.set_durability(mode)  # again: nothing to do
        else:
            vol.convert(STRATEGIES[target], durability=mode)
        expected = mode or vol.durability
        assert vol.durability == expected and vol.stats()["durability"] == expected
        write()
        vol.checkpoint(f"s{step}")
        model.checkpoint(f"s{step}")
        write()
        check(vol, model, f"step {step} -> {target} {mode}")
        if vol.durability == "sync":
            crash = image(store, str(tmp_path / f"crash{step}"))
            with tiered.open(crash, sync=False) as s:
                v = s.volume("v")
                assert v.durability == "sync"
                check(v, model, f"step {step} crash image")
    store.close()
    with tiered.open(str(tmp_path / "s"), readonly=True) as s:
        check(s.volume("v"), model, "reopened")
        assert s.volume("v").durability == "sync"


# -- generation ids ------------------------------------------------------------


def test_generation_id_rules(tmp_path):
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    sync_vol = store.create_volume("s", size=SIZE, granularity=GRAN, durability="sync")
    lazy_vol = store.create_volume("l", size=SIZE, granularity=GRAN, durability="lazy")
    ids = {}
    for vol in (sync_vol, lazy_vol):
        gid = vol.generation_id
        assert gid and gid == vol.stats()["generation_id"]
        c = vol.checkpoint("a")
        assert c.generation_id == gid and vol.checkpoints()[0].generation_id == gid
        vol.sync(vol.mark(*chunk(1)))
        assert vol.changed_since("a").generation_id == gid
        vol.checkpoint("b")
        vol.remove_checkpoint("a")  # not the last: the chain stays
        assert vol.generation_id == gid
        vol.mark(*chunk(2))  # left unflushed (and unsynced) at the crash
        ids[vol.name] = gid
    crash = image(store, str(tmp_path / "crash"))
    with tiered.open(crash, readonly=True) as s:
        reader_lazy_gid = s.volume("l").generation_id
    with tiered.open(crash, sync=False) as s:
        v = s.volume("s")
        assert v.generation_id == ids["s"] and v.unclean_shutdown is False  # no sync since the last persist
        v = s.volume("l")
        # Tracking was lost: a new id, the same one a reader derived.
        assert v.unclean_shutdown and v.generation_id != ids["l"]
        assert v.generation_id == reader_lazy_gid
        lost_gid = v.generation_id
    with tiered.open(crash, sync=False) as s:
        assert s.volume("l").generation_id == lost_gid  # persisted
        v = s.volume("s")
        v.remove_checkpoint("b")  # the last one: tracking resets
        assert v.generation_id != ids["s"]
    store.close()


# -- a reader process -----------------------------------------------------------


def _reader_loop(conn) -> None:
    """In a forked child: answer ("read", path) with what a reader sees."""
    while True:
        msg = conn.recv()
        if msg is None:
            return
        try:
            with tiered.open(msg[1], readonly=True) as s:
                vol = s.volume("v")
                conn.send(("ok", vol.unclean_shutdown, vol.generation_id, answers(vol)))
        except Exception as exc:  # noqa: BLE001 -- reported to the parent
            conn.send(("error", repr(exc)))


def warm_up(tmp: str) -> None:
    """Load the kernels of every strategy (from numba's cache) in this
    process, so that a child forked from it starts warm."""
    for key in KEYS:
        with tiered.open(os.path.join(tmp, key), sync=False) as s:
            vol = new_volume(s, key)
            vol.checkpoint("a")
            vol.sync(vol.mark_many([0, PAGE_CHUNKS * GRAN], [GRAN, 2 * SEG_CHUNKS * GRAN]))
            vol.checkpoint("b")
            vol.sync(vol.mark(0, 1))
            vol.changed_since("a")
            vol.changed_between("a", "b")
            shutil.copytree(s.path, s.path + "-crash")
        with tiered.open(os.path.join(tmp, key) + "-crash", readonly=True) as s:
            answers(s.volume("v"))


@pytest.fixture
def reader(tmp_path_factory):
    """A reader process, forked (warm) before this test opens any store."""
    warm_up(str(tmp_path_factory.mktemp("warm")))
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_reader_loop, args=(child,), daemon=True)
    proc.start()

    def read(path: str):
        parent.send(("read", path))
        reply = parent.recv()
        assert reply[0] == "ok", reply
        return reply[1:]

    yield read
    parent.send(None)
    proc.join(10)


@pytest.mark.parametrize("key", KEYS)
def test_reader_process_sees_a_running_writers_synced_marks_exactly(tmp_path, reader, key):
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    vol = new_volume(store, key)
    model = ReferenceVolume(SIZE, GRAN)
    gid = vol.generation_id
    for i in range(6):
        vol.checkpoint(f"c{i}")
        model.checkpoint(f"c{i}")
        for c in (i, 1000 + 7 * i, PAGE_CHUNKS + i):
            vol.sync(vol.mark(*chunk(c)))
            model.mark(*chunk(c))
        vol.mark(*chunk(5000 + i))  # not synced: the reader may or may not see it
        unclean, rgid, got = reader(path)
        assert rgid == gid
        for name in model.names():
            extents, exact = got[name]
            assert exact, name
            assert covers(extents, model.changed_since(name)), f"the reader missed a synced mark since {name}"
            model_with = ReferenceVolume(SIZE, GRAN, model.clock, list(model.writes), dict(model.checkpoints))
            model_with.mark(*chunk(5000 + i))
            assert covers(model_with.changed_since(name), extents), name
        model.mark(*chunk(5000 + i))
    store.close()


# -- threads ------------------------------------------------------------------------


class Clock:
    """A global order of events across threads."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


def _must(
    marks: list, done: dict[str, int], name: str, before: int | None = None, size: int = SIZE
) -> list[tuple[int, int]]:
    """Chunks of the synced marks started after checkpoint ``name`` returned
    (and synced before ``before``), as byte extents."""
    from naive import to_byte_extents

    spans = {(c0, c1) for start, synced, c0, c1 in marks if start > done[name] and (before is None or synced < before)}
    return to_byte_extents(spans, GRAN, 0, size)


@pytest.mark.parametrize("key", KEYS)
def test_threads_mark_sync_checkpoint_query_remove(tmp_path, reader, key):
    threads_round(tmp_path, reader, key, SIZE)


@pytest.mark.parametrize("key", KEYS)
def test_threads_on_a_small_volume_with_slow_commits(tmp_path, reader, monkeypatch, key):
    """The same on a volume of 12000 chunks, with commits that take 2 ms
    and a journal flushed every 64 entries: writers often mark chunks of
    the batch in flight, get its (older) token and keep marks pending
    behind a later batch, and syncs often flush the journal instead.
    With writers that synced only their last mark's token, this failed
    about every other run ("reader missed a mark"); the 4M-chunk volume
    above, about never."""
    import tiered.volume_sync

    monkeypatch.setattr(tiered.volume_sync, "JOURNAL_FLUSH_ENTRIES", 64)
    threads_round(tmp_path, reader, key, 12000 * GRAN - 100, commit_delay=0.002)


def threads_round(tmp_path, reader, key: str, size: int, commit_delay: float = 0.0) -> None:
    """8 threads mark and sync, one checkpoints and removes, one queries,
    while a reader process opens the store again and again: it must see
    every mark whose sync returned before it started."""
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    vol = store.create_volume("v", size=size, granularity=GRAN, strategy=STRATEGIES[key], durability="sync")
    if commit_delay:
        store._storage.commit_hook = lambda: time.sleep(commit_delay)
    clock = Clock()
    done: dict[str, int] = {}
    vol.checkpoint("c0")
    done["c0"] = clock()
    marks: list = []  # (start, synced, first chunk, last chunk), appended once synced
    errors: list = []
    stop = threading.Event()
    n_chunks = size // GRAN

    def marker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        pending = []
        # The largest token of the pending marks.  A later mark may return a
        # smaller one (over chunks of the batch being committed it returns
        # that batch's token), and sync(t) covers the tokens up to t only:
        # the pending marks are synced once the largest is.
        pending_token = 0
        try:
            while not stop.is_set():
                c = int(rng.integers(0, n_chunks - 20))
                span = int(rng.choice([1, 1, 1, 3, SEG_CHUNKS + 1]))
                span = min(span, n_chunks - c)
                start = clock()
                if rng.random() < 0.7:
                    t = vol.mark(c * GRAN, span * GRAN)
                else:
                    t = vol.mark_many([c * GRAN, 7 * GRAN], [span * GRAN, 1])
                    pending.append((start, 7, 7))
                pending.append((start, c, c + span - 1))
                if t is not None:
                    pending_token = max(pending_token, t)
                if t is None or rng.random() < 0.8:
                    if t is not None:
                        vol.sync(t)
                        if pending_token > t:
                            vol.sync(pending_token)
                    else:
                        vol.sync()
                    synced = clock()
                    marks.extend((s, synced, a, b) for s, a, b in pending)
                    pending.clear()
                    pending_token = 0
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def checkpointer() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                vol.checkpoint(f"c{i}")
                done[f"c{i}"] = clock()
                live = [c.name for c in vol.checkpoints()]
                if len(live) > 5:
                    vol.remove_checkpoint(live[0] if i % 3 else live[-2])
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def querier() -> None:
        try:
            while not stop.is_set():
                for c in vol.checkpoints():
                    try:
                        assert vol.changed_since(c.name).exact
                    except tiered.CheckpointNotFoundError:
                        pass  # removed meanwhile
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=marker, args=(s,)) for s in range(8)]
    threads += [threading.Thread(target=checkpointer), threading.Thread(target=querier)]
    for t in threads:
        t.start()
    reads = 0
    deadline = time.time() + 1.5
    try:
        while time.time() < deadline:
            # The reader process: a consistent snapshot of the committed state.
            asked = clock()
            unclean, gid, got = reader(path)
            reads += 1
            names = [n for n in got]
            for i, name in enumerate(names):
                extents, exact = got[name]
                assert exact, name
                if name in done and done[name] < asked:
                    must = _must(list(marks), done, name, before=asked, size=size)
                    assert covers(extents, must), (
                        f"reader missed a mark since {name} (done at {done[name]}, asked at {asked}): "
                        f"missing {sorted(set(must) - set(extents))[:5]}, "
                        f"marks {[m for m in marks if m[1] < asked and m[0] > done[name]][-5:]}, stats {vol.stats()}"
                    )
                for newer in names[i + 1 :]:
                    assert covers(extents, got[newer][0]), f"reader: since {name} lacks what since {newer} has"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert reads >= 3 and len(marks) > 100
    live = [c.name for c in vol.checkpoints()]

    def check_all(v: tiered.Volume, where: str) -> None:
        assert [c.name for c in v.checkpoints()] == live, where
        for name in live:
            got = v.changed_since(name)
            assert got.exact, where
            assert covers(list(got), _must(marks, done, name, size=size)), f"{where}: a synced mark since {name} was lost"

    check_all(vol, "running")
    crash = image(store, str(tmp_path / "crash"))
    with tiered.open(crash, sync=False) as s:
        check_all(s.volume("v"), "crash image")
    store.close()
    with tiered.open(path, sync=False) as s:
        v = s.volume("v")
        assert not v.unclean_shutdown
        check_all(v, "closed and reopened")


def test_group_commit_shares_commits(tmp_path, capsys):
    """16 threads each mark a new chunk and sync, in a loop, on a store that
    fsyncs: the syncs share commits.  The ratio is printed, not asserted
    (it depends on timing); bench/ has no ratio check either."""
    with tiered.open(str(tmp_path / "s")) as store:  # fsync at each commit
        vol = new_volume(store, "one-bit")
        vol.checkpoint("a")
        counter = iter(range(SIZE // GRAN))
        lock = threading.Lock()
        stop = time.time() + 1.0

        def worker() -> None:
            while time.time() < stop:
                with lock:
                    c = next(counter)
                t = vol.mark(*chunk(c))
                assert t is not None
                vol.sync(t)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = vol.stats()
        assert st["sync_commits"] >= 1
        ratio = st["sync_waits"] / st["sync_commits"]
        with capsys.disabled():
            print(f"\ngroup commit: {st['sync_waits']} syncs waited, {st['sync_commits']} commits, {ratio:.1f} syncs per commit")


class Gate:
    """A commit hook that holds every commit until released, one by one."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def __call__(self) -> None:
        self.entered.release()
        assert self.release.acquire(timeout=20)

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=20), "no commit started"


def test_a_sync_served_by_a_leader_does_not_wait_for_the_next_commit(store):
    """Group commit: once the batch holding a token is committed, its sync
    returns, even if another sync has started the next commit meanwhile.
    (Waiting in the commit lock's queue, it could wait behind that whole
    commit: each commit then served about two syncs instead of all of
    them.)"""
    vol = new_volume(store, "one-bit")
    vol.checkpoint("a")
    gate = Gate()
    store._storage.commit_hook = gate
    try:
        for i in range(12):
            t1 = vol.mark(*chunk(2 * i))

            def lead() -> None:
                vol.sync(t1)
                # At once, as a thread writing in a loop does: mark, sync.
                vol.sync(vol.mark(*chunk(2 * i + 1)))

            leader = threading.Thread(target=lead)
            leader.start()
            gate.wait_entered()  # commit A, holding chunk 2i, is in flight
            served = threading.Thread(target=vol.sync, args=(t1,))
            served.start()
            time.sleep(0.01)  # it waits for commit A
            gate.release.release()
            gate.wait_entered()  # commit B, for the leader's next write, is in flight
            served.join(timeout=2)
            assert not served.is_alive(), f"round {i}: a synced token waited for the next commit"
            gate.release.release()
            leader.join(timeout=10)
            assert not leader.is_alive()
    finally:
        store._storage.commit_hook = None


@pytest.mark.parametrize("key", KEYS)
def test_a_sync_covers_the_smaller_tokens_only(tmp_path, reader, key):
    """Tokens grow with time, but a later mark may return a smaller one: a
    mark over chunks of the batch being committed returns that batch's
    token, older than the open batch's token an earlier mark returned.
    Syncing it makes that batch durable, not the open one (a reader does
    not see the earlier mark yet); syncing the largest token makes both
    durable.  (The threads test's writers once synced the token of their
    last mark for all their pending marks.)"""
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    vol = new_volume(store, key)
    vol.checkpoint("a")
    t1 = vol.mark(*chunk(10))
    gate = Gate()
    store._storage.commit_hook = gate
    leader = threading.Thread(target=vol.sync, args=(t1,))
    leader.start()
    gate.wait_entered()  # the batch holding chunk 10 is being committed
    t2 = vol.mark(*chunk(20))  # a new chunk: the open batch
    t3 = vol.mark(*chunk(10))  # chunk 10 alone: the batch in flight
    assert t3 == t1 < t2
    store._storage.commit_hook = None
    gate.release.release()
    vol.sync(t3)
    leader.join(10)
    assert not leader.is_alive()
    with tiered.open(image(store, str(tmp_path / "crash1")), readonly=True) as s:
        assert list(s.volume("v").changed_since("a")) == [chunk(10)]
    vol.sync(max(t1, t2, t3))
    with tiered.open(image(store, str(tmp_path / "crash2")), readonly=True) as s:
        assert list(s.volume("v").changed_since("a")) == [chunk(10), chunk(20)]
    assert reader(path)[2]["a"] == ([chunk(10), chunk(20)], True)
    store.close()


@pytest.mark.parametrize("bits", [True, False])
def test_uncovered_runs_matches_a_naive_scan(bits):
    """The chunks a sync-mode write journals: exactly those not yet marked
    in the current period (uniform pages and segments, rows, ragged ends)."""
    from tiered.bitmaps import probe_kernels as P
    from tiered.bitmaps.table import SegmentTable

    rng = np.random.default_rng(5 + bits)
    n_chunks = PAGE_CHUNKS + 3 * SEG_CHUNKS + 11
    for _ in range(8):
        table = SegmentTable(n_chunks, None if bits else np.uint16)
        marked: dict[int, int] = {}
        for _ in range(int(rng.integers(0, 30))):
            c0 = int(rng.choice([0, SEG_CHUNKS - 3, PAGE_CHUNKS - 2, int(rng.integers(0, n_chunks))]))
            span = int(rng.choice([1, 5, 70, SEG_CHUNKS, SEG_CHUNKS * 2 + 3, PAGE_CHUNKS]))
            c1 = min(c0 + span, n_chunks) - 1
            gen = 1 if bits else int(rng.integers(1, 5))
            table.mark(c0, c1 - c0 + 1, 0, gen)
            for c in range(c0, min(c1, c0 + 200000) + 1):
                marked[c] = gen
            if c1 > c0 + 200000:
                table = SegmentTable(n_chunks, None if bits else np.uint16)  # keep the naive side small
                marked = {}
        gen = 1 if bits else 3
        offs = rng.integers(0, n_chunks * GRAN, 8)
        lens = np.minimum(rng.choice([1, GRAN, 9 * GRAN, SEG_CHUNKS * GRAN + 5], 8), n_chunks * GRAN - offs)
        which = np.arange(8, dtype=np.int64)
        out = np.empty((1, 2), np.int64)
        while (n := P.uncovered_runs(table.index, table.pool, table.is_bits, gen, table.n_top, offs, lens, 9, which, out)) < 0:
            out = np.empty((2 * len(out), 2), np.int64)
        got = [tuple(r) for r in out[:n]]
        want = []
        for o, ln in zip(offs, lens):
            run = None
            for c in range(int(o) >> 9, (int(o) + int(ln) - 1 >> 9) + 1):
                if marked.get(c, 0) >= gen:
                    if run:
                        want.append(tuple(run))
                        run = None
                elif run:
                    run[1] = c
                else:
                    run = [c, c]
            if run:
                want.append(tuple(run))
        assert got == want


@pytest.mark.parametrize("key", KEYS)
def test_a_long_journal_is_flushed_by_the_next_sync(tmp_path, monkeypatch, key):
    """Without checkpoints the journal would grow with every sync, and the
    replay after a crash with it: past JOURNAL_FLUSH_ENTRIES a sync flushes."""
    import tiered.volume_sync

    monkeypatch.setattr(tiered.volume_sync, "JOURNAL_FLUSH_ENTRIES", 5)
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = new_volume(store, key)
    model = ReferenceVolume(SIZE, GRAN)
    vol.checkpoint("a")
    model.checkpoint("a")
    for i in range(23):
        vol.sync(vol.mark(*chunk(3 * i)))
        model.mark(*chunk(3 * i))
        assert vol.stats()["journal_entries"] <= 5
        if i % 6 == 5:
            with tiered.open(image(store, str(tmp_path / f"crash{i}")), sync=False) as s:
                check(s.volume("v"), model, f"after sync {i}")
    store.close()


def test_commits_and_reads_of_two_volumes_in_threads_while_the_map_grows(tmp_path):
    """A sync leader commits outside the volume lock while another volume's
    commit grows the map, and queries read meanwhile.  Growing the map with
    another thread's transaction open made the leader's put fail with
    EINVAL (StorageError) about one run in three on a 2-core machine; now
    writes take turns and short reads pin the map (Storage.pinned)."""
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = store.create_volume("v", size=1 << 40, granularity=4096, strategy="multi-bit", durability="sync")
    big = store.create_volume("big", size=1 << 44, granularity=4096)
    vol.checkpoint("a")
    big.checkpoint("a")
    done = threading.Event()  # the map grew, or a minute passed
    errors = []

    def marker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                vol.sync(vol.mark_many(rng.integers(0, 1 << 28, 50) * 4096, np.full(50, 4096)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def grower() -> None:
        rng = np.random.default_rng(9)
        i = 0
        give_up = time.time() + 60
        try:
            while time.time() < give_up and store._storage.epoch < 1:
                i += 1
                big.mark_many(rng.integers(0, 1 << 32, 1 << 20) * 4096, np.full(1 << 20, 4096))
                big.checkpoint(f"c{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                vol.changed_since("a")
                big.changed_since("a", 0, 1 << 36)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=marker, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=grower), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert not errors, errors
    assert store._storage.epoch >= 1, "the map did not grow: the test proved nothing"
