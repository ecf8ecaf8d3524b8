"""The public API: bad input, settings on reopen, limits, scale and costs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from naive import ReferenceVolume, covers

import tiered
from tiered.storage import codec, environment
from tiered.config import PAGE_CHUNKS

MODES = ["one-bit", "multi-bit", "hybrid"]


@pytest.fixture
def store(tmp_path):
    with tiered.open(str(tmp_path / "store"), sync=False) as s:
        yield s


@pytest.fixture(params=MODES)
def vol(request, store):
    v = store.create_volume("vda", size=1 << 30, granularity=64 << 10, strategy=request.param)
    v.checkpoint("base")
    v.mark(0, 4096)
    return v


# -- bad input -----------------------------------------------------------


@pytest.mark.parametrize(
    "offset, length, error",
    [
        (-1, 10, tiered.OutOfRangeError),
        (0, -1, tiered.OutOfRangeError),
        (1 << 30, 1, tiered.OutOfRangeError),
        ((1 << 30) - 1, 2, tiered.OutOfRangeError),
        (1 << 70, 1, tiered.OutOfRangeError),
        (1.5, 10, tiered.InvalidArgumentError),
        ("0", 10, tiered.InvalidArgumentError),
        (True, 10, tiered.InvalidArgumentError),
    ],
)
def test_bad_mark_raises_and_changes_nothing(vol, offset, length, error):
    before = list(vol.changed_since("base"))
    with pytest.raises(error) as info:
        vol.mark(offset, length)
    assert isinstance(info.value, ValueError)
    assert list(vol.changed_since("base")) == before


@pytest.mark.parametrize(
    "offsets, lengths, needle",
    [
        (np.array([0, 1 << 20, -5]), np.array([1, 1, 1]), "write 2"),
        (np.array([0, (1 << 30) - 1]), np.array([1, 2]), "write 1"),
        (np.array([0.0, 1.0]), np.array([1, 1]), "dtype float64"),
        (np.array([0, 1]), np.array([1, 1, 1]), "differ in length"),
        (np.array([[0, 1]]), np.array([[1, 1]]), "one-dimensional"),
        (np.array([0, 1 << 63], np.uint64), np.array([1, 1], np.uint64), "write 1"),
        ([0, "x"], [1, 1], "dtype"),
    ],
)
def test_bad_batch_raises_and_marks_nothing(vol, offsets, lengths, needle):
    before = list(vol.changed_since("base"))
    with pytest.raises(tiered.InvalidArgumentError, match=needle):
        vol.mark_many(offsets, lengths)
    assert list(vol.changed_since("base")) == before


def test_batch_accepts_sequences_and_any_integer_dtype(vol):
    vol.mark_many([1 << 20], [1])
    vol.mark_many(np.array([2 << 20], np.uint32), np.array([1], np.uint8))
    vol.mark_many([], [])
    assert list(vol.changed_since("base")) == [(0, 64 << 10), (1 << 20, 64 << 10), (2 << 20, 64 << 10)]


@pytest.mark.parametrize("name", ["", "x" * 1024, "é" * 512, None, 7])
def test_bad_checkpoint_names(vol, name):
    with pytest.raises(tiered.InvalidArgumentError):
        vol.checkpoint(name)
    assert [c.name for c in vol.checkpoints()] == ["base"]


def test_longest_name_and_unicode_names_work(vol):
    for name in ("x" * 1023, "é" * 511, "snap/2026-11-25 12:00"):
        vol.checkpoint(name)
    assert [c.name for c in vol.checkpoints()][1:] == ["x" * 1023, "é" * 511, "snap/2026-11-25 12:00"]


def test_unknown_and_duplicate_names(store, vol):
    with pytest.raises(tiered.CheckpointNotFoundError) as info:
        vol.changed_since("nope")
    assert isinstance(info.value, KeyError) and "nope" in str(info.value)
    with pytest.raises(tiered.CheckpointNotFoundError):
        vol.remove_checkpoint("nope")
    with pytest.raises(tiered.AlreadyExistsError):
        vol.checkpoint("base")
    with pytest.raises(tiered.VolumeNotFoundError):
        store.volume("nope")
    with pytest.raises(tiered.AlreadyExistsError):
        store.create_volume("vda", size=1 << 20)
    with pytest.raises(tiered.VolumeNotFoundError):
        store.remove_volume("nope")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"size": 0}, "size"),
        ({"size": -1}, "size"),
        ({"size": 1 << 20, "granularity": 1000}, "power of two"),
        ({"size": 1 << 20, "granularity": 256}, "power of two"),
        ({"size": 1 << 20, "granularity": 4 << 30}, "power of two"),
        ({"size": 1 << 20, "strategy": "two-bit"}, "unknown strategy mode"),
        ({"size": 1 << 20, "strategy": 3}, "strategy must be"),
        ({"size": 1 << 61, "granularity": 512}, "more than"),
    ],
)
def test_bad_volume_settings(store, kwargs, needle):
    with pytest.raises(tiered.InvalidArgumentError, match=needle):
        store.create_volume("bad", **kwargs)
    assert store.volumes() == []


@pytest.mark.parametrize(
    "kwargs", [{"mode": "x"}, {"width": 12}, {"cache_bytes": -1}, {"recent": 0}, {"width": "16"}]
)
def test_bad_strategy(kwargs):
    with pytest.raises(tiered.InvalidArgumentError):
        tiered.Strategy(**kwargs)


def test_bad_region(vol):
    for offset, length in [(-1, None), (1 << 30 + 1, None), (0, (1 << 30) + 1), (10, -1)]:
        with pytest.raises(tiered.OutOfRangeError):
            vol.changed_since("base", offset=offset, length=length)


def test_changed_between_needs_older_first(vol):
    vol.checkpoint("later")
    with pytest.raises(tiered.InvalidArgumentError, match="not older"):
        vol.changed_between("later", "base")
    with pytest.raises(tiered.InvalidArgumentError):
        vol.changed_between("base", "base")


# -- settings stored with the volume ------------------------------------------


def test_settings_persist_and_mismatch_is_an_error(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        s.create_volume("v", size=1 << 30, granularity=4096, strategy=tiered.Strategy("multi-bit", width=8))
    with tiered.open(path, sync=False) as s:
        v = s.volume("v")
        assert v.strategy.mode == "multi-bit" and v.strategy.width == 8
        assert (v.size, v.granularity) == (1 << 30, 4096)
    with tiered.open(path, sync=False) as s:
        with pytest.raises(tiered.StrategyMismatchError, match="width"):
            s.volume("v", strategy=tiered.Strategy("multi-bit", width=16))
        with pytest.raises(tiered.StrategyMismatchError, match="mode"):
            s.volume("v", strategy="hybrid")
        v = s.volume("v", strategy=tiered.Strategy("multi-bit", width=8, cache_bytes=1 << 20))
        assert v.strategy.cache_bytes == 1 << 20


def test_readonly_store_answers_and_refuses_writes(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        v = s.create_volume("v", size=1 << 30, strategy="hybrid")
        v.checkpoint("a")
        v.mark(0, 1)
    with tiered.open(path, readonly=True) as s:
        v = s.volume("v")
        assert list(v.changed_since("a")) == [(0, 64 << 10)]
        for call in (lambda: v.mark(0, 1), lambda: v.checkpoint("b"), lambda: s.create_volume("w", size=1)):
            with pytest.raises(tiered.ReadOnlyError):
                call()


def test_same_store_twice_in_one_process_is_refused(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False):
        with pytest.raises(tiered.StoreBusyError):
            tiered.open(path)
    tiered.open(path).close()


def test_closed_volume_and_store(tmp_path):
    s = tiered.open(str(tmp_path / "s"), sync=False)
    v = s.create_volume("v", size=1 << 20)
    v.checkpoint("a")
    s.close()
    with pytest.raises(tiered.ClosedError):
        v.changed_since("a")
    with pytest.raises(tiered.ClosedError):
        s.volumes()


def test_many_volumes_one_environment(store):
    vols = {m: store.create_volume(m, size=1 << 30, strategy=m) for m in MODES}
    for i, v in enumerate(vols.values()):
        v.checkpoint("a")
        v.mark(i << 20, 1)
    for i, v in enumerate(vols.values()):
        assert list(v.changed_since("a")) == [(i << 20, 64 << 10)]
    store.remove_volume("hybrid")
    assert store.volumes() == ["multi-bit", "one-bit"]
    assert list(vols["one-bit"].changed_since("a")) == [(0, 64 << 10)]


# -- scale and growth ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_petabyte_volume_with_a_gigabyte_written_stays_small(store, mode):
    vol = store.create_volume("big", size=1 << 50, granularity=4096, strategy=mode)
    vol.checkpoint("a")
    rng = np.random.default_rng(3)
    # 1 GiB in 1 MiB extents spread over the whole petabyte
    offsets = rng.choice(1 << 30, size=1024, replace=False).astype(np.int64) << 20
    vol.mark_many(offsets, np.full(1024, 1 << 20, np.int64))
    ram = vol.stats()["ram_bytes"]
    flat = (1 << 50) // 4096 // 8  # a flat bitmap: 32 GiB
    assert ram < flat // 100, ram
    ext = vol.changed_since("a")
    assert ext.total_bytes == 1 << 30
    vol.checkpoint("b")
    assert vol.changed_since("a").total_bytes == 1 << 30


def test_map_grows_by_itself(tmp_path, monkeypatch):
    # Lower the floor a new map starts from, so that a few MiB of pages
    # must grow it.
    monkeypatch.setattr(environment, "INITIAL_MAP_SIZE", 1 << 20)
    with tiered.open(str(tmp_path / "s"), sync=False, map_size=1 << 20) as s:
        assert s._storage.env.info()["map_size"] == 1 << 20
        vol = s.create_volume("v", size=1 << 40, granularity=4096, strategy="one-bit")
        vol.checkpoint("a")
        rng = np.random.default_rng(1)
        for i in range(3):
            offsets = rng.integers(0, 1 << 28, 200_000).astype(np.int64) << 12
            vol.mark_many(offsets, np.full(len(offsets), 4096, np.int64))
            vol.checkpoint(f"c{i}")
        assert vol.stats()["disk_bytes"] > 1 << 20
        assert s._storage.env.info()["map_size"] > 1 << 20


# -- multi-bit renumbering and its limit ---------------------------------------


def test_multibit_renumbers_instead_of_overflowing(tmp_path):
    path = str(tmp_path / "s")
    model = ReferenceVolume(1 << 30, 64 << 10)
    rng = np.random.default_rng(5)
    with tiered.open(path, sync=False) as s:
        vol = s.create_volume("v", size=1 << 30, strategy=tiered.Strategy("multi-bit", width=8))
        for i in range(700):
            name = f"c{i}"
            vol.checkpoint(name)
            model.checkpoint(name)
            off = int(rng.integers(0, 1 << 30))
            vol.mark(off, 1)
            model.mark(off, 1)
            live = model.names()
            if len(live) > 20:
                for gone in (live[0], live[len(live) // 2]):
                    vol.remove_checkpoint(gone)
                    model.remove(gone)
        assert vol.stats()["generation"] <= 255
        for name in model.names():
            assert list(vol.changed_since(name)) == model.changed_since(name)
    with tiered.open(path, sync=False) as s:
        vol = s.volume("v")
        for name in model.names():
            assert list(vol.changed_since(name)) == model.changed_since(name)


def test_multibit_checkpoint_limit_is_a_clear_error(store):
    vol = store.create_volume("v", size=1 << 20, strategy=tiered.Strategy("multi-bit", width=8))
    for i in range(255):
        vol.checkpoint(f"c{i}")
    vol.mark(0, 1)
    with pytest.raises(tiered.CheckpointLimitError, match="255 live checkpoints"):
        vol.checkpoint("one-too-many")
    assert len(vol.checkpoints()) == 255
    assert list(vol.changed_since("c0")) == [(0, 64 << 10)]


@pytest.mark.parametrize("mode", ["one-bit", "hybrid"])
def test_sixty_five_thousand_checkpoints(tmp_path, mode):
    with tiered.open(str(tmp_path / "s"), sync=False) as s:
        vol = s.create_volume("v", size=1 << 30, strategy=mode)
        for i in range(65_535):
            vol.checkpoint(str(i))
        vol.mark(5 << 20, 1)
        assert list(vol.changed_since("0")) == [(5 << 20, 64 << 10)]
    with tiered.open(str(tmp_path / "s"), sync=False) as s:
        vol = s.volume("v")
        assert len(vol.checkpoints()) == 65_535
        assert list(vol.changed_since("65534")) == [(5 << 20, 64 << 10)]


# -- costs ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_stats_report_costs(store, mode):
    vol = store.create_volume("v", size=1 << 40, strategy=mode)
    vol.checkpoint("a")
    offsets = np.arange(0, 1 << 40, 1 << 26, dtype=np.int64)
    vol.mark_many(offsets, np.full(len(offsets), 4096, np.int64))
    vol.checkpoint("b")
    vol.changed_since("a")
    stats = vol.stats()
    for key in ("ram_bytes", "disk_bytes", "cache_hits", "cache_misses", "checkpoints"):
        assert key in stats
    assert stats["checkpoints"] == 2
    assert stats["disk_bytes"] > 0
    if mode == "multi-bit":
        assert stats["history_ram_bytes"] >= len(offsets) * 2
    else:
        assert stats["cache_misses"] > 0


def test_a_query_larger_than_the_cache_keeps_a_budget_of_its_pages(store):
    # 12 sealed writesets, each touching every page of the volume: one query
    # reads far more than the 1 MiB budget.  Plain LRU would evict each page
    # before the next query came back to it, and hit nothing.
    size = 4 * PAGE_CHUNKS * 4096
    vol = store.create_volume("v", size=size, granularity=4096,
                              strategy=tiered.Strategy("one-bit", cache_bytes=1 << 20))
    rng = np.random.default_rng(5)
    vol.checkpoint("c0")
    for i in range(1, 13):
        offsets = rng.integers(0, size // 4096, 20_000) * 4096
        vol.mark_many(offsets, np.full(len(offsets), 4096))
        vol.checkpoint(f"c{i}")
    first = vol.changed_since("c0")
    before = vol.stats()
    assert before["cache_bytes"] <= 1 << 20
    again = vol.changed_since("c0")
    after = vol.stats()
    assert list(again) == list(first)
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    assert hits > 0 and hits + misses == 48  # 12 writesets x 4 pages
    assert after["cache_bytes"] == before["cache_bytes"]  # the kept pages stayed


def test_region_query_clips_like_block_status(store):
    vol = store.create_volume("v", size=10 * 65536 + 100, strategy="one-bit")
    vol.checkpoint("a")
    vol.mark(65536, 3 * 65536)
    vol.mark(10 * 65536, 1)  # the ragged last chunk
    assert list(vol.changed_since("a", offset=70000, length=50000)) == [(70000, 50000)]
    assert list(vol.changed_since("a", offset=0, length=65536)) == []
    assert list(vol.changed_since("a")) == [(65536, 3 * 65536), (10 * 65536, 100)]
    ext = vol.changed_since("a")
    assert ext.offsets.dtype == np.uint64 and ext.lengths.dtype == np.uint64
    assert len(ext) == 2 and ext.total_bytes == 3 * 65536 + 100


def test_writes_before_the_first_checkpoint_are_not_tracked(store):
    vol = store.create_volume("v", size=1 << 30, strategy="hybrid")
    vol.mark(0, 1 << 20)
    vol.checkpoint("a")
    assert list(vol.changed_since("a")) == []
    assert vol.stats()["history_ram_bytes"] < 4096


def test_page_sized_writes_use_no_rows(store):
    vol = store.create_volume("v", size=1 << 44, granularity=4096, strategy="one-bit")
    vol.checkpoint("a")
    vol.mark(0, 1 << 44)
    assert vol.stats()["ram_bytes"] < 1 << 20
    vol.checkpoint("b")
    assert list(vol.changed_since("a")) == [(0, 1 << 44)]
    assert vol.stats()["disk_bytes"] < 1 << 20


# -- several processes ------------------------------------------------------


# Children import this checkout's tiered, whatever the current directory.
CHILD_ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _in_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, timeout=120
    )


def _interactive_child(code: str) -> subprocess.Popen:
    """A child that reads our stdin and writes to a pipe, for step-by-step tests."""
    return subprocess.Popen(
        [sys.executable, "-c", code], env=CHILD_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_second_writer_process_is_refused(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        s.create_volume("v", size=1 << 20)
        child = _in_child(f"import tiered\ntry:\n    tiered.open({path!r})\nexcept tiered.StoreBusyError as e:\n    print('busy:', e)")
        assert "busy:" in child.stdout and "another process" in child.stdout
        reader = _in_child(f"import tiered\nwith tiered.open({path!r}, readonly=True) as s:\n    print(s.volumes())")
        assert reader.stdout.strip() == "['v']", reader.stderr


def test_readonly_open_checks_the_format(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        s._storage.write(lambda txn: txn.put(b"format", codec.pack_json({"format": 99}, b"format"), db=s._storage.meta))
    with pytest.raises(tiered.CorruptionError, match="format 99"):
        tiered.open(path, readonly=True)


def test_reader_sees_one_snapshot_while_a_writer_runs(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        v = s.create_volume("v", size=1 << 30, strategy=tiered.Strategy("hybrid", recent=1))
        for i in range(6):
            v.checkpoint(f"c{i}")
            v.mark(i << 20, 1)
        v.flush()
    # a reader's snapshot outlives a writer that folds and deletes pages
    child = _interactive_child(
        "import tiered, sys\n"
        f"with tiered.open({path!r}, readonly=True) as s:\n"
        "    v = s.volume('v', strategy=tiered.Strategy('hybrid', recent=1, cache_bytes=0))\n"
        "    first = list(v.changed_since('c0'))\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    print(first == list(v.changed_since('c0')), len(first), flush=True)\n"
    )
    assert child.stdout.readline().strip() == "ready"
    with tiered.open(path, sync=False) as s:
        v = s.volume("v")
        for i in range(6, 20):  # seals, folds and deletes the pages the reader listed
            v.checkpoint(f"c{i}")
            v.mark(i << 20, 1)
        v.remove_checkpoint("c1")
    out, _ = child.communicate("go\n", timeout=60)
    assert out.split() == ["True", "6"]


def test_reader_follows_volumes_added_and_removed_by_the_writer(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        s.create_volume("old", size=1 << 20)
    child = _interactive_child(
        "import tiered, sys\n"
        f"r = tiered.open({path!r}, readonly=True)\n"
        "print(r.volumes(), flush=True)\n"
        "sys.stdin.readline()\n"
        "print(r.volumes())\n"
        "try:\n    r.volume('old')\nexcept tiered.VolumeNotFoundError:\n    print('gone')\n"
    )
    assert child.stdout.readline().strip() == "['old']"
    with tiered.open(path, sync=False) as s:
        s.remove_volume("old")
        s.create_volume("new", size=1 << 20)
    out, _ = child.communicate("go\n", timeout=60)
    assert out.split("\n")[:2] == ["['new']", "gone"]


def test_same_store_through_a_symlink_is_the_same_store(tmp_path):
    path = tmp_path / "s"
    with tiered.open(str(path), sync=False):
        (tmp_path / "link").symlink_to(path)
        with pytest.raises(tiered.StoreBusyError, match="this process"):
            tiered.open(str(tmp_path / "link"))


def test_settings_a_mode_does_not_use_are_not_enforced(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as s:
        s.create_volume("v", size=1 << 20, strategy="one-bit")
    with tiered.open(path, sync=False) as s:
        assert s.volume("v", strategy=tiered.Strategy("one-bit", recent=4, width=8)).strategy.mode == "one-bit"


@pytest.mark.parametrize("mode", MODES)
def test_ram_bytes_matches_memory_the_volume_holds(store, mode):
    """stats()['ram_bytes'] against what tracemalloc sees numpy allocate."""
    import gc
    import tracemalloc

    rng = np.random.default_rng(9)
    offsets = rng.integers(0, (1 << 40) // 4096, 200_000).astype(np.int64) * 4096
    lengths = np.full(len(offsets), 4096, np.int64)
    warm = store.create_volume("warm", size=1 << 30, strategy=mode)  # compile outside the trace
    warm.checkpoint("a")
    warm.mark_many(offsets[:10] % (1 << 30), lengths[:10])
    warm.checkpoint("b")
    warm.changed_since("a")
    warm.close()
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        vol = store.create_volume("v", size=1 << 40, strategy=mode)
        vol.checkpoint("a")
        for i in range(12):
            vol.mark_many(offsets[i::12], lengths[i::12])
            vol.checkpoint(f"c{i}")
        vol.mark_many(offsets[:1000], lengths[:1000])
        vol.changed_since("a")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    reported = vol.stats()["ram_bytes"]
    assert abs(held - reported) <= 0.05 * reported + (256 << 10), (held, reported)


@pytest.mark.parametrize("seed", [11, 12])
def test_a_hybrid_fold_spread_over_checkpoints_keeps_every_answer(tmp_path, seed):
    # 4 pages of the generation array and recent=2: a fold rewrites at most
    # 2 pages per checkpoint, so it stays in progress across checkpoints.
    # A one-bit twin, which is always exact, gives the expected answers.
    size = 4 * PAGE_CHUNKS * 4096
    rng = np.random.default_rng(seed)
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    hybrid = store.create_volume("h", size=size, granularity=4096, strategy=tiered.Strategy("hybrid", recent=2))
    twin = store.create_volume("t", size=size, granularity=4096, strategy="one-bit")
    seen_in_progress = removals_in_progress = 0

    def check() -> None:
        for c in twin.checkpoints():
            assert list(hybrid.changed_since(c.name)) == list(twin.changed_since(c.name)), c.name
        names = [c.name for c in twin.checkpoints()]
        for a, b in zip(names, names[2:]):
            got, exact = hybrid.changed_between(a, b), twin.changed_between(a, b)
            assert covers(list(got), list(exact)), (a, b)
            if got.exact:
                assert list(got) == list(exact), (a, b)

    for i in range(24):
        offsets = rng.integers(0, size // 4096, 3000) * 4096
        for vol in (hybrid, twin):
            vol.mark_many(offsets, np.full(len(offsets), 4096))
            vol.checkpoint(f"c{i}")
        seen_in_progress += bool(hybrid._history.fold_upto)
        check()
        if i == 13:  # reopen in the middle of it all
            store.close()
            store = tiered.open(path, sync=False)
            hybrid, twin = store.volume("h"), store.volume("t")
            check()
        live = [c for c in hybrid.checkpoints()]
        upto = hybrid._history.fold_upto
        if upto and len(live) >= 4:
            # Remove while the fold runs, in turn: the oldest (drops writesets
            # the fold covers); the second (merges into a predecessor the fold
            # covers); the first past the fold (merges a writeset the fold
            # has not seen into one it is folding: the fold must finish
            # first, or the pages it already did would miss those writes);
            # the newest (merges into the active writeset).
            past = next((k for k, c in enumerate(live) if c.generation > upto), len(live) - 1)
            kind = (removals_in_progress + seed) % 4
            name = live[[0, 1, max(past, 1), -1][kind]].name
            for vol in (hybrid, twin):
                vol.remove_checkpoint(name)
            removals_in_progress += 1
            check()
    assert seen_in_progress >= 3 and removals_in_progress >= 4
    store.close()


def test_a_multi_bit_flush_writes_only_the_pages_changed_since_the_last(tmp_path, monkeypatch):
    size = 4 * PAGE_CHUNKS * 4096
    path = str(tmp_path / "s")
    store = tiered.open(path, sync=False)
    vol = store.create_volume("m", size=size, granularity=4096, strategy=tiered.Strategy("multi-bit", width=8))
    twin = store.create_volume("t", size=size, granularity=4096, strategy="one-bit")
    written: list[int] = []
    encode = codec.encode_gens_page
    monkeypatch.setattr(codec, "encode_gens_page", lambda spans, page, key: written.append(page) or encode(spans, page, key))
    page_bytes = PAGE_CHUNKS * 4096

    def write(page: int, at: int) -> None:
        for v in (vol, twin):
            v.mark(page * page_bytes + at * 4096, 4096)

    def same() -> None:
        for c in twin.checkpoints():
            assert list(vol.changed_since(c.name)) == list(twin.changed_since(c.name)), c.name

    for v in (vol, twin):
        v.checkpoint("a")
    for page in range(4):
        write(page, 7)
    vol.flush()
    assert sorted(written) == [0, 1, 2, 3]
    written.clear()
    vol.flush()
    assert written == []  # nothing marked since
    for v in (vol, twin):
        v.checkpoint("b")
    write(2, 99)
    vol.flush()
    assert written == [2]
    written.clear()
    write(1, 5)
    for v in (vol, twin):
        v.checkpoint("c")
    write(3, 6)
    store.close()
    # Pages 1 and 3 changed.  Page 2 holds generation 2, the smallest marked
    # since the last flush, so it is written again; page 0 (generation 1) is not.
    assert sorted(written) == [1, 2, 3]
    store = tiered.open(path, sync=False)
    vol, twin = store.volume("m"), store.volume("t")
    same()
    store.close()
