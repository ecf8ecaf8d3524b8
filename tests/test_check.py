"""`tiered check` and `Store.check`: damage of every kind of stored value
is found and named (volume, table, checkpoint), queries over it refuse
rather than answer wrongly, and a repair contains it: every answer after
the repair still holds every chunk written (checked against a reference
model), flagged exact=False wherever it touches a lost period, exact
elsewhere, with a new generation id.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest

import tiered
from tiered.cli import main
from tiered.storage import keys
from tiered.storage.journal import journal_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64 << 20
GRAN = 512
N_CHUNKS = SIZE // GRAN
PERIODS = 6  # checkpoints c1..c6; period 6 is the active one
STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit": tiered.Strategy("multi-bit", width=8),
    # recent=1: the oldest writesets fold into the generation array
    "hybrid": tiered.Strategy("hybrid", recent=1),
}


# -- the store and its reference model ----------------------------------


def build(path: str, mode: str, seed: int = 1, size: int = SIZE, strategy=None, periods: int = PERIODS) -> dict[int, np.ndarray]:
    """Volume "a" (``mode``) and a clean one-bit volume "b": checkpoints
    c1..c6, random writes in every period.  The model: chunks written in
    each period (by generation)."""
    rng = random.Random(seed)
    model: dict[int, np.ndarray] = {}
    n_chunks = size // GRAN
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("a", size, GRAN, strategy or STRATEGIES[mode])
        other = store.create_volume("b", size, GRAN, "one-bit")
        for g in range(1, periods + 1):
            vol.checkpoint(f"c{g}")
            other.checkpoint(f"c{g}")
            written = np.zeros(n_chunks, bool)
            for _ in range(20):
                chunk = rng.randrange(n_chunks - 8)
                n = rng.randrange(1, 8)
                vol.mark(chunk * GRAN, n * GRAN)
                other.mark(chunk * GRAN, n * GRAN)
                written[chunk : chunk + n] = True
            model[g] = written
    return model


def chunks_of(extents, n_chunks: int = N_CHUNKS) -> np.ndarray:
    out = np.zeros(n_chunks, bool)
    for offset, length in extents:
        out[offset // GRAN : -(-(offset + length) // GRAN)] = True
    return out


def truth(model, since: int, until: int | None = None) -> np.ndarray:
    out = np.zeros(len(model[1]), bool)
    for g, written in model.items():
        if g >= since and (until is None or g < until):
            out |= written
    return out


def check_answers(store, name: str, model, lost: set[str] = frozenset()) -> None:
    """Every answer of the volume holds every chunk written, is exact when it
    says so, and is flagged exactly for the checkpoints in ``lost``."""
    vol = store.volume(name)
    ckpts = vol.checkpoints()
    for i, c in enumerate(ckpts):
        got = vol.changed_since(c.name)
        want = truth(model, int(c.name[1:]))
        assert not (want & ~chunks_of(got, len(want))).any(), f"{name}: since {c.name} misses a chunk"
        if got.exact:
            assert (chunks_of(got, len(want)) == want).all(), f"{name}: since {c.name} is exact and wrong"
        assert got.exact == (c.name not in lost), f"{name}: since {c.name} exact={got.exact}"
        assert got.generation_id == vol.generation_id
        for d in ckpts[i + 1 :]:
            got = vol.changed_between(c.name, d.name)
            want = truth(model, int(c.name[1:]), int(d.name[1:]))
            assert not (want & ~chunks_of(got, len(want))).any(), f"{name}: {c.name}..{d.name} misses a chunk"
            if got.exact:
                assert (chunks_of(got, len(want)) == want).all(), f"{name}: {c.name}..{d.name} is exact and wrong"
            if c.name in lost:
                assert not got.exact


def queries_never_lie(path: str, name: str, model) -> int:
    """Before a repair: every query raises a TieredError or answers right.
    Returns how many raised."""
    refused = 0
    try:
        store = tiered.open(path, readonly=True)
    except tiered.TieredError:
        return 1
    with store:
        try:
            vol = store.volume(name)
        except tiered.TieredError:
            return 1
        for c in vol.checkpoints():
            try:
                got = vol.changed_since(c.name)
            except tiered.TieredError:
                refused += 1
                continue
            want = truth(model, int(c.name[1:]))
            assert not (want & ~chunks_of(got, len(want))).any()
            if got.exact:
                assert (chunks_of(got, len(want)) == want).all()
    return refused


# -- raw edits ------------------------------------------------------------


def raw(path: str, edit) -> None:
    env = lmdb.open(path, max_dbs=5)
    try:
        dbs = {n: env.open_db(n.encode()) for n in ("meta", "volumes", "checkpoints", "pages", "journal")}
        with env.begin(write=True) as txn:
            edit(txn, dbs)
    finally:
        env.close()


def flip(db: str, key: bytes, at: int = -1):
    def edit(txn, dbs):
        value = bytearray(txn.get(key, db=dbs[db]))
        value[at] ^= 0x40
        txn.put(key, bytes(value), db=dbs[db])

    return edit


def stored_record(path: str, vol_id: int = 1) -> dict:
    got = {}

    def read(txn, dbs):
        got.update(json.loads(bytes(txn.get(keys.volume_key(vol_id), db=dbs["volumes"]))[10:]))

    raw(path, read)
    return got


def page_keys(path: str, tag: bytes, vol_id: int = 1) -> list[bytes]:
    found = []

    def read(txn, dbs):
        found.extend(bytes(k) for k, _ in txn.cursor(dbs["pages"]) if k[:8] == keys.volume_key(vol_id) and k[8:9] == tag)

    raw(path, read)
    return found


def cli(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def repair_and_verify(path: str, model, lost: set[str], checkpoints: list[str] | None = None) -> tiered.CheckReport:
    """Repair through the CLI (exit 0), then: the store checks clean, the
    damaged volume has a new generation id and answers as the model says,
    the other volume is untouched and exact."""
    before = stored_record(path)
    before_b = stored_record(path, 2)
    code, text = cli("check", path, "--repair")
    assert code == 0, text
    assert "after the repair: clean" in text
    report = tiered.check(path)
    assert report.clean, report.render()
    assert cli("check", path)[0] == 0
    after = stored_record(path)
    assert after["generation_id"] != before.get("generation_id")
    assert stored_record(path, 2) == before_b  # the clean volume is untouched
    with tiered.open(path) as store:
        assert store.check().clean
        vol = store.volume("a")
        assert vol.generation_id == after["generation_id"]
        if checkpoints is not None:
            assert [c.name for c in vol.checkpoints()] == checkpoints
        check_answers(store, "a", model, lost)
        check_answers(store, "b", model)
        # ... and the volume keeps tracking exactly from here on.
        new = f"c{len(model) + 1}"
        vol.checkpoint(new)
        vol.mark(3 * GRAN, GRAN)
        got = vol.changed_since(new)
        assert list(got) == [(3 * GRAN, GRAN)] and got.exact
    with tiered.open(path, readonly=True) as store:
        assert list(store.volume("a").changed_since(new)) == [(3 * GRAN, GRAN)]
    assert tiered.check(path).clean
    return report


# -- a clean store --------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(STRATEGIES))
def test_a_clean_store_checks_clean(tmp_path, mode):
    path = str(tmp_path / "s")
    model = build(path, mode)
    report = tiered.check(path)
    assert report.clean and not report.problems
    assert [v.name for v in report.volumes] == ["a", "b"] and report.volumes[0].mode == mode
    assert cli("check", path) == (0, report.render())
    code, text = cli("check", path, "a", "--json")
    assert code == 0 and json.loads(text)["clean"] and [v["name"] for v in json.loads(text)["volumes"]] == ["a"]
    gid = stored_record(path)["generation_id"]
    # A repair of a clean store changes nothing.
    assert cli("check", path, "--repair")[0] == 0
    assert stored_record(path)["generation_id"] == gid
    with tiered.open(path) as store:
        assert store.check().clean and store.check("a").clean
        check_answers(store, "a", model)


# -- damaged pages ---------------------------------------------------------


@pytest.mark.parametrize("mode,g", [("one-bit", 2), ("hybrid", PERIODS - 1)])
def test_a_damaged_writeset_loses_its_period_only(tmp_path, mode, g):
    """(Hybrid with recent=1 has folded every older writeset.)"""
    path = str(tmp_path / "s")
    model = build(path, mode)
    assert keys.page_key(1, b"W", g, 0) in page_keys(path, b"W")
    raw(path, flip("pages", keys.page_key(1, b"W", g, 0)))
    report = tiered.check(path)
    assert not report.clean and report.volume("b").clean
    (problem,) = report.volume("a").problems
    assert (problem.table, problem.tag, problem.generation, problem.checkpoint, problem.page) == ("pages", "W", g, f"c{g}", 0)
    assert "checksum" in problem.what
    assert report.volume("a").lost_checkpoints == [f"c{i}" for i in range(1, g + 1)]
    code, text = cli("check", path)
    assert code == 1 and "volume 'a'" in text and f"checkpoint 'c{g}'" in text and f"W/{g}/0" in text
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost={f"c{i}" for i in range(1, g + 1)})


@pytest.mark.parametrize("mode", ["one-bit", "hybrid"])
def test_a_damaged_active_snapshot_loses_everything(tmp_path, mode):
    path = str(tmp_path / "s")
    model = build(path, mode)
    raw(path, flip("pages", keys.page_key(1, b"A", 0, 0)))
    (problem,) = tiered.check(path).volume("a").problems
    assert (problem.tag, problem.generation) == ("A", 0)
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost={f"c{i}" for i in range(1, PERIODS + 1)})


def test_a_damaged_multi_bit_array_page_loses_everything(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, "multi-bit")
    raw(path, flip("pages", keys.page_key(1, b"G", 0, 0), at=12))
    (problem,) = tiered.check(path).volume("a").problems
    assert (problem.tag, problem.page) == ("G", 0)
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost={f"c{i}" for i in range(1, PERIODS + 1)})


def test_a_damaged_hybrid_array_loses_the_folded_periods(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, "hybrid")
    folded = stored_record(path)["folded_through"]
    assert 1 <= folded < PERIODS - 1
    raw(path, flip("pages", keys.page_key(1, b"G", 0, 0)))
    (problem,) = tiered.check(path).volume("a").problems
    assert problem.tag == "G"
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost={f"c{i}" for i in range(1, folded + 1)})


@pytest.mark.parametrize("victim", [(b"G", 0, 0), (b"W", 5, 0), (b"W", 5, 1)], ids=["G-page-0", "W5-folded-page", "W5-page-to-fold"])
def test_damage_mid_fold(tmp_path, victim):
    """A fold spread over checkpoints (a volume of two pages) has rewritten
    page 0 of the array, not page 1, with the writesets of periods <= 6.
    A damaged array page drops the array and restarts the fold, losing
    the periods folded before (<= 3); a damaged writeset being folded loses
    its period.  Folds then finish and answers stay right."""
    path = str(tmp_path / "s")
    model = build(path, "hybrid", size=4 << 30, strategy=tiered.Strategy("hybrid", recent=2), periods=9)
    record = stored_record(path)
    assert (record["folded_through"], record["fold_upto"], record["fold_next"]) == (3, 6, 1), record
    raw(path, flip("pages", keys.page_key(1, *victim)))
    report = tiered.check(path)
    if victim[0] == b"G":
        assert any("restart the fold" in a for a in report.volume("a").actions)
        lost = {f"c{i}" for i in range(1, 4)}
    else:
        lost = {f"c{i}" for i in range(1, 6)}
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost=lost)
    with tiered.open(path) as store:
        vol = store.volume("a")
        for g in range(11, 15):
            vol.checkpoint(f"c{g}")
        check_answers(store, "a", {**model, 10: chunks_of([(3 * GRAN, GRAN)], len(model[1]))}, lost=lost)


@pytest.mark.parametrize("mode", sorted(STRATEGIES))
def test_a_deleted_page_key_loses_everything(tmp_path, mode):
    """A lost key fails no checksum: the digest of the page keys finds it,
    and nobody can tell which period it held."""
    path = str(tmp_path / "s")
    model = build(path, mode)
    victim = page_keys(path, b"G" if mode == "multi-bit" else b"W")[0]
    raw(path, lambda txn, dbs: txn.delete(victim, db=dbs["pages"]))
    problems = tiered.check(path).volume("a").problems
    assert any("page key" in p.what for p in problems)
    assert queries_never_lie(path, "a", model) >= 1
    repair_and_verify(path, model, lost={f"c{i}" for i in range(1, PERIODS + 1)})


@pytest.mark.parametrize("history", ["all-checkpoints", "some-removed", "converted"])
@pytest.mark.parametrize("mode", sorted(STRATEGIES))
def test_any_damaged_value_of_a_volume_is_contained(tmp_path, mode, history):
    """Each stored value of the volume in turn (every page and checkpoint,
    the record aside), after removals merged some periods or not: after a
    repair every answer holds every chunk written and is exact unless
    flagged, and lost checkpoints are flagged."""
    import shutil

    base = str(tmp_path / "base")
    removed = (2, 5) if history == "some-removed" else ()
    if history == "converted":
        # From a strategy that knew less: one-bit bands, hybrid's adopted array.
        model = build(base, "hybrid" if mode == "multi-bit" else "multi-bit", seed=7)
    else:
        model = build(base, mode, seed=7)
    with tiered.open(base) as store:
        if history == "converted":
            store.volume("a").convert(STRATEGIES[mode])
        for g in removed:
            store.volume("a").remove_checkpoint(f"c{g}")
    victims = [("pages", k) for k in page_keys(base, b"W") + page_keys(base, b"A") + page_keys(base, b"G")]
    victims += [("checkpoints", keys.checkpoint_key(1, g)) for g in range(1, PERIODS + 1) if g not in removed]
    for i, (db, key) in enumerate(victims):
        path = str(tmp_path / f"s{i}")
        shutil.copytree(base, path)
        raw(path, flip(db, key))
        report = tiered.check(path)
        assert not report.clean and report.volume("b").clean
        queries_never_lie(path, "a", model)
        fixed = tiered.check(path, repair=True)
        assert fixed.after.clean, fixed.render()
        vol = fixed.volume("a")
        with tiered.open(path) as store:
            # A removed checkpoint's writes still count for the older ones.
            check_answers(store, "a", model, lost=set(vol.lost_checkpoints))


# -- damaged records ---------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(STRATEGIES))
@pytest.mark.parametrize("g", [1, 3, PERIODS])
def test_a_damaged_checkpoint_is_removed_and_the_others_stay_exact(tmp_path, mode, g):
    path = str(tmp_path / "s")
    model = build(path, mode)
    raw(path, flip("checkpoints", keys.checkpoint_key(1, g)))
    report = tiered.check(path)
    (problem,) = report.volume("a").problems
    assert (problem.table, problem.generation) == ("checkpoints", g)
    assert report.volume("a").removed_checkpoints == [f"<generation {g}>"]
    assert queries_never_lie(path, "a", model) == 1  # the volume refuses to open
    names = [f"c{i}" for i in range(1, PERIODS + 1) if i != g]
    repair_and_verify(path, model, lost=set(), checkpoints=names)


def test_two_checkpoints_of_one_name_are_both_removed(tmp_path):
    """A buggy writer's record, with a valid checksum: neither checkpoint
    can be told from the other."""
    from tiered.storage import codec

    path = str(tmp_path / "s")
    model = build(path, "one-bit")
    key = keys.checkpoint_key(1, 4)
    raw(path, lambda txn, dbs: txn.put(key, codec.pack_json({"name": "c2", "created": 1.0}, key), db=dbs["checkpoints"]))
    report = tiered.check(path)
    assert [p.generation for p in report.volume("a").problems] == [2, 4]
    assert report.volume("a").removed_checkpoints == ["<generation 2>", "<generation 4>"]
    repair_and_verify(path, model, lost=set(), checkpoints=["c1", "c3", "c5", "c6"])


def test_a_damaged_volume_record_is_reported_and_removed_only_when_asked(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, "one-bit")
    raw(path, flip("volumes", keys.volume_key(1)))
    with pytest.raises(tiered.CorruptionError):
        tiered.open(path, readonly=True)
    report = tiered.check(path)
    damaged = next(v for v in report.volumes if v.id == 1)
    assert damaged.unreadable and damaged.problems[0].table == "volumes"
    assert report.volume("b").clean
    code, text = cli("check", path, "--repair")
    assert code == 1 and "unreadable" in text
    with pytest.raises(tiered.CorruptionError):
        tiered.open(path, readonly=True)
    code, text = cli("check", path, "--repair", "--remove-unreadable", "--json")
    assert code == 0 and json.loads(text)["after"]["clean"]
    with tiered.open(path) as store:
        assert store.volumes() == ["b"]
        check_answers(store, "b", model)
        store.create_volume("c", SIZE, GRAN)  # the volume counter still works
    assert tiered.check(path).clean


# -- the journal ---------------------------------------------------------


def test_a_damaged_journal_entry_loses_everything(tmp_path):
    path = str(tmp_path / "s")
    build(path, "one-bit")
    # A sync-mode volume "j" whose writer dies with journaled marks.
    script = textwrap.dedent(
        f"""
        import os, tiered
        store = tiered.open({path!r})
        vol = store.create_volume("j", {SIZE}, {GRAN}, "hybrid", durability="sync")
        vol.checkpoint("c1")
        vol.mark(0, {GRAN})
        vol.checkpoint("c2")
        vol.sync(vol.mark(10 * {GRAN}, {GRAN}))
        vol.sync(vol.mark(20 * {GRAN}, {GRAN}))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    record = stored_record(path, 3)
    assert record["journal_count"] == 2
    assert tiered.check(path).clean
    raw(path, flip("journal", journal_key(3, record["journal_last"])))
    report = tiered.check(path)
    (problem,) = report.volume("j").problems
    assert problem.table == "journal" and problem.entry == record["journal_last"]
    with pytest.raises(tiered.TieredError):
        with tiered.open(path, readonly=True) as store:
            store.volume("j")
    assert cli("check", path)[0] == 1
    assert cli("check", path, "j", "--repair")[0] == 0
    assert tiered.check(path).clean
    with tiered.open(path) as store:
        vol = store.volume("j")
        assert vol.generation_id != record["generation_id"]
        for name in ("c1", "c2"):
            got = vol.changed_since(name)
            assert list(got) == [(0, SIZE)] and not got.exact


# -- keys of no volume, and the API -------------------------------------------


def test_orphan_keys_are_found_and_deleted(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, "multi-bit")

    def add(txn, dbs):
        value = txn.get(keys.page_key(1, b"G", 0, 0), db=dbs["pages"])
        txn.put(keys.page_key(7, b"G", 0, 0), value, db=dbs["pages"])
        txn.put(keys.checkpoint_key(8, 1), b"junk", db=dbs["checkpoints"])
        txn.put(b"\x00\x01", b"junk", db=dbs["pages"])

    raw(path, add)
    report = tiered.check(path)
    assert all(v.clean for v in report.volumes)
    assert {p.table for p in report.store_problems} >= {"pages", "checkpoints", "meta"}
    assert any("volume id 7" in p.what for p in report.store_problems)
    assert cli("check", path)[0] == 1
    with pytest.raises(tiered.CorruptionError, match="record was lost"):
        tiered.open(path)  # keys of a volume without a record: refused, not ignored
    fixed = tiered.check(path, repair=True)
    assert fixed.repaired and fixed.after.clean and tiered.check(path).clean
    with tiered.open(path) as store:
        check_answers(store, "a", model)
        assert store.volume("a").generation_id == report.volume("a").generation_id  # untouched


def test_a_failed_repair_changes_nothing(tmp_path, monkeypatch):
    from tiered.storage.environment import Storage

    path = str(tmp_path / "s")
    build(path, "hybrid")
    raw(path, flip("pages", keys.page_key(1, b"A", 0, 0)))
    raw(path, flip("checkpoints", keys.checkpoint_key(2, 3)))

    def everything():
        out = {}

        def read(txn, dbs):
            for name, db in dbs.items():
                out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db)]

        raw(path, read)
        return out

    before = everything()

    def full() -> None:
        raise tiered.StoreFullError("the disk is full")

    monkeypatch.setattr(Storage, "commit_hook", staticmethod(full))
    with pytest.raises(tiered.StoreFullError):
        tiered.check(path, repair=True)
    monkeypatch.undo()
    assert everything() == before
    assert len(tiered.check(path).problems) == 2


def test_store_check_api(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, "one-bit")
    raw(path, flip("pages", keys.page_key(1, b"W", 2, 0)))
    with tiered.open(path, readonly=True) as store:
        report = store.check()
        assert not report.clean and report.volume("a").problems[0].checkpoint == "c2"
        assert store.check("b").clean
        with pytest.raises(tiered.ReadOnlyError):
            store.check(repair=True)
        with pytest.raises(tiered.VolumeNotFoundError):
            store.check("nope")
    with pytest.raises(tiered.InvalidArgumentError):
        tiered.check(path, remove_unreadable=True)
    with tiered.open(path) as store:
        store.volume("b")
        with pytest.raises(tiered.InvalidArgumentError, match="close"):
            store.check(repair=True)
        store.volume("b").close()
        report = store.check(repair=True)
        assert report.after.clean and report.volume("a").lost_checkpoints == ["c1", "c2"]
        check_answers(store, "a", model, lost={"c1", "c2"})
    doc = json.loads(cli("check", path, "--json")[1])
    assert doc["clean"] and doc["volumes"][0]["name"] == "a"
    assert cli("check", path, "--remove-unreadable")[0] == 2
    assert cli("check", str(tmp_path / "missing"))[0] == 1
