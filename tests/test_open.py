"""Opening the wrong thing, a damaged store, or a store a writer grows.

Every failure here must be a TieredError naming the problem, change nothing
on disk, leave nothing behind, and never crash the process (a truncated data
file once killed it with SIGBUS, so that case runs in a child process).
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import sys
import textwrap

import lmdb
import pytest

import tiered
from tiered.storage import environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAN = 4096
SIZE = 1 << 32


def run_child(script: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True, timeout=timeout
    )


def make_store(path: str) -> None:
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy="one-bit")
        vol.checkpoint("a")
        rng = random.Random(3)
        for i in range(8):
            offsets = [rng.randrange(SIZE // GRAN) * GRAN for _ in range(40000)]
            vol.mark_many(offsets, [GRAN] * len(offsets))
            vol.checkpoint(f"b{i}")


# -- the wrong thing ----------------------------------------------------------


@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_lmdb_environment_is_refused_and_left_unchanged(tmp_path, readonly):
    path = str(tmp_path / "foreign")
    env = lmdb.open(path, max_dbs=2)
    db = env.open_db(b"theirs")
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=db)
    env.close()
    before = sorted(os.listdir(path)), open(os.path.join(path, "data.mdb"), "rb").read()
    with pytest.raises(tiered.NotAStoreError, match="not a tiered store"):
        tiered.open(path, readonly=readonly)
    assert (sorted(os.listdir(path)), open(os.path.join(path, "data.mdb"), "rb").read()) == before
    env = lmdb.open(path, max_dbs=2, readonly=True)
    with env.begin() as txn:
        assert [k for k, _ in txn.cursor()] == [b"theirs"]
    env.close()


def test_lmdb_environment_with_plain_keys_is_refused(tmp_path):
    path = str(tmp_path / "plain")
    env = lmdb.open(path)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"{}")
    env.close()
    with pytest.raises(tiered.NotAStoreError):
        tiered.open(path)


def test_regular_file_is_not_a_store(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"data")
    for readonly in (False, True):
        with pytest.raises(tiered.NotAStoreError, match="not a directory|no store"):
            tiered.open(str(path), readonly=readonly)
    assert path.read_bytes() == b"data"


def test_non_empty_directory_without_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(tiered.NotAStoreError, match="non-empty"):
        tiered.open(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_empty_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for readonly in (False, True):
        with pytest.raises(tiered.InvalidArgumentError, match="empty"):
            tiered.open("", readonly=readonly)
    with pytest.raises(tiered.InvalidArgumentError):
        tiered.open(None)
    assert os.listdir(tmp_path) == []


def test_empty_directory_and_path_like_make_a_store(tmp_path):
    with tiered.open(tmp_path, sync=False) as store:  # pathlib.Path
        store.create_volume("v", size=SIZE)
    with tiered.open(str(tmp_path), readonly=True) as store:
        assert store.volumes() == ["v"]


def test_failed_open_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "new"
    deep = tmp_path / "parent" / "child" / "s"

    def full() -> None:
        exc = lmdb.DiskError("mdb_txn_commit: No space left on device")
        exc.code = 28
        raise exc

    monkeypatch.setattr(environment.Storage, "commit_hook", staticmethod(full))
    with pytest.raises(tiered.StoreFullError):
        tiered.open(str(path))
    assert not path.exists()
    with pytest.raises(tiered.StoreFullError):
        tiered.open(str(deep))
    assert not (tmp_path / "parent").exists()
    path.mkdir()
    with pytest.raises(tiered.StoreFullError):
        tiered.open(str(path))
    assert os.listdir(path) == []
    monkeypatch.undo()
    with tiered.open(str(path), sync=False) as store:  # and the path can be used
        store.create_volume("v", size=SIZE)
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]


# -- one writer -----------------------------------------------------------------

SECOND_WRITER = """
    import tiered
    try:
        tiered.open({path!r})
    except tiered.StoreBusyError:
        print("busy")
    else:
        print("opened")
"""


def test_deleting_files_does_not_let_a_second_writer_in(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        store.create_volume("v", size=SIZE)
        for name in os.listdir(path):
            if name not in ("data.mdb", "lock.mdb"):
                os.unlink(os.path.join(path, name))
        done = run_child(SECOND_WRITER.format(path=path))
        assert done.stdout.strip() == "busy", done.stderr
    done = run_child(SECOND_WRITER.format(path=path))
    assert done.stdout.strip() == "opened", done.stderr


def test_writer_of_an_older_version_still_excludes(tmp_path):
    path = str(tmp_path / "s")
    make_store(path)
    # Older writers hold an flock on writer.lock.
    fd = os.open(os.path.join(path, "writer.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(tiered.StoreBusyError):
            tiered.open(path)
    finally:
        os.close(fd)
    tiered.open(path).close()


# -- a damaged store ---------------------------------------------------------------

OPEN_AND_READ = """
    import tiered
    try:
        with tiered.open({path!r}, readonly={readonly}) as store:
            vol = store.volume("v")
            print(sorted(vol.changed_since("a")))
    except tiered.TieredError as exc:
        print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("size", [300000, 5000, 100])
def test_truncated_data_file_is_a_clear_error_not_a_crash(tmp_path, readonly, size):
    path = str(tmp_path / "s")
    make_store(path)
    data = os.path.join(path, "data.mdb")
    assert os.path.getsize(data) > 300000
    os.truncate(data, size)
    done = run_child(OPEN_AND_READ.format(path=path, readonly=readonly))
    assert done.returncode == 0, f"killed by signal {-done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.startswith("CorruptionError"), done.stdout + done.stderr
    assert "truncated" in done.stdout
    assert os.path.getsize(data) == size  # and left as it was


def test_damaged_meta_page_is_a_clear_error(tmp_path):
    path = str(tmp_path / "s")
    make_store(path)
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        f.seek(16)
        f.write(b"\0\0\0\0")
    with pytest.raises(tiered.CorruptionError, match="meta page"):
        tiered.open(path, readonly=True)


# -- readers and a growing map -------------------------------------------------------

GROW = """
    import numpy as np, tiered
    from tiered.storage import environment
    environment.INITIAL_MAP_SIZE = 1 << 20
    with tiered.open({path!r}, sync=False) as store:
        vol = store.volume("a")
        rng = np.random.default_rng(1)
        for i in range(16):
            vol.mark_many(rng.integers(0, {size} - {gran}, 100000), np.full(100000, {gran}))
            vol.checkpoint(f"g{{i}}")
        vol.mark(0, 1)
        print(store._storage.env.info()["map_size"])
"""


@pytest.mark.parametrize("reservation", ["default", "small"])
def test_readers_survive_map_growth(tmp_path, monkeypatch, reservation):
    path = str(tmp_path / "s")
    monkeypatch.setattr(environment, "INITIAL_MAP_SIZE", 1 << 20)
    if reservation == "small":
        # Force the remap that a map grown past the reservation needs.
        monkeypatch.setattr(environment, "READER_MAP_SIZE", 1 << 20)
    with tiered.open(path, sync=False) as store:
        for name in ("a", "b"):
            vol = store.create_volume(name, size=SIZE, granularity=GRAN, strategy="one-bit")
            vol.checkpoint("x")
            vol.mark(GRAN, 1)
            vol.checkpoint("y")
    uncached = tiered.Strategy("one-bit", cache_bytes=0)
    with tiered.open(path, readonly=True) as reader:
        va, vb = reader.volume("a", uncached), reader.volume("b", uncached)
        before = [list(v.changed_since("x")) for v in (va, vb)]
        assert before == [[(GRAN, GRAN)]] * 2
        done = run_child(GROW.format(path=path, size=SIZE, gran=GRAN))
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) > reader._storage.env.info()["map_size"] or reservation == "default"
        assert "a" in reader.volumes()  # a new read transaction after the growth
        late = reader.volume("b")
        assert list(late.changed_since("x")) == [(GRAN, GRAN)]
        got_a = va.changed_since("x")
        assert list(vb.changed_since("x")) == [(GRAN, GRAN)]
        if reservation == "default":
            # No remap was needed: the snapshot taken at open still answers.
            assert list(got_a) == [(GRAN, GRAN)]
            assert [c.name for c in va.checkpoints()] == ["x", "y"]
        else:
            # The remap ended the snapshot: the volume shows the latest state.
            assert len(got_a) > 1000 and got_a.offsets[0] == 0
            assert [c.name for c in va.checkpoints()] == ["x", "y"] + [f"g{i}" for i in range(16)]
        assert va.stats()["checkpoints"] == len(va.checkpoints())


def test_the_data_file_check_raises_no_false_alarm_beside_a_writer(tmp_path):
    """A reader opening while the writer commits: the file's size was read
    before its meta pages, so a commit in between looked like a truncated
    file (about one check in 2,000 on 2 cores); and a meta page caught
    mid-write looks damaged for an instant, which the check reads again."""
    import threading
    import time

    import numpy as np

    from tiered.storage import lmdbfile

    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    vol = store.create_volume("v", 1 << 40, 4096, strategy="one-bit")
    vol.checkpoint("a")
    stop = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(1)
        i = 0
        while not stop.is_set():
            i += 1
            vol.mark_many(rng.integers(0, 1 << 28, 20000) * 4096, np.full(20000, 4096))
            vol.checkpoint(f"c{i}")

    thread = threading.Thread(target=writer)
    thread.start()
    alarms = []
    try:
        end = time.time() + 2
        while time.time() < end:
            try:
                lmdbfile.check_data_file(path)  # as a reader opening calls it
            except tiered.CorruptionError as exc:
                alarms.append(exc)
    finally:
        stop.set()
        thread.join()
        store.close()
    assert not alarms, alarms[:3]
