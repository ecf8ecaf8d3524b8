"""Crash safety: a process that dies must never make an answer miss a chunk.

Each test runs the writer in a child process that ends with ``os._exit`` (no
close, no flush) or is killed with SIGKILL, then reopens the store here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from naive import ReferenceVolume, covers

import tiered

MODES = ["one-bit", "multi-bit", "hybrid"]
SIZE = 1 << 30
GRAN = 64 << 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(body: str, path: str, mode: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, tiered
        store = tiered.open({path!r})
        if "v" in store.volumes():
            vol = store.volume("v")
        else:
            vol = store.create_volume("v", size={SIZE}, granularity={GRAN}, strategy={mode!r})
        """
    ) + textwrap.dedent(body) + "\nos._exit(0)\n"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)


@pytest.mark.parametrize("mode", MODES)
def test_unflushed_marks_make_every_checkpoint_report_everything(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        vol.mark(1 << 20, 4096)
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert vol.unclean_shutdown
        for name in ("a", "b"):
            ext = vol.changed_since(name)
            assert list(ext) == [(0, SIZE)] and not ext.exact
        # tracking resumes exactly from the next checkpoint on
        vol.checkpoint("c")
        vol.mark(5 << 20, 1)
        assert list(vol.changed_since("c")) == [(5 << 20, GRAN)]
        assert vol.changed_since("c").exact
        vol.remove_checkpoint("a")
        vol.remove_checkpoint("b")
        assert not vol.unclean_shutdown
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert not vol.unclean_shutdown
        assert list(vol.changed_since("c")) == [(5 << 20, GRAN)]


@pytest.mark.parametrize("mode", MODES)
def test_flush_then_crash_loses_nothing(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        vol.mark(1 << 20, 4096)
        vol.flush()
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert not vol.unclean_shutdown
        assert list(vol.changed_since("a")) == [(0, GRAN), (1 << 20, GRAN)]
        assert list(vol.changed_since("b")) == [(1 << 20, GRAN)]


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_survives_a_crash(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert [c.name for c in vol.checkpoints()] == ["a", "b"]
        got = vol.changed_since("a")
        if mode == "multi-bit":
            # a multi-bit checkpoint is O(1): it does not persist the array
            assert vol.unclean_shutdown and list(got) == [(0, SIZE)]
        else:
            # sealing a one-bit writeset persists everything marked so far
            assert not vol.unclean_shutdown and list(got) == [(0, GRAN)]


KILL_WRITER = """
import json, os, sys
import numpy as np
rng = np.random.default_rng(int(sys.argv[1]))
log = open(sys.argv[2], "a", buffering=1)
i = 0
while True:
    i += 1
    if rng.random() < 0.2:
        vol.checkpoint(f"c{i}")
        log.write(json.dumps(["checkpoint", f"c{i}"]) + "\\n")
    elif rng.random() < 0.05 and len(vol.checkpoints()) > 3:
        name = vol.checkpoints()[int(rng.integers(0, 3))].name
        vol.remove_checkpoint(name)
        log.write(json.dumps(["remove", name]) + "\\n")
    elif rng.random() < 0.05:
        vol.flush()
    else:
        offs = (rng.integers(0, {size} // 4096, 50) * 4096).tolist()
        vol.mark_many(offs, [4096] * len(offs))
        # logged once marked: the model may lack the write in flight, never
        # hold one the volume was not told about
        log.write(json.dumps(["mark", offs]) + "\\n")
"""


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_never_loses_a_change(tmp_path, mode):
    path = str(tmp_path / "s")
    log_path = str(tmp_path / "log")
    setup = f"import tiered\nstore = tiered.open({path!r})\n"
    setup += f"vol = store.create_volume('v', size={SIZE}, granularity={GRAN}, strategy={mode!r})\n"
    setup += KILL_WRITER.replace("{size}", str(SIZE))
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", setup, "7", log_path], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        if os.path.exists(log_path) and sum(1 for _ in open(log_path)) > 400:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    model = ReferenceVolume(SIZE, GRAN)
    with open(log_path) as log:
        for line in log:
            try:
                op, arg = json.loads(line)
            except json.JSONDecodeError:
                break  # the last line may be torn
            if op == "checkpoint":
                model.checkpoint(arg)
            elif op == "remove":
                model.remove(arg)
            else:
                for off in arg:
                    model.mark(off, 4096)
    with tiered.open(path) as store:
        vol = store.volume("v")
        live = [c.name for c in vol.checkpoints()]
        # a removal in flight may have committed without being logged
        assert len(set(model.names()) - set(live)) <= 1
        checked = 0
        for name in live:
            if name not in model.checkpoints:
                continue  # a checkpoint in flight that committed
            got = list(vol.changed_since(name))
            assert covers(got, model.changed_since(name)), f"checkpoint {name}: a change was lost"
            checked += 1
        assert checked > 3


# -- kill -9 trials: the crash-exact contract of durability="sync" -------------
#
# A forked child runs a random workload and appends one line per event to a
# log, with os.write on an O_APPEND descriptor (the line is in the kernel as
# soon as the call returns, so it survives SIGKILL).  The parent kills the
# child at a random moment, reopens the store, and checks every answer against
# what the log proves:
#
#   ["am", id, [[off, len], ...]]   a mark is attempted (logged before mark())
#   ["mr", id, token]               mark() / mark_many() returned a token
#   ["m", id]                       the mark is durable: it returned None, or
#                                   sync(token) returned
#   ["a", op, name] / ["d", op, name, generation_id]
#                                   op (checkpoint, remove, flush, sync) is
#                                   attempted / returned
#
# The trials fork from this (warmed) process, so each costs milliseconds
# instead of an interpreter start and a numba cache load.  The child's
# store skips fsync: a killed process loses nothing the kernel has, so every
# committed transaction is in the crash image (power loss is LMDB's business).
# TIERED_CRASH_TRIALS=N runs N sync-mode trials per strategy (and N // 2 lazy
# ones) instead of the default 50 (and 20); TIERED_CRASH_REPORT=path writes
# the totals there as JSON (see docs/benchmarks.md, "Crash trials").

import multiprocessing

import numpy as np
import random
import shutil
import threading
import traceback

from naive import to_byte_extents

from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

CT_GRAN = 512
CT_CHUNKS = PAGE_CHUNKS + 2 * SEG_CHUNKS + 300
CT_SIZE = CT_CHUNKS * CT_GRAN - 100  # a ragged end
CT_STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "hybrid-1": tiered.Strategy("hybrid", recent=1),
}
# Generations burned before a trial: a width-8 volume renumbers after a
# few checkpoints, and then every few checkpoints while checkpoints are removed.
CT_SPENT = 246
CT_POINTS = [0, 1, 63, 64, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_CHUNKS - 1, PAGE_CHUNKS, CT_CHUNKS - 2]
CT_TRIALS = int(os.environ.get("TIERED_CRASH_TRIALS", "50"))
CT_LAZY_TRIALS = max(20, CT_TRIALS // 2) if "TIERED_CRASH_TRIALS" in os.environ else 20
CT_TOTALS: dict[str, dict[str, int]] = {}


def _ct_write(rng: random.Random, hot: list) -> tuple[int, int]:
    """A random write in bytes: half of them rewrite a recent one."""
    if hot and rng.random() < 0.5:
        return rng.choice(hot)
    offset = rng.choice(CT_POINTS) * CT_GRAN + rng.randrange(-3 * CT_GRAN, 3 * CT_GRAN)
    offset = min(max(offset, 0), CT_SIZE - 1)
    length = rng.choice([1, CT_GRAN, CT_GRAN + 1, 5 * CT_GRAN, SEG_CHUNKS * CT_GRAN + 7, 3 * SEG_CHUNKS * CT_GRAN])
    w = (offset, min(length, CT_SIZE - offset))
    hot.append(w)
    del hot[:-8]
    return w


def _ct_child(path: str, log_path: str, seed: int, threads: int) -> None:
    """The writer: runs until killed.  Any error is logged and ends it."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(*rec: object) -> None:
        os.write(fd, (json.dumps(rec) + "\n").encode())

    try:
        rng = random.Random(seed)
        if seed % 2:
            # Syncs that flush a long journal instead of adding to it.
            sys.modules["tiered.volume_sync"].JOURNAL_FLUSH_ENTRIES = rng.choice([1, 4, 16])
        store = tiered.open(path, sync=False)
        vol = store.volume("v")
        lazy = vol.durability == "lazy"
        ids = iter(range(1 << 62))
        id_lock = threading.Lock()

        def marker(r: random.Random, stop: threading.Event | None) -> None:
            hot: list = []
            pending: list[tuple[int, int]] = []  # (token, id) not yet synced
            while stop is None or not stop.is_set():
                kind = r.random()
                if kind < 0.55 or not pending:
                    with id_lock:
                        i = next(ids)
                    writes = [_ct_write(r, hot) for _ in range(1 if r.random() < 0.6 else r.randrange(2, 6))]
                    emit("am", i, writes)
                    if len(writes) == 1 and r.random() < 0.7:
                        token = vol.mark(*writes[0])
                    else:
                        token = vol.mark_many(np.array([w[0] for w in writes]), np.array([w[1] for w in writes]))
                    if token is None:
                        emit("m", i)
                    else:
                        assert not lazy and type(token) is int and token > 0, token
                        emit("mr", i, token)
                        pending.append((token, i))
                elif kind < 0.9:
                    token, i = pending.pop(r.randrange(len(pending)))
                    vol.sync(token)
                    emit("m", i)
                else:
                    with id_lock:
                        name = f"s{next(ids)}"
                    emit("a", "sync", name)
                    vol.sync()
                    emit("d", "sync", name, None)
                    for token, i in pending:
                        emit("m", i)
                    pending.clear()
                if stop is None and r.random() < 0.3:
                    return

        stop = threading.Event()
        workers = [
            threading.Thread(target=marker, args=(random.Random(seed * 100 + t), stop), daemon=True)
            for t in range(threads)
        ]
        for w in workers:
            w.start()
        n = 0
        while True:
            n += 1
            live = [c.name for c in vol.checkpoints()]
            kind = rng.random()
            if not live or kind < 0.14:
                name = f"c{n}"
                emit("a", "checkpoint", name)
                vol.checkpoint(name)
                emit("d", "checkpoint", name, vol.generation_id)
            elif kind < 0.22 or len(live) > 7:
                # Mostly the oldest (hybrid folds), sometimes any, the last one included.
                name = live[0] if rng.random() < 0.5 else rng.choice(live)
                emit("a", "remove", name)
                vol.remove_checkpoint(name)
                emit("d", "remove", name, vol.generation_id)
            elif kind < 0.25:
                emit("a", "flush", None)
                vol.flush()
                emit("d", "flush", None, None)
            elif kind < 0.3:
                # Queries run meanwhile (their answers are checked after the crash).
                vol.changed_since(rng.choice(live))
            elif not threads:
                marker(rng, None)
            else:
                time.sleep(0.001)
            for w in workers:
                if not w.is_alive():
                    raise RuntimeError("a marker thread died")
    except BaseException:
        emit("err", traceback.format_exc())
        os._exit(3)


class CrashLog:
    """What a trial's log proves, as line numbers of its events."""

    def __init__(self, path: str) -> None:
        self.attempted: dict[int, tuple[int, list]] = {}  # id -> (line, writes)
        self.returned: dict[int, int] = {}  # id -> line of "mr" or of a None "m"
        self.durable: dict[int, int] = {}  # id -> line of "m", or of the barrier that made it durable
        self.durable_explicit: dict[int, int] = {}  # id -> line of "m"
        self.ops: list[tuple[str, str | None, int, int | None]] = []  # (op, name, attempt line, done line)
        self.gids: set[str] = set()
        self.error = None
        open_ops: dict[tuple[str, str | None], int] = {}
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            lines = []  # killed before it opened the log
        for n, raw in enumerate(lines):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # the last line may be torn (or empty)
            kind = rec[0]
            if kind == "am":
                self.attempted[rec[1]] = (n, rec[2])
            elif kind == "mr":
                self.returned[rec[1]] = n
            elif kind == "m":
                self.returned.setdefault(rec[1], n)
                self.durable[rec[1]] = n
                self.durable_explicit[rec[1]] = n
            elif kind == "a":
                open_ops[(rec[1], rec[2])] = len(self.ops)
                self.ops.append((rec[1], rec[2], n, None))
            elif kind == "d":
                i = open_ops.pop((rec[1], rec[2]))
                self.ops[i] = (rec[1], rec[2], self.ops[i][2], n)
                if rec[3]:
                    self.gids.add(rec[3])
            elif kind == "err":
                self.error = rec[1]
        self.end = len(lines)
        # Every call that commits is a sync barrier: a mark that returned
        # before the call started is durable once it returned.
        barriers = sorted((a, d) for op, _, a, d in self.ops if d is not None)
        for i, ret in self.returned.items():
            if i in self.durable:
                continue
            for a, d in barriers:
                if a > ret:
                    self.durable[i] = d
                    break

    def checkpoint_lines(self, name: str) -> tuple[int, int]:
        """(attempt line, done line or end) of the checkpoint ``name``."""
        for op, n, a, d in self.ops:
            if op == "checkpoint" and n == name:
                return a, self.end if d is None else d
        raise AssertionError(f"checkpoint {name!r} exists but was never attempted")

    def chunks(self, ids) -> list[tuple[int, int]]:
        spans = set()
        for i in ids:
            for off, length in self.attempted[i][1]:
                if length:
                    spans.add((off // CT_GRAN, (off + length - 1) // CT_GRAN))
        return to_byte_extents(spans, CT_GRAN, 0, CT_SIZE)

    def must(self, after: int, before: int | None = None, lazy: bool = False) -> list[tuple[int, int]]:
        """Marks attempted after line ``after`` (and returned before line
        ``before``) that the volume owes: the durable ones (every returned
        one in lazy mode, whose loss the volume must report instead)."""
        done = self.returned if lazy else self.durable
        return self.chunks(
            i for i, (line, _) in self.attempted.items()
            if line > after and i in done and (before is None or self.returned[i] < before)
        )

    def allowed(self, after: int, before: int | None = None) -> list[tuple[int, int]]:
        """Marks that may show: not returned before line ``after``, and
        attempted before line ``before``."""
        return self.chunks(
            i for i, (line, _) in self.attempted.items()
            if self.returned.get(i, self.end) > after and (before is None or line < before)
        )


def _ct_check(
    path: str, log: CrashLog, lazy: bool, base_gid: str, totals: dict[str, int], readonly: bool, syncs_flush: bool
) -> None:
    where = f"{path} ({'reader' if readonly else 'writer'})"
    with tiered.open(path, readonly=readonly, sync=False) as store:
        vol = store.volume("v")
        live = [c.name for c in vol.checkpoints()]
        created = {n for op, n, a, d in log.ops if op == "checkpoint" and d is not None}
        attempted = [n for op, n, a, d in log.ops if op == "checkpoint"]
        removing = {n for op, n, a, d in log.ops if op == "remove"}
        removed = {n for op, n, a, d in log.ops if op == "remove" and d is not None}
        lost = created - removing - set(live)
        resurrected = set(live) & removed
        totals["lost_checkpoints"] += len(lost)
        totals["resurrected_checkpoints"] += len(resurrected)
        assert not lost, f"{where}: checkpoints {sorted(lost)} were lost"
        assert not resurrected, f"{where}: removed checkpoints {sorted(resurrected)} came back"
        assert set(live) <= set(attempted), f"{where}: checkpoints {set(live) - set(attempted)} were never made"
        assert live == sorted(live, key=attempted.index), f"{where}: checkpoints out of order: {live}"
        # A removal of the last checkpoint in flight may have reset the id.
        in_flight_reset = any(d is None for op, n, a, d in log.ops if op == "remove")
        gids = log.gids | {base_gid}
        # A mark that returned a token after the last call that may have
        # persisted everything, then was synced: its journal entry is
        # committed, so the record says unflushed and the reopen replays.
        persisted = max([log.end if d is None else d for op, n, a, d in log.ops if op != "sync"], default=-1)
        synced_after = any(
            ret > persisted and ret != log.durable_explicit.get(i, ret) for i, ret in log.returned.items()
        )
        if lazy:
            # Tracking is lost exactly when marks were unflushed.
            if not in_flight_reset:
                assert (vol.generation_id not in gids) == vol.unclean_shutdown, where
        else:
            assert vol.generation_id in gids or in_flight_reset, f"{where}: generation id changed"
            if synced_after and not syncs_flush:  # a sync that flushed leaves no journal
                assert vol.unclean_shutdown, f"{where}: a journal was replayed, unclean_shutdown must say so"
        totals["unclean"] += vol.unclean_shutdown
        for k, name in enumerate(live):
            a, d = log.checkpoint_lines(name)
            got = vol.changed_since(name)
            if lazy and vol.unclean_shutdown:
                assert list(got) == [(0, CT_SIZE)] and not got.exact, f"{where}: {name} after lost marks"
                totals["superset_answers"] += 1
                continue
            assert got.exact, f"{where}: changed_since({name!r}) is not exact"
            totals["exact_answers"] += 1
            must, allowed = log.must(d, lazy=lazy), log.allowed(a)
            if not covers(list(got), must):
                totals["missed_answers"] += 1
                raise AssertionError(f"{where}: changed_since({name!r}) missed a durable mark")
            assert covers(allowed, list(got)), f"{where}: changed_since({name!r}) holds chunks never marked"
            for newer in live[k + 1 : k + 3]:
                b, e = log.checkpoint_lines(newer)
                got = vol.changed_between(name, newer)
                must = log.must(d, b, lazy=lazy)
                if not covers(list(got), must):
                    totals["missed_answers"] += 1
                    raise AssertionError(f"{where}: changed_between({name!r}, {newer!r}) missed a durable mark")
                wide = allowed if not got.exact else log.allowed(a, e)
                assert covers(wide, list(got)), f"{where}: changed_between({name!r}, {newer!r}) holds chunks never marked"
                totals["exact_answers" if got.exact else "superset_answers"] += 1
        totals["checked_checkpoints"] += len(live)


def _ct_base(tmp: str, key: str, durability: str) -> tuple[str, str]:
    """A store whose volume has burned CT_SPENT generations; (path, generation id)."""
    path = os.path.join(tmp, f"base-{key}-{durability}")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("v", size=CT_SIZE, granularity=CT_GRAN, strategy=CT_STRATEGIES[key], durability=durability)
        for _ in range(CT_SPENT):
            vol.checkpoint("spent")
            vol.remove_checkpoint("spent")
        return path, vol.generation_id


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """Load every kernel a trial uses in this process, so forked children
    start warm; no store stays open (a forked child must not share one)."""
    tmp = str(tmp_path_factory.mktemp("warm"))
    for key, strategy in CT_STRATEGIES.items():
        for durability in ("sync", "lazy"):
            path = os.path.join(tmp, f"{key}-{durability}")
            with tiered.open(path, sync=False) as store:
                vol = store.create_volume("v", size=CT_SIZE, granularity=CT_GRAN, strategy=strategy, durability=durability)
                for i in range(6):
                    vol.checkpoint(f"w{i}")
                    vol.sync(vol.mark_many(np.array([0, PAGE_CHUNKS * CT_GRAN]), np.array([CT_GRAN, 2 * SEG_CHUNKS * CT_GRAN])))
                    vol.sync(vol.mark(i * CT_GRAN, 1))
                    vol.changed_since("w0")
                    vol.changed_between("w0", f"w{i}") if i else None
                vol.remove_checkpoint("w2")
                vol.sync(vol.mark(5 * CT_GRAN, 1))
                # A copy of the files after a commit returned is a crash image.
                shutil.copytree(path, path + "-crash")
            path += "-crash"
            with tiered.open(path, readonly=True) as store:
                store.volume("v").changed_since("w0")
            with tiered.open(path, sync=False) as store:
                store.volume("v").changed_since("w0")
    return tmp


def run_crash_trials(tmp: str, key: str, durability: str, trials: int, seed0: int) -> dict[str, int]:
    totals = dict.fromkeys(
        ["trials", "threaded_trials", "unclean", "checked_checkpoints", "exact_answers", "superset_answers",
         "missed_answers", "lost_checkpoints", "resurrected_checkpoints", "marks_logged", "marks_durable",
         "checkpoints_made"], 0)
    base, base_gid = _ct_base(tmp, key, durability)
    work, log_path = os.path.join(tmp, "work"), os.path.join(tmp, "log")
    ctx = multiprocessing.get_context("fork")
    for t in range(trials):
        seed = seed0 + t
        rng = random.Random(seed)
        threads = 0 if durability == "lazy" or rng.random() < 0.6 else rng.choice([2, 3, 4])
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        if os.path.exists(log_path):
            os.unlink(log_path)
        child = ctx.Process(target=_ct_child, args=(work, log_path, seed, threads))
        child.start()
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        log = CrashLog(log_path)
        assert log.error is None, f"trial {seed}: the child failed:\n{log.error}"
        assert child.exitcode == -signal.SIGKILL, f"trial {seed}: the child ended by itself ({child.exitcode})"
        lazy = durability == "lazy"
        try:
            if t % 4 == 0:  # a reader replays without persisting: as exact
                _ct_check(work, log, lazy, base_gid, totals, readonly=True, syncs_flush=bool(seed % 2))
            _ct_check(work, log, lazy, base_gid, totals, readonly=False, syncs_flush=bool(seed % 2))
        except AssertionError as exc:
            raise AssertionError(f"{key} {durability} trial seed {seed} ({threads} threads): {exc}") from None
        totals["trials"] += 1
        totals["threaded_trials"] += bool(threads)
        totals["marks_logged"] += len(log.returned)
        totals["marks_durable"] += len(log.durable)
        totals["checkpoints_made"] += sum(1 for op, n, a, d in log.ops if op == "checkpoint" and d is not None)
    CT_TOTALS[f"{key} {durability}"] = totals
    report = os.environ.get("TIERED_CRASH_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump(CT_TOTALS, f, indent=1)
    print(key, durability, totals)
    return totals


@pytest.mark.parametrize("key", sorted(CT_STRATEGIES))
def test_kill_9_sync_mode_loses_no_acknowledged_mark(warmed, tmp_path, key):
    totals = run_crash_trials(str(tmp_path), key, "sync", CT_TRIALS, seed0=1000 * sorted(CT_STRATEGIES).index(key))
    assert totals["trials"] == CT_TRIALS and totals["missed_answers"] == 0
    assert totals["marks_durable"] > 0 and totals["checkpoints_made"] > 0


@pytest.mark.parametrize("key", sorted(CT_STRATEGIES))
def test_kill_9_lazy_mode_reports_what_it_lost(warmed, tmp_path, key):
    totals = run_crash_trials(str(tmp_path), key, "lazy", CT_LAZY_TRIALS, seed0=50000 + 1000 * sorted(CT_STRATEGIES).index(key))
    assert totals["trials"] == CT_LAZY_TRIALS and totals["missed_answers"] == 0
