"""A failed commit changes nothing, in RAM or on disk.

``Storage.commit_hook`` makes the k-th write transaction fail at commit with
the error LMDB gives on a full disk.  For every k over seeded random
operation sequences of every strategy (multi-bit width 8 renumbering, hybrid
folds, conversions, removals, flushes and closes included), the failing call
must raise StoreFullError, every answer must still match the reference
model, the same call must succeed once "space returns", and the store must
answer the same after reopening.  A last test fills a real tmpfs (root only).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time

import lmdb
import pytest
from naive import ReferenceVolume, covers

import tiered
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

GRAN = 512
SIZE = (2 * PAGE_CHUNKS + 5000) * GRAN + 100  # three pages, a ragged end

STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "multi-bit-16": tiered.Strategy("multi-bit", width=16),
    "hybrid-1": tiered.Strategy("hybrid", recent=1),
    "hybrid-2": tiered.Strategy("hybrid", recent=2, cache_bytes=0),
}
# Generations used up before the sequence starts: with its two checkpoints
# the volume is at generation 254, so a width-8 volume renumbers at its next
# checkpoint but one, and any volume converted to width 8 renumbers.
SPENT_GENERATIONS = 252


class FailKth:
    """Fails the k-th commit it sees (k=None: only counts) as a full disk does."""

    def __init__(self, k: int | None) -> None:
        self.k = k
        self.seen = 0
        self.fired = False

    def __call__(self) -> None:
        self.seen += 1
        if self.seen == self.k:
            self.fired = True
            exc = lmdb.DiskError("mdb_txn_commit: No space left on device")
            exc.code = errno.ENOSPC
            raise exc


def random_ops(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    points = [0, 1, 63, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_CHUNKS - 1, PAGE_CHUNKS, 2 * PAGE_CHUNKS + 4000]

    def write() -> tuple[int, int]:
        offset = rng.choice(points) * GRAN + rng.randrange(-GRAN + 1, GRAN)
        offset = min(max(offset, 0), SIZE)
        length = rng.choice([1, GRAN, 3 * GRAN, SEG_CHUNKS * GRAN, PAGE_CHUNKS * GRAN + 1])
        return offset, min(length, SIZE - offset)

    ops: list[tuple] = []
    for i in range(n):
        kind = rng.choices(
            ["mark", "mark_many", "checkpoint", "remove", "flush", "convert", "close_volume", "reopen"],
            [4, 2, 5, 2, 1, 1, 1, 1],
        )[0]
        if kind == "mark":
            ops.append(("mark", *write()))
        elif kind == "mark_many":
            ops.append(("mark_many", [write() for _ in range(rng.randrange(1, 4))]))
        elif kind == "checkpoint":
            ops.append(("checkpoint", f"c{i}"))
        elif kind == "remove":
            ops.append(("remove", rng.randrange(1 << 16)))
        elif kind == "convert":
            ops.append(("convert", rng.choice(sorted(STRATEGIES))))
        else:
            ops.append((kind,))
    return ops


class Run:
    """One store, one volume, the reference model, and the fault injector."""

    def __init__(self, path: str, strategy: tiered.Strategy, hook: FailKth | None) -> None:
        self.path = path
        self.strategy = strategy
        self.hook = hook
        self.store = self._open()
        self.vol = self.store.volume("v")

    def _open(self) -> tiered.Store:
        store = tiered.open(self.path, sync=False)
        if self.hook is not None:
            store._storage.commit_hook = self.hook
        return store

    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()
        self.vol = self.store.volume("v")

    def apply(self, op: tuple, model: ReferenceVolume) -> None:
        """Run ``op``; update ``model`` only once it has succeeded."""
        kind = op[0]
        if kind == "mark":
            self.vol.mark(op[1], op[2])
            model.mark(op[1], op[2])
        elif kind == "mark_many":
            self.vol.mark_many([w[0] for w in op[1]], [w[1] for w in op[1]])
            for w in op[1]:
                model.mark(*w)
        elif kind == "checkpoint":
            self.vol.checkpoint(op[1])
            model.checkpoint(op[1])
        elif kind == "remove":
            names = model.names()
            if names:
                name = names[op[1] % len(names)]
                self.vol.remove_checkpoint(name)
                model.remove(name)
        elif kind == "flush":
            self.vol.flush()
        elif kind == "convert":
            self.vol.convert(STRATEGIES[op[1]])
        elif kind == "close_volume":
            self.vol.close()
            self.vol = self.store.volume("v")
        elif kind == "reopen":
            self.reopen()


def check_answers(vol: tiered.Volume, model: ReferenceVolume, where: str, between: bool = True) -> None:
    names = model.names()
    assert [c.name for c in vol.checkpoints()] == names, where
    assert not vol.unclean_shutdown, where
    for i, name in enumerate(names):
        got = vol.changed_since(name)
        assert list(got) == model.changed_since(name), f"{where}: changed_since({name!r})"
        assert got.exact, where
        for newer in names[i + 1 :] if between else ():
            got = vol.changed_between(name, newer)
            exact = model.changed_between(name, newer)
            if got.exact:
                assert list(got) == exact, f"{where}: changed_between({name!r}, {newer!r})"
            else:
                assert covers(list(got), exact), f"{where}: changed_between({name!r}, {newer!r}) missed a chunk"
                assert covers(model.changed_since(name), list(got)), where


def prepare(base: str, strategy: tiered.Strategy) -> ReferenceVolume:
    """A store whose volume has spent most of a width-8 generation counter."""
    model = ReferenceVolume(SIZE, GRAN)
    with tiered.open(base, sync=False) as store:
        vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy=strategy)
        for _ in range(SPENT_GENERATIONS):
            vol.checkpoint("spent")
            vol.remove_checkpoint("spent")
        for name, (offset, length) in (("a", (0, 5 * GRAN)), ("b", (PAGE_CHUNKS * GRAN, 3 * GRAN))):
            vol.checkpoint(name)
            model.checkpoint(name)
            vol.mark(offset, length)
            model.mark(offset, length)
    return model


def replay(base: str, work: str, strategy: tiered.Strategy, ops: list[tuple], k: int | None, model0: ReferenceVolume) -> int:
    """Run ``ops`` on a copy of ``base`` with the k-th commit failing; check
    every answer after the failure, after retrying, and after reopening.
    Returns the number of commits seen."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    model = ReferenceVolume(model0.size, model0.granularity, model0.clock, list(model0.writes), dict(model0.checkpoints))
    hook = FailKth(k)
    run = Run(work, strategy, hook)
    try:
        for step, op in enumerate([*ops, ("reopen",)]):
            before = run.vol.checkpoints() if not run.vol._closed else None
            strategy_before = run.vol.strategy
            fired = hook.fired
            try:
                run.apply(op, model)
            except tiered.StoreFullError as exc:
                assert hook.fired and not fired, f"step {step} {op}: {exc}"
                assert "full" in str(exc) and isinstance(exc, OSError)
                where = f"k={k} step {step} {op} after the failure"
                # The failed call changed nothing that can be seen ...
                assert run.vol.checkpoints() == before, where
                assert run.vol.strategy == strategy_before, where
                check_answers(run.vol, model, where)
                if k % 2:
                    # ... nor anything on disk.
                    run.reopen()
                    check_answers(run.vol, model, where + " and reopening")
                # Space is back: the same call now succeeds.
                run.apply(op, model)
                check_answers(run.vol, model, f"k={k} step {step} {op} retried")
            else:
                assert hook.fired == fired, f"step {step} {op} swallowed the failure"
        check_answers(run.vol, model, f"k={k} at the end, reopened")
        seen = hook.seen
    finally:
        hook.k = None  # the last close is not part of the sequence
        run.store.close()
    assert k is None or hook.fired, f"commit {k} never happened"
    return seen


def every_kth_commit(tmp_path, key: str, seed: int, n_ops: int) -> None:
    strategy = STRATEGIES[key]
    base, work = str(tmp_path / "base"), str(tmp_path / "work")
    model0 = prepare(base, strategy)
    ops = random_ops(seed, n_ops)
    # Every sequence renumbers: by checkpoints in width 8, or by a
    # conversion to width 8; and ends in another strategy.
    if key != "multi-bit-8":
        ops.insert(n_ops // 3, ("convert", "multi-bit-8"))
    ops.insert(2 * n_ops // 3, ("convert", "hybrid-1" if key == "multi-bit-8" else key))
    total = replay(base, work, strategy, ops, None, model0)
    assert total >= 5
    for k in range(1, total + 1):
        replay(base, work, strategy, ops, k, model0)


@pytest.mark.parametrize("key", sorted(STRATEGIES))
def test_every_failed_commit_changes_nothing(tmp_path, key):
    every_kth_commit(tmp_path, key, seed=sorted(STRATEGIES).index(key) + 7, n_ops=22)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("key", sorted(STRATEGIES))
def test_every_failed_commit_changes_nothing_more_sequences(tmp_path, key, seed):
    every_kth_commit(tmp_path, key, seed=1000 + seed, n_ops=36)


# -- a real full disk ----------------------------------------------------------


@pytest.fixture
def small_disk():
    """A 32 MiB tmpfs (root only; skipped elsewhere: the injection above
    covers the same code paths)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tempfile.mkdtemp(prefix="tiered-full-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", where], capture_output=True)
    if done.returncode:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)  # -l: even if a failed test left it open
        os.rmdir(where)


def fill(disk: str) -> str:
    """Take every free byte of ``disk`` into a file; returns its path."""
    filler = os.path.join(disk, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = 1 << 20
        while size >= 512:
            try:
                os.write(fd, b"\xff" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("key", ["one-bit", "multi-bit-8", "hybrid-1"])
def test_full_disk_raises_store_full_and_changes_nothing(small_disk, key):
    rng = random.Random(5)
    path = os.path.join(small_disk, "s")
    model = ReferenceVolume(SIZE, GRAN)
    store = tiered.open(path)
    vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy=STRATEGIES[key])
    for _ in range(SPENT_GENERATIONS):
        vol.checkpoint("spent")
        vol.remove_checkpoint("spent")
    for i in range(3):  # width 8 renumbers at the next checkpoint
        vol.checkpoint(f"a{i}")
        model.checkpoint(f"a{i}")
        writes = [(rng.randrange(SIZE // GRAN) * GRAN, GRAN) for _ in range(4000)]
        vol.mark_many([w[0] for w in writes], [w[1] for w in writes])
        for w in writes:
            model.mark(*w)
    filler = fill(small_disk)
    # Each of these must write pages, which the full disk refuses.
    with pytest.raises(tiered.StoreFullError, match="full"):
        vol.checkpoint("c")
    check_answers(vol, model, "after the failed checkpoint")
    with pytest.raises(tiered.StoreFullError):
        vol.flush()
    with pytest.raises(tiered.StoreFullError):
        vol.convert(STRATEGIES["multi-bit-8" if key == "one-bit" else "one-bit"])
    check_answers(vol, model, "after the failed flush and convert")
    # close() on the full disk raises and leaves the store open and whole ...
    with pytest.raises(tiered.StoreFullError):
        store.close()
    check_answers(vol, model, "after the failed close")
    # ... and everything works again once space returns.
    os.unlink(filler)
    vol.checkpoint("c")
    model.checkpoint("c")
    vol.mark(0, 1)
    model.mark(0, 1)
    check_answers(vol, model, "space returned")
    store.close()
    with tiered.open(path, readonly=True) as store:
        check_answers(store.volume("v"), model, "reopened")


def test_store_close_on_a_full_disk_can_be_retried(tmp_path):
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    models = {}
    for name in ("v", "w"):
        vol = store.create_volume(name, size=SIZE, granularity=GRAN, strategy=STRATEGIES["multi-bit-8"])
        vol.checkpoint("a")
        vol.mark(GRAN * 7, GRAN)
        models[name] = ReferenceVolume(SIZE, GRAN)
        models[name].checkpoint("a")
        models[name].mark(GRAN * 7, GRAN)
    w = store.volume("w")
    store._storage.commit_hook = FailKth(2)  # the second volume's flush
    with pytest.raises(tiered.StoreFullError):
        store.close()
    assert repr(store).endswith("open>")
    check_answers(w, models["w"], "after the failed close")
    assert store.volume("w") is w
    store.close()  # space is back
    store.close()
    with pytest.raises(tiered.ClosedError):
        store.volumes()
    with tiered.open(path, readonly=True) as store:
        for name, model in models.items():
            check_answers(store.volume(name), model, f"{name} reopened")


# -- sync mode: a failed sync or checkpoint loses nothing acknowledged -----------------


class SyncRun:
    """A sync-mode volume, the model of every mark made, and which of them
    were acknowledged (their sync, or a later barrier, returned)."""

    def __init__(self, path: str, hook: FailKth) -> None:
        self.path = path
        self.hook = hook
        self.store = tiered.open(path, sync=False)
        self.store._storage.commit_hook = hook
        self.vol = self.store.volume("v")
        self.pending: dict[int, list[int]] = {}  # token -> clocks of its marks
        self.acked: set[int] = set()  # clocks of acknowledged marks

    def _marked(self, token: int | None, model: ReferenceVolume) -> None:
        if token is None:
            self.acked.add(model.clock)
        else:
            self.pending.setdefault(token, []).append(model.clock)

    def _barrier(self) -> None:
        for clocks in self.pending.values():
            self.acked.update(clocks)
        self.pending.clear()

    def apply(self, op: tuple, model: ReferenceVolume) -> None:
        kind = op[0]
        if kind == "mark":
            token = self.vol.mark(op[1], op[2])
            model.mark(op[1], op[2])
            self._marked(token, model)
        elif kind == "mark_many":
            token = self.vol.mark_many([w[0] for w in op[1]], [w[1] for w in op[1]])
            for w in op[1]:
                model.mark(*w)
                self._marked(token, model)
        elif kind == "sync_token":
            if self.pending:
                token = sorted(self.pending)[op[1] % len(self.pending)]
                self.vol.sync(token)
                self.acked.update(self.pending.pop(token))
        elif kind == "sync":
            self.vol.sync()
            self._barrier()
        elif kind == "checkpoint":
            self.vol.checkpoint(op[1])
            model.checkpoint(op[1])
            self._barrier()
        elif kind == "remove":
            names = model.names()
            if names:
                name = names[op[1] % len(names)]
                self.vol.remove_checkpoint(name)
                model.remove(name)
                self._barrier()
        elif kind == "flush":
            self.vol.flush()
            self._barrier()

    def acked_model(self, model: ReferenceVolume) -> ReferenceVolume:
        writes = [w for w in model.writes if w[0] in self.acked]
        return ReferenceVolume(model.size, model.granularity, model.clock, writes, dict(model.checkpoints))

    def check_crash_image(self, model: ReferenceVolume, image: str, where: str) -> None:
        """A crash now loses no acknowledged mark, and invents none."""
        os.makedirs(image)
        shutil.copy(os.path.join(self.path, "data.mdb"), image)
        acked = self.acked_model(model)
        try:
            with tiered.open(image, sync=False) as store:
                vol = store.volume("v")
                assert [c.name for c in vol.checkpoints()] == model.names(), where
                for name in model.names():
                    got = vol.changed_since(name)
                    assert got.exact, where
                    assert covers(list(got), acked.changed_since(name)), f"{where}: an acknowledged mark since {name!r} was lost"
                    assert covers(model.changed_since(name), list(got)), f"{where}: a chunk never marked since {name!r}"
        finally:
            shutil.rmtree(image)


def random_sync_ops(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    ops = []
    for op in random_ops(seed, n):
        if op[0] in ("convert", "close_volume", "reopen"):
            op = ("sync",)
        ops.append(op)
        if op[0] in ("mark", "mark_many") and rng.random() < 0.5:
            ops.append(("sync_token", rng.randrange(1 << 16)))
    return ops


def sync_replay(base: str, work: str, ops: list[tuple], k: int | None, model0: ReferenceVolume) -> int:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    model = ReferenceVolume(model0.size, model0.granularity, model0.clock, list(model0.writes), dict(model0.checkpoints))
    hook = FailKth(k)
    run = SyncRun(work, hook)
    run.acked = {w[0] for w in model.writes}  # the base store is flushed
    try:
        for step, op in enumerate(ops):
            fired = hook.fired
            try:
                run.apply(op, model)
            except tiered.StoreFullError as exc:
                where = f"k={k} step {step} {op} after the failure"
                assert hook.fired and not fired, f"{where}: {exc}"
                assert isinstance(exc, tiered.TieredError) and "full" in str(exc)
                # RAM still holds every mark, and nothing else changed.
                check_answers(run.vol, model, where)
                run.check_crash_image(model, work + "-crash", where)
                # Space is back: the same call now succeeds.
                run.apply(op, model)
                run.check_crash_image(model, work + "-crash", f"k={k} step {step} {op} retried")
            else:
                assert hook.fired == fired, f"step {step} {op} swallowed the failure"
        run.check_crash_image(model, work + "-crash", f"k={k} at the end")
        seen = hook.seen
        hook.k = None
        run.store.close()
        with tiered.open(work, sync=False) as store:
            vol = store.volume("v")
            check_answers(vol, model, f"k={k} closed and reopened")
    finally:
        hook.k = None
        run.store.close()
    assert k is None or hook.fired, f"commit {k} never happened"
    return seen


@pytest.mark.parametrize("key", ["one-bit", "multi-bit-8", "hybrid-1"])
def test_every_failed_commit_in_sync_mode_loses_nothing_acknowledged(tmp_path, key):
    base, work = str(tmp_path / "base"), str(tmp_path / "work")
    model0 = ReferenceVolume(SIZE, GRAN)
    with tiered.open(base, sync=False) as store:
        vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy=STRATEGIES[key], durability="sync")
        for _ in range(SPENT_GENERATIONS):
            vol.checkpoint("spent")
            vol.remove_checkpoint("spent")
        for name, (offset, length) in (("a", (0, 5 * GRAN)), ("b", (PAGE_CHUNKS * GRAN, 3 * GRAN))):
            vol.checkpoint(name)
            model0.checkpoint(name)
            vol.sync(vol.mark(offset, length))
            model0.mark(offset, length)
    for seed in range(3):
        ops = random_sync_ops(sorted(STRATEGIES).index(key) * 10 + 31 + seed, 40)
        total = sync_replay(base, work, ops, None, model0)
        assert total >= 15
        for k in range(1, total + 1):
            sync_replay(base, work, ops, k, model0)


def test_a_failed_sync_leader_leaves_the_waiters_to_retry(tmp_path):
    """The leader's commit fails: it raises StoreFullError, and a sync that
    waited for the same batch commits it itself."""
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = store.create_volume("v", size=SIZE, granularity=GRAN, durability="sync")
    vol.checkpoint("a")
    token = vol.mark(7 * GRAN, GRAN)
    waiting = threading.Event()
    calls = []

    def hook() -> None:
        calls.append(1)
        if len(calls) == 1:
            assert waiting.wait(10)
            time.sleep(0.05)  # the waiter is in sync() by now
            FailKth(1)()

    store._storage.commit_hook = hook
    errors = []

    def lead() -> None:
        try:
            vol.sync(token)
        except tiered.StoreFullError as exc:
            errors.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    while not calls:
        time.sleep(0.001)
    waiter = threading.Thread(target=vol.sync, args=(token,))
    waiter.start()
    waiting.set()
    leader.join(10)
    waiter.join(10)
    assert len(errors) == 1 and len(calls) == 2
    assert vol.mark(7 * GRAN, GRAN) is None  # durable now
    image = str(tmp_path / "crash")
    os.makedirs(image)
    shutil.copy(os.path.join(store.path, "data.mdb"), image)
    with tiered.open(image, sync=False) as s:
        assert list(s.volume("v").changed_since("a")) == [(7 * GRAN, GRAN)]
    store.close()


@pytest.mark.parametrize("key", ["one-bit", "multi-bit-8", "hybrid-1"])
def test_full_disk_in_sync_mode_keeps_every_acknowledged_mark(small_disk, key):
    path = os.path.join(small_disk, "s")
    rng = random.Random(11)
    model = ReferenceVolume(SIZE, GRAN)
    store = tiered.open(path)
    vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy=STRATEGIES[key], durability="sync")
    vol.checkpoint("a")
    model.checkpoint("a")
    acked = []
    for _ in range(3):
        writes = [(rng.randrange(SIZE // GRAN) * GRAN, GRAN) for _ in range(3000)]
        vol.sync(vol.mark_many([w[0] for w in writes], [w[1] for w in writes]))
        for w in writes:
            model.mark(*w)
        acked += writes
    filler = fill(small_disk)
    # New chunks need a journal entry, which the full disk refuses ...
    failed = [(rng.randrange(SIZE // GRAN) * GRAN, GRAN) for _ in range(20000)]
    token = vol.mark_many([w[0] for w in failed], [w[1] for w in failed])
    assert token is not None
    for w in failed:
        model.mark(*w)
    with pytest.raises(tiered.StoreFullError, match="full"):
        vol.sync(token)
    with pytest.raises(tiered.StoreFullError):
        vol.checkpoint("b")
    check_answers(vol, model, "after the failed sync and checkpoint")
    # ... a crash now keeps every acknowledged mark ...
    image = os.path.join(os.path.dirname(small_disk), os.path.basename(small_disk) + "-img")
    shutil.rmtree(image, ignore_errors=True)
    os.makedirs(image)
    shutil.copy(os.path.join(path, "data.mdb"), image)
    os.unlink(filler)
    try:
        with tiered.open(image, sync=False) as s:
            got = s.volume("v").changed_since("a")
            acked_model = ReferenceVolume(SIZE, GRAN)
            acked_model.checkpoint("a")
            for w in acked:
                acked_model.mark(*w)
            assert covers(list(got), acked_model.changed_since("a"))
    finally:
        shutil.rmtree(image)
    # ... and once space is back, the retried sync commits the marks.
    vol.sync(token)
    vol.checkpoint("b")
    model.checkpoint("b")
    check_answers(vol, model, "space returned")
    store.close()
    with tiered.open(path, readonly=True) as s:
        check_answers(s.volume("v"), model, "reopened")


def test_a_failed_sync_with_marks_made_meanwhile_keeps_them_all(tmp_path):
    """Other threads mark new chunks while the leader's commit is in flight,
    and the commit fails: the leader raises StoreFullError (it raised
    BufferError, and the failed batch's chunks stayed marked in RAM but out of
    every later journal entry), and the next sync commits both batches."""
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = store.create_volume("v", size=SIZE, granularity=GRAN, durability="sync")
    vol.checkpoint("a")
    first = vol.mark(7 * GRAN, GRAN)
    entered, release = threading.Event(), threading.Event()

    def hook() -> None:
        entered.set()
        assert release.wait(10)
        FailKth(1)()

    store._storage.commit_hook = hook
    errors = []

    def lead() -> None:
        try:
            vol.sync(first)
        except BaseException as exc:  # noqa: BLE001 -- checked below
            errors.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    assert entered.wait(10)
    second = vol.mark(9 * GRAN, GRAN)  # a new chunk, while the commit is in flight
    release.set()
    leader.join(10)
    store._storage.commit_hook = None
    assert len(errors) == 1 and isinstance(errors[0], tiered.StoreFullError), errors
    assert vol.mark(7 * GRAN, GRAN) is not None  # not durable: still waits
    vol.sync(second)
    vol.sync(first)
    assert vol.mark(7 * GRAN, GRAN) is None and vol.mark(9 * GRAN, GRAN) is None
    image = str(tmp_path / "crash")
    os.makedirs(image)
    shutil.copy(os.path.join(store.path, "data.mdb"), image)
    with tiered.open(image, sync=False) as s:
        assert list(s.volume("v").changed_since("a")) == [(7 * GRAN, GRAN), (9 * GRAN, GRAN)]
    store.close()
