"""Dump and load of one volume, backup and compaction of a store
(tiered/transfer/, docs/format.md "Dump streams")."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import tiered
from tiered.cli import main
from tiered.config import PAGE_SEGMENTS, SEG_CHUNKS
from tiered.storage.environment import DB_NAMES
from tiered.transfer import stream

ROOT = Path(__file__).resolve().parent.parent
PAGE_CHUNKS = PAGE_SEGMENTS * SEG_CHUNKS
G = 4096
SIZE = 3 * PAGE_CHUNKS * G + 5000  # three pages and a partial chunk


# -- helpers -----------------------------------------------------------------


def answers(vol: tiered.Volume) -> dict:
    """Every answer a volume gives: since each checkpoint, between each pair,
    and over a region, with the exact flags."""
    names = [c.name for c in vol.checkpoints()]
    out: dict = {"checkpoints": [(c.name, c.created, c.generation) for c in vol.checkpoints()]}
    for i, a in enumerate(names):
        since = vol.changed_since(a)
        out[("since", a)] = (list(since), since.exact)
        part = vol.changed_since(a, offset=vol.size // 3, length=vol.size // 2)
        out[("part", a)] = (list(part), part.exact)
        for b in names[i + 1 :]:
            between = vol.changed_between(a, b)
            out[("between", a, b)] = (list(between), between.exact)
    out["unclean"] = vol.unclean_shutdown
    return out


def comparable_stats(vol: tiered.Volume) -> dict:
    # disk_bytes counts the volume record, whose id and digest are store-local;
    # the cache counters depend on the queries asked so far.
    return {
        k: v for k, v in vol.stats().items()
        if k not in ("disk_bytes", "cache_bytes", "cache_hits", "cache_misses", "ram_bytes")
    }


def entries(store: tiered.Store) -> dict:
    """Entries of every database, and every key/value: what a failed load must not change."""
    storage = store._storage
    with storage.reading() as txn:
        return {
            name: sorted(storage.scan_prefix(txn, getattr(storage, name.decode()), b""))
            for name in DB_NAMES
        }


def dumped(vol: tiered.Volume) -> bytes:
    buf = io.BytesIO()
    report = vol.dump(buf)
    assert report["bytes"] == len(buf.getvalue())
    return buf.getvalue()


def marks(vol: tiered.Volume, rng: np.random.Generator, n: int, size: int = SIZE) -> None:
    offsets = rng.integers(0, size - 4 * G, n)
    vol.mark_many(offsets, rng.integers(1, 4 * G, n))


def build(store: tiered.Store, kind: str, rng: np.random.Generator) -> tiered.Volume:
    """A volume with a history that exercises ``kind``."""
    if kind == "empty":
        return store.create_volume(kind, size=1 << 20, strategy="one-bit")
    if kind == "no-checkpoints":
        vol = store.create_volume(kind, size=SIZE, granularity=G, strategy="hybrid")
        vol.mark(0, 1 << 20)  # not tracked: no checkpoint
        return vol
    if kind == "multi-bit-8":
        # renumbered: far more checkpoints made than 8 bits can count
        vol = store.create_volume(kind, size=1 << 30, strategy=tiered.Strategy("multi-bit", width=8))
        for i in range(300):
            vol.checkpoint(f"c{i}")
            marks(vol, rng, 2, 1 << 30)
            live = vol.checkpoints()
            if len(live) > 6:
                vol.remove_checkpoint(live[1].name)
        assert vol.stats()["generation"] < 300
        return vol
    strategy = {
        "one-bit": tiered.Strategy("one-bit"),
        "multi-bit": tiered.Strategy("multi-bit", width=16),
        "hybrid": tiered.Strategy("hybrid", recent=2),
    }[kind]
    vol = store.create_volume(kind, size=SIZE, granularity=G, strategy=strategy)
    for i in range(9):
        vol.checkpoint(f"c{i}")
        marks(vol, rng, 300)
        if i == 5:
            vol.remove_checkpoint("c3")
    vol.mark(SIZE - 1, 1)  # the partial last chunk
    return vol


KINDS = ["one-bit", "multi-bit", "hybrid", "multi-bit-8", "empty", "no-checkpoints"]


@pytest.fixture
def source(tmp_path):
    with tiered.open(str(tmp_path / "src"), sync=False) as store:
        yield store


@pytest.fixture
def target(tmp_path):
    with tiered.open(str(tmp_path / "dst"), sync=False) as store:
        yield store


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_answers(tmp_path, kind):
    rng = np.random.default_rng(KINDS.index(kind))
    src_path = str(tmp_path / "src")
    with tiered.open(src_path, sync=False) as src:
        vol = build(src, kind, rng)
        data = dumped(vol)  # a writer: flushes, then dumps
        live = answers(vol)
        if kind == "hybrid":
            assert src._storage is not None and any(tag == b"G" for tag, _ in vol._io.catalog), "nothing folded"
    with tiered.open(src_path, sync=False, readonly=True) as src:
        vol = src.volume(kind)
        assert answers(vol) == live
        assert dumped(vol)[: len(stream.MAGIC)] == stream.MAGIC  # a reader dumps its snapshot
        expected_stats = comparable_stats(vol)
        expected_disk = vol.stats()["disk_bytes"]
    with tiered.open(str(tmp_path / "dst"), sync=False) as dst:
        loaded = dst.load(io.BytesIO(data))
        assert loaded.name == kind and dst.volumes() == [kind]
        assert answers(loaded) == live
        assert comparable_stats(loaded) == expected_stats
        # the same keys and values but the record's id and digest, which may print longer or shorter
        assert abs(loaded.stats()["disk_bytes"] - expected_disk) <= 40
        assert loaded.strategy.fixed() == vol.strategy.fixed()
        # and it lives on: a new checkpoint and marks work as in the source
        loaded.checkpoint("after-load")
        loaded.mark(0, 1)
        assert list(loaded.changed_since("after-load")) == [(0, loaded.granularity)]
    with tiered.open(str(tmp_path / "dst"), sync=False) as dst:
        again = answers(dst.volume(kind))
        assert again["checkpoints"][:-1] == live["checkpoints"]


def test_round_trip_after_an_unclean_shutdown(tmp_path):
    rng = np.random.default_rng(7)
    with tiered.open(str(tmp_path / "live"), sync=False) as store:
        vol = store.create_volume("v", size=SIZE, granularity=G, strategy="one-bit")
        vol.checkpoint("old")
        marks(vol, rng, 100)
        vol.flush()
        marks(vol, rng, 100)  # RAM ahead of the disk: the record says unflushed
        os.makedirs(tmp_path / "crashed")
        shutil.copy(tmp_path / "live" / "data.mdb", tmp_path / "crashed" / "data.mdb")
    with tiered.open(str(tmp_path / "crashed"), sync=False) as store:
        vol = store.volume("v")
        assert vol.unclean_shutdown
        vol.checkpoint("new")
        marks(vol, rng, 50)
        assert vol._lost > 0
        live = answers(vol)
        data = dumped(vol)
    with tiered.open(str(tmp_path / "dst"), sync=False) as dst:
        loaded = dst.load(io.BytesIO(data), "copy")
        assert loaded.unclean_shutdown and loaded._lost == vol._lost
        assert answers(loaded) == live
        assert not live[("since", "old")][1] and live[("since", "new")][1]


def test_reader_dump_of_unflushed_writer_loads_as_unclean(tmp_path):
    path = str(tmp_path / "s")
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, tiered\n"
            f"s = tiered.open({path!r}, sync=False)\n"
            "v = s.create_volume('v', size=1 << 30)\n"
            "v.checkpoint('a'); v.mark(0, 1 << 20); v.flush(); v.mark(1 << 25, 1)\n"
            "print('ready', flush=True); sys.stdin.readline()\n"
        )],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        with tiered.open(path, readonly=True) as reader:
            data = dumped(reader.volume("v"))
    finally:
        child.communicate("\n", timeout=60)
    with tiered.open(str(tmp_path / "dst"), sync=False) as dst:
        loaded = dst.load(io.BytesIO(data))
        assert loaded.unclean_shutdown
        since = loaded.changed_since("a")
        assert list(since) == [(0, 1 << 30)] and not since.exact


def test_dump_while_another_thread_marks_and_checkpoints(source, target):
    vol = source.create_volume("v", size=SIZE, granularity=G, strategy=tiered.Strategy("hybrid", recent=2))
    vol.checkpoint("base")
    before = np.arange(0, 200) * 7 * G
    vol.mark_many(before, np.full(len(before), G))
    stop = threading.Event()
    later = (np.arange(0, 200) * 7 + 3) * G
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                vol.mark_many(later[i % 200 : i % 200 + 20], np.full(len(later[i % 200 : i % 200 + 20]), G))
                if i % 7 == 0:
                    vol.checkpoint(f"t{i}")
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        streams = [dumped(vol) for _ in range(6)]
    finally:
        stop.set()
        thread.join()
    assert not errors
    allowed = set(before.tolist()) | set(later.tolist())
    for i, data in enumerate(streams):
        loaded = target.load(io.BytesIO(data), f"copy{i}")  # every snapshot is consistent
        got = {off for o, n in loaded.changed_since("base") for off in range(o, o + n, G)}
        assert set(before.tolist()) <= got <= allowed
        for c in loaded.checkpoints():
            assert c.name in {x.name for x in vol.checkpoints()}


# -- refused streams change nothing ------------------------------------------------


@pytest.fixture
def small_dump(source):
    vol = source.create_volume("v", size=1 << 24, granularity=G, strategy="one-bit")
    vol.checkpoint("a")
    vol.mark(0, 3 * G)
    vol.checkpoint("b")
    vol.mark(100 * G, G)
    return dumped(vol)


def test_truncation_at_every_offset_is_refused_and_loads_nothing(small_dump, target):
    target.create_volume("other", size=1 << 20)
    before = entries(target)
    for cut in range(len(small_dump)):
        with pytest.raises(tiered.StreamError):
            target.load(io.BytesIO(small_dump[:cut]))
    assert entries(target) == before
    assert target.volumes() == ["other"]
    assert target.load(io.BytesIO(small_dump)).name == "v"


def test_every_byte_flip_is_refused(small_dump, target):
    before = entries(target)
    for at in range(len(small_dump)):
        for mask in (0x01, 0x80):
            damaged = bytearray(small_dump)
            damaged[at] ^= mask
            with pytest.raises(tiered.StreamError) as info:
                target.load(io.BytesIO(bytes(damaged)))
            assert "nothing was loaded" in str(info.value)
    assert entries(target) == before


def test_errors_name_the_record_and_offset(small_dump, target):
    damaged = bytearray(small_dump)
    damaged[len(small_dump) // 2] ^= 0xFF
    with pytest.raises(tiered.StreamError, match=r"record \d+ at byte \d+"):
        target.load(io.BytesIO(bytes(damaged)))
    with pytest.raises(tiered.StreamError, match="truncated"):
        target.load(io.BytesIO(small_dump[:-3]))
    with pytest.raises(tiered.StreamError, match="after its trailer"):
        target.load(io.BytesIO(small_dump + b"\0"))


def test_foreign_files_are_refused(tmp_path, target, small_dump):
    data_mdb = (Path(target.path) / "data.mdb").read_bytes()[:4096]
    newer = bytearray(small_dump[:16])
    newer[8] = 2  # stream version 2, with a valid header checksum
    import zlib

    newer[12:16] = zlib.crc32(bytes(newer[:12])).to_bytes(4, "little")
    cases = {
        b"": "not a tiered dump",
        b"hello world, this is not a dump at all": "not a tiered dump",
        b'{"volume": {}}' * 3: "not a tiered dump",
        data_mdb: "not a tiered dump",
        bytes(newer) + small_dump[16:]: "version 2",
    }
    before = entries(target)
    for data, needle in cases.items():
        with pytest.raises(tiered.StreamError, match=needle):
            target.load(io.BytesIO(data))
    assert isinstance(tiered.StreamError("x"), tiered.CorruptionError)
    assert entries(target) == before


def _rewrite(data: bytes, change) -> bytes:
    """Re-emit a stream with valid checksums after ``change(records)``."""
    reader = stream.StreamReader(io.BytesIO(data))
    reader.header()
    records = [(r.kind, r.payload) for r in reader.records()]
    records = change(records)
    out = io.BytesIO()
    writer = stream.StreamWriter(out)
    writer.header()
    for kind, payload in records:
        writer.record(kind, payload)
    writer.finish()
    return out.getvalue()


def test_well_framed_but_inconsistent_streams_are_refused(small_dump, target):
    before = entries(target)
    drop_checkpoint = _rewrite(small_dump, lambda rs: [r for i, r in enumerate(rs) if i != 1])
    with pytest.raises(tiered.StreamError, match="counts 2 checkpoints"):
        target.load(io.BytesIO(drop_checkpoint))

    def bad_page(rs):
        kind, payload = rs[-1]
        return rs[:-1] + [(kind, payload[: stream.PAGE_HEAD.size] + b"\x01\x00\x00\x07")]

    with pytest.raises(tiered.StreamError, match="malformed"):
        target.load(io.BytesIO(_rewrite(small_dump, bad_page)))

    def foreign_tag(rs):
        kind, payload = rs[-1]
        return rs[:-1] + [(kind, b"G" + payload[1:])]

    with pytest.raises(tiered.CorruptionError):
        target.load(io.BytesIO(_rewrite(small_dump, foreign_tag)))
    # an unknown critical kind is refused, an unknown optional one skipped
    with pytest.raises(tiered.StreamError, match="may not be skipped"):
        target.load(io.BytesIO(_rewrite(small_dump, lambda rs: rs + [(0x40, b"future")])))
    with pytest.raises(tiered.StreamError, match="must follow"):
        target.load(io.BytesIO(_rewrite(small_dump, lambda rs: rs + [rs[1]])))
    assert entries(target) == before
    vol = target.load(io.BytesIO(_rewrite(small_dump, lambda rs: rs[:2] + [(0xC1, b"note")] + rs[2:])))
    assert [c.name for c in vol.checkpoints()] == ["a", "b"]


def test_names_and_arguments(small_dump, target):
    target.load(io.BytesIO(small_dump))
    before = entries(target)
    with pytest.raises(tiered.AlreadyExistsError, match="'v'"):
        target.load(io.BytesIO(small_dump))
    with pytest.raises(tiered.AlreadyExistsError):
        target.load(io.BytesIO(small_dump), name="v")
    for bad in (123, None, io.StringIO("x")):
        with pytest.raises(tiered.InvalidArgumentError):
            target.load(bad)
    with pytest.raises(tiered.InvalidArgumentError):
        target.load(io.BytesIO(small_dump), name="")
    with pytest.raises(tiered.InvalidArgumentError):
        target.load(io.BytesIO(small_dump), name=5)
    with pytest.raises(tiered.InvalidArgumentError):
        target.volume("v").dump(io.StringIO())
    with pytest.raises(tiered.StorageError, match="No such file"):
        target.load(str(Path(target.path) / "missing.dump"))
    assert entries(target) == before
    renamed = target.load(io.BytesIO(small_dump), name="w")
    assert renamed.name == "w" and target.volumes() == ["v", "w"]
    assert answers(renamed) == answers(target.volume("v"))
    assert renamed._id != target.volume("v")._id


def test_dump_to_a_path_is_atomic_and_load_reads_paths(tmp_path, source, target):
    vol = source.create_volume("v", size=1 << 24)
    vol.checkpoint("a")
    vol.mark(0, 1)
    path = tmp_path / "v.dump"
    path.write_bytes(b"older dump")
    assert vol.dump(str(path))["bytes"] == path.stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["dst", "src", "v.dump"]  # no temporary file left
    assert answers(target.load(path)) == answers(vol)
    with pytest.raises(tiered.StorageError, match="dump file"):
        vol.dump(str(tmp_path / "no" / "such" / "dir" / "v.dump"))


def test_load_survives_a_map_growth_retry_from_a_pipe(small_dump, target, monkeypatch):
    # The first commit fails as a full map does: the transaction runs again
    # from the first byte, which a pipe can only give from the spool.
    import lmdb

    calls = []

    def hook() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise lmdb.MapFullError("full")

    monkeypatch.setattr(target._storage, "commit_hook", hook)
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as out:
            out.write(small_dump)

    thread = threading.Thread(target=feed)
    thread.start()
    with os.fdopen(r, "rb") as pipe:
        vol = target.load(pipe, "piped")
    thread.join()
    assert len(calls) >= 2
    assert [c.name for c in vol.checkpoints()] == ["a", "b"]
    calls.clear()
    assert target.load(io.BytesIO(small_dump), "seekable").name == "seekable"


# -- command line ---------------------------------------------------------------


def test_cli_dump_load_backup_compact(tmp_path, capsysbinary, monkeypatch):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    with tiered.open(src, sync=False) as store:
        vol = store.create_volume("vda", size=1 << 30, strategy="hybrid")
        vol.checkpoint("a")
        vol.mark(0, 1 << 20)
        expected = answers(vol)
    dump = str(tmp_path / "vda.dump")
    assert main(["dump", src, "vda", dump]) == 0
    assert b"dumped volume 'vda'" in capsysbinary.readouterr().out
    assert main(["load", dst, dump]) == 0
    assert main(["load", dst, dump]) == 1
    assert b"already has a volume 'vda'" in capsysbinary.readouterr().err
    assert main(["load", dst, dump, "--as", "copy"]) == 0
    assert capsysbinary.readouterr().out == b"loaded volume 'copy' (hybrid, 1 checkpoints)\n"
    assert main(["dump", src, "vda", "-"]) == 0
    data = capsysbinary.readouterr().out  # the stream alone
    # the same stream but for the dump time, which may print shorter
    assert data.startswith(stream.MAGIC) and abs(len(data) - len(Path(dump).read_bytes())) < 8
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["load", dst, "-", "--as", "piped"]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data[:-1])))
    assert main(["load", dst, "-", "--as", "cut"]) == 1
    assert b"truncated" in capsysbinary.readouterr().err
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["dump", src, "vda", "-"]) == 2  # never binary onto a terminal
    assert b"terminal" in capsysbinary.readouterr().err
    monkeypatch.undo()
    assert main(["load", dst]) == 2  # usage
    assert main(["dump", src, "nope", dump]) == 1
    with tiered.open(dst, readonly=True) as store:
        assert store.volumes() == ["copy", "piped", "vda"]
        for name in store.volumes():
            assert answers(store.volume(name)) == expected
    backup = str(tmp_path / "backup")
    assert main(["backup", dst, backup]) == 0
    assert main(["backup", dst, backup]) == 1
    assert b"not empty" in capsysbinary.readouterr().err
    assert main(["compact", backup, "--json"]) == 0
    assert b'"before"' in capsysbinary.readouterr().out
    with tiered.open(backup, readonly=True) as store:
        assert answers(store.volume("piped")) == expected
    assert main(["compact", str(tmp_path / "nothing")]) == 1


# -- backup ---------------------------------------------------------------------


def test_backup_while_a_writer_thread_commits(tmp_path, source):
    rng = np.random.default_rng(9)
    quiet = build(source, "hybrid", rng)
    busy = source.create_volume("busy", size=SIZE, granularity=G, strategy="one-bit")
    expected = answers(quiet)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                busy.checkpoint(f"b{i}")
                busy.mark_many(rng.integers(0, SIZE - G, 50), np.full(50, G))
                if i > 3:
                    busy.remove_checkpoint(f"b{i - 3}")
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        copies = [source.backup(tmp_path / f"copy{i}") for i in range(3)]
    finally:
        stop.set()
        thread.join()
    assert not errors
    for report in copies:
        with tiered.open(report["path"], sync=False) as copy:
            assert copy.volumes() == ["busy", "hybrid"]
            assert answers(copy.volume("hybrid")) == expected
            assert copy.volume("busy").checkpoints()  # some consistent state of it
    with pytest.raises(tiered.InvalidArgumentError, match="not empty"):
        source.backup(tmp_path / "copy0")
    (tmp_path / "file").write_text("x")
    with pytest.raises(tiered.InvalidArgumentError, match="not a directory"):
        source.backup(tmp_path / "file")
    os.makedirs(tmp_path / "empty")
    assert source.backup(tmp_path / "empty")["bytes"] > 0


# -- compaction -----------------------------------------------------------------


def test_compact_gives_back_the_space_of_a_removed_volume(tmp_path):
    path = str(tmp_path / "s")
    rng = np.random.default_rng(4)
    with tiered.open(path, sync=False) as store:
        keep = build(store, "one-bit", rng)
        big = store.create_volume("big", size=SIZE, granularity=G, strategy="one-bit")
        for i in range(6):
            big.checkpoint(f"c{i}")
            offsets = rng.integers(0, SIZE // G - 1, 40_000) * G
            big.mark_many(offsets, np.full(len(offsets), G))
        expected = answers(keep)
        store.remove_volume("big")
        with pytest.raises(tiered.StoreBusyError, match="this process"):
            tiered.compact(path)
    data = Path(path) / "data.mdb"
    size = data.stat().st_size
    report = tiered.compact(path)
    assert report["before"] == size and report["after"] == data.stat().st_size
    assert report["after"] < size // 4, report
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]
    with tiered.open(path, sync=False) as store:
        vol = store.volume("one-bit")
        assert answers(vol) == expected
        vol.checkpoint("after")  # a writer carries on in the compacted file
        vol.mark(0, 1)
    with tiered.open(path, readonly=True) as store:
        assert list(store.volume("one-bit").changed_since("after")) == [(0, G)]


def test_compact_failure_leaves_the_store_intact(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("v", size=1 << 30)
        vol.checkpoint("a")
        vol.mark(0, 1)
    original = (Path(path) / "data.mdb").read_bytes()

    def failing_replace(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(tiered.StorageError, match="unchanged"):
        tiered.compact(path)
    monkeypatch.undo()
    assert (Path(path) / "data.mdb").read_bytes() == original
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]
    with tiered.open(path, readonly=True) as store:
        assert list(store.volume("v").changed_since("a")) == [(0, 64 << 10)]


def test_compact_refuses_a_store_open_in_another_process(tmp_path):
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        store.create_volume("v", size=1 << 20)
    child = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, tiered\n"
            f"s = tiered.open({path!r}, readonly=True)\n"
            "print(s.volumes(), flush=True); sys.stdin.readline()\n"
        )],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "['v']"
        with pytest.raises(tiered.StoreBusyError, match="another process"):
            tiered.compact(path)
    finally:
        child.communicate("\n", timeout=60)
    assert tiered.compact(path)["after"] > 0
    with pytest.raises(tiered.NotAStoreError):
        tiered.compact(str(tmp_path / "missing"))


def test_round_trip_in_the_middle_of_a_hybrid_fold(source, target):
    rng = np.random.default_rng(12)
    vol = source.create_volume("h", size=SIZE, granularity=G, strategy=tiered.Strategy("hybrid", recent=2))
    seen = 0
    for i in range(16):
        vol.checkpoint(f"c{i}")
        offsets = rng.integers(0, SIZE // G - 1, 3000) * G
        vol.mark_many(offsets, np.full(len(offsets), G))
        if vol._history.fold_upto:
            data = dumped(vol)
            record = stream.StreamReader(io.BytesIO(data))
            record.header()
            assert next(record.records()).json()["volume"]["fold_upto"]  # still folding after the flush
            loaded = target.load(io.BytesIO(data), f"copy{i}")
            assert answers(loaded) == answers(vol)
            seen += 1
            if seen == 2:
                break
    assert seen


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_golden_stores_of_every_format_round_trip(tmp_path, version):
    from fixtures.make_store import answers_of
    from test_format import expected_of, golden_copy

    path, expected = golden_copy(tmp_path, version)
    streams = {}
    with tiered.open(path, readonly=True) as store:  # a format-1 reader dumps format-1 values
        for name in store.volumes():
            streams[name] = dumped(store.volume(name))
    with tiered.open(str(tmp_path / "dst"), sync=False) as dst:
        for name, data in streams.items():
            dst.load(io.BytesIO(data))
        for name, entry in expected["volumes"].items():
            assert answers_of(dst, name) == expected_of(entry), name


def test_fields_added_to_the_volume_record_travel_with_it(tmp_path, target):
    from tiered.storage import codec
    from tiered.storage.keys import volume_key

    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("v", size=1 << 24)
        vol.checkpoint("a")
        vol_id = vol._id
    with tiered.open(path, sync=False) as store:  # fields this code does not know
        def edit(txn):
            key = volume_key(vol_id)
            record = codec.unpack_json(txn.get(key, db=store._storage.volumes), key, 2, "v")
            record.update(durability="sync", comment="added later")
            txn.put(key, codec.pack_json(record, key), db=store._storage.volumes)

        store._storage.write(edit)
    with tiered.open(path, sync=False) as store:
        data = dumped(store.volume("v"))
        store_gid = store.volume("v").generation_id
    loaded = target.load(io.BytesIO(data), "w")
    assert loaded._record["durability"] == "sync" and loaded._record["comment"] == "added later"
    assert loaded.generation_id == store_gid
    assert loaded._record["id"] == loaded._id and loaded._record["name"] == "w"


def test_a_remap_during_a_dump_is_a_clear_error(source, target):
    vol = source.create_volume("v", size=1 << 24)
    vol.checkpoint("a")
    vol.mark(0, 1)

    class Growing(io.BytesIO):
        def write(self, data):  # the map grows while the dump streams
            if self.tell() > 100 and not getattr(self, "grown", False):
                self.grown = True
                source._storage._grow_map()
            return super().write(data)

    with pytest.raises(tiered.StorageError, match="run the dump again"):
        vol.dump(Growing())
    assert list(vol.changed_since("a")) == [(0, 64 << 10)]
    assert target.load(io.BytesIO(dumped(vol))).name == "v"


def test_dump_and_load_stream_in_constant_memory(tmp_path, source, target, monkeypatch):
    import tracemalloc

    pages = 12  # per table; 9 tables of about 1.2 MiB each
    vol = source.create_volume("big", size=pages * PAGE_CHUNKS * 512, granularity=512, strategy="one-bit")
    rng = np.random.default_rng(1)
    for i in range(9):
        vol.checkpoint(f"c{i}")
        chunks = rng.integers(0, pages * PAGE_CHUNKS, 1_000_000)
        vol.mark_many(chunks * 512, np.full(len(chunks), 512))
    vol.flush()

    class Sink:  # write() is all a file object needs
        written = 0

        def write(self, data):
            self.written += len(data)

    sink = Sink()
    tracemalloc.start()
    try:
        vol.dump(sink)
        dump_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.written > 9 << 20
    assert dump_peak < 2 << 20, dump_peak
    path = tmp_path / "big.dump"
    vol.dump(path)
    peaks = []
    # the peak of the load transaction itself, just before it commits (opening
    # the loaded volume then loads its active bitmap, as any open does)
    monkeypatch.setattr(target._storage, "commit_hook", lambda: peaks.append(tracemalloc.get_traced_memory()[1]))
    tracemalloc.start()
    try:
        loaded = target.load(path)
    finally:
        tracemalloc.stop()
    assert peaks[0] < 3 << 20, peaks
    assert list(loaded.changed_since("c7")) == list(vol.changed_since("c7"))


@pytest.mark.parametrize("mode", ["one-bit", "multi-bit", "hybrid"])
def test_a_crashed_sync_volume_dumps_its_journal(tmp_path, target, mode):
    """A reader of a sync-mode volume whose writer crashed holds its synced
    marks only in the journal: the dump carries the entries, and the copy
    replays them exactly as the original does."""
    path = str(tmp_path / "crashed")
    pid = os.fork()
    if pid == 0:  # the writer: syncs, then dies without closing
        try:
            store = tiered.open(path)
            vol = store.create_volume("v", size=1 << 30, granularity=G, strategy=mode, durability="sync")
            vol.checkpoint("a")
            vol.sync(vol.mark(0, 10))
            vol.checkpoint("b")
            vol.sync(vol.mark(7 * G, 10))
            vol.sync(vol.mark_many(np.array([9 * G, 300 * G]), np.array([1, 5 * G])))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    with tiered.open(path, readonly=True) as store:
        vol = store.volume("v")
        assert vol.stats()["journal_entries"] >= 2  # the checkpoint folded the first one, or not (multi-bit)
        data = dumped(vol)
        want = {c: vol.changed_since(c) for c in "ab"}
    loaded = target.load(io.BytesIO(data))
    for c, ref in want.items():
        got = loaded.changed_since(c)
        assert got == ref and got.exact and ref.exact
    assert loaded.unclean_shutdown and loaded.stats()["journal_entries"] == 0  # replayed and folded
    assert list(want["b"]) == [(7 * G, G), (9 * G, G), (300 * G, 5 * G)]
