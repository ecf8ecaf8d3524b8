"""The stored format: golden stores of every format version read identically,
and damaged or crafted values are refused, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from fixtures.make_store import PAGE_BYTES, answers_of, extents_digest
from test_decoders import run_isolated

import tiered
from tiered.storage import codec, keys

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def golden_copy(tmp_path, version: str) -> tuple[str, dict]:
    """A private copy of a golden store (opening it as writer may rewrite
    it), and the answers its writer recorded."""
    src = os.path.join(FIXTURES, version)
    dst = tmp_path / version
    dst.mkdir()
    shutil.copyfile(os.path.join(src, "data.mdb"), dst / "data.mdb")
    with open(os.path.join(src, "answers.json")) as f:
        return str(dst), json.load(f)


def expected_of(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "record"}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("readonly", [True, False])
def test_golden_store_answers_as_recorded(tmp_path, version, readonly):
    path, expected = golden_copy(tmp_path, version)
    assert set(expected["volumes"]) == {"one", "multi8", "hybrid", "crashed"}
    with tiered.open(path, readonly=readonly) as store:
        assert store.volumes() == sorted(expected["volumes"])
        for name, entry in expected["volumes"].items():
            assert answers_of(store, name) == expected_of(entry), name
    # Whatever a writer rewrote on open or close reads the same afterwards.
    with tiered.open(path, readonly=True) as store:
        for name, entry in expected["volumes"].items():
            assert answers_of(store, name) == expected_of(entry), name


def test_golden_stores_of_every_format_hold_the_same_history():
    """Both stores were written by the same script, so the same writes: every
    format must have given the same answers."""
    answers = []
    for version in ("v1", "v2"):
        with open(os.path.join(FIXTURES, version, "answers.json")) as f:
            answers.append({n: expected_of(e) for n, e in json.load(f)["volumes"].items()})
    assert answers[0] == answers[1]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_golden_store_keeps_tracking(tmp_path, version):
    """A writer carries on with an old store: new marks, checkpoints and
    removals answer as on a new store."""
    path, expected = golden_copy(tmp_path, version)
    with tiered.open(path) as store:
        for name in ("one", "multi8", "hybrid"):
            vol = store.volume(name)
            last = vol.checkpoints()[-1].name
            vol.checkpoint("new")
            vol.mark(PAGE_BYTES + 3 * 512, 512)
            got = vol.changed_since("new")
            assert list(got) == [(PAGE_BYTES + 3 * 512, 512)] and got.exact
            before = extents_digest(vol.changed_since(last))
            vol.remove_checkpoint("new")
            assert extents_digest(vol.changed_since(last)) == before
    with tiered.open(path, readonly=True) as store:
        for name in ("one", "multi8", "hybrid"):
            vol = store.volume(name)
            first = vol.checkpoints()[0].name
            got = vol.changed_since(first, PAGE_BYTES + 3 * 512, 512)
            assert list(got) == [(PAGE_BYTES + 3 * 512, 512)]


# -- damaged and crafted stores ------------------------------------------

MiB = 1 << 20


def make_store(path: str, mode: str = "one-bit") -> None:
    """Two volumes; in ``a`` chunk 0 is written in period 1 only (sealed as
    W/1 in one-bit), chunk 5 in period 2."""
    with tiered.open(path, sync=False) as store:
        for name in ("a", "b"):
            vol = store.create_volume(name, 64 * MiB, 512, mode)
            vol.checkpoint("c1")
            vol.mark(0, 512)
            vol.checkpoint("c2")
            vol.mark(5 * 512, 512)


def raw_edit(path: str, edit) -> None:
    """Change stored bytes under the store's back: ``edit(txn, dbs)``."""
    import lmdb

    env = lmdb.open(path, max_dbs=4)
    try:
        dbs = {name: env.open_db(name.encode()) for name in ("meta", "volumes", "checkpoints", "pages")}
        with env.begin(write=True) as txn:
            edit(txn, dbs)
    finally:
        env.close()


def rename(db: str, old: bytes, new: bytes):
    def edit(txn, dbs):
        value = txn.get(old, db=dbs[db])
        assert value is not None
        txn.delete(old, db=dbs[db])
        txn.put(new, value, db=dbs[db])

    return edit


def answers_or_refuses(path: str, name: str = "a", since: str = "c1"):
    """changed_since on a reopened store: the extents, or the CorruptionError."""
    try:
        with tiered.open(path, readonly=True) as store:
            return store.volume(name).changed_since(since)
    except tiered.CorruptionError as exc:
        return exc


def answers_or_refuses_isolated(path: str, name: str = "a", since: str = "c1") -> str:
    """As answers_or_refuses, in a child process (a crafted key once crashed
    the decoders): "refused: <message>" or "answered: <extents>"."""
    out = run_isolated(
        f"""
        from test_format import answers_or_refuses
        import tiered
        got = answers_or_refuses({path!r}, {name!r}, {since!r})
        print(("refused: " if isinstance(got, tiered.CorruptionError) else "answered: ") + str(got))
        """
    )
    return out.strip()


def pk(vol: int, tag: bytes, gen: int, page: int) -> bytes:
    return keys.page_key(vol, tag, gen, page)


@pytest.mark.parametrize(
    "mode,old,new",
    [
        ("one-bit", pk(1, b"W", 1, 0), pk(1, b"W", 0, 0)),  # generation 1 -> 0: one bit
        ("one-bit", pk(1, b"W", 1, 0), pk(1, b"W", 3, 0)),  # generation 1 -> 3: one bit
        ("one-bit", pk(1, b"W", 1, 0), pk(3, b"W", 1, 0)),  # out of the volume
        ("one-bit", pk(2, b"W", 1, 0), pk(1, b"W", 1, 0)),  # into the volume (its own W/1 removed first)
        ("one-bit", pk(1, b"A", 0, 0), pk(1, b"A", 0, 1)),  # page 0 -> 1 (beyond this volume)
        ("one-bit", pk(1, b"W", 1, 0), pk(1, b"W", 1, 2 ** 63)),  # page near 2**63
        ("multi-bit", pk(1, b"G", 0, 0), pk(1, b"G", 2, 0)),  # generation array under a period
        ("multi-bit", pk(1, b"G", 0, 0), pk(1, b"W", 0, 0)),  # tag G -> W
        ("hybrid", pk(1, b"W", 1, 0), pk(1, b"W", 0, 0)),
    ],
    ids=["gen-to-0", "gen-to-3", "out-of-volume", "into-volume", "page-beyond", "page-2**63",
         "multi-gen", "multi-tag", "hybrid-gen-to-0"],
)
def test_a_changed_page_key_is_refused_not_missed(tmp_path, mode, old, new):
    """Renaming W/1/0 to W/0/0 used to make changed_since("c1") miss chunk 0
    with exact=True.  Any changed page key is a CorruptionError now."""
    path = str(tmp_path / "s")
    make_store(path, mode)
    if old[:8] != new[:8] and new[:8] == keys.volume_key(1):
        raw_edit(path, lambda txn, dbs: txn.delete(new, db=dbs["pages"]))
    raw_edit(path, rename("pages", old, new))
    got = answers_or_refuses_isolated(path)
    assert got.startswith("refused: "), got
    assert "volume 'a'" in got or "volume 1" in got


@pytest.mark.parametrize(
    "new",
    [keys.checkpoint_key(1, 0), keys.checkpoint_key(1, 3), keys.checkpoint_key(1, 1 << 40), keys.checkpoint_key(9, 2), keys.checkpoint_key(2, 3)],
    ids=["gen-0", "gen-above", "gen-huge", "other-volume", "existing-volume"],
)
def test_a_changed_checkpoint_key_is_refused_not_vanished(tmp_path, new):
    path = str(tmp_path / "s")
    make_store(path)
    raw_edit(path, rename("checkpoints", keys.checkpoint_key(1, 2), new))
    got = answers_or_refuses_isolated(path, since="c2")
    assert got.startswith("refused: "), got
    assert "volume 'a'" in got or "volume 1" in got


@pytest.mark.parametrize("db,key", [("volumes", keys.volume_key(1)), ("checkpoints", keys.checkpoint_key(1, 1)), ("pages", pk(1, b"W", 1, 0)), ("meta", b"format")])
@pytest.mark.parametrize("byte", [2, 3, 4, 5, 6, 12])
def test_a_changed_header_or_payload_byte_is_refused(tmp_path, db, key, byte):
    """Version, kind, flags, the reserved byte, the CRC and the payload."""
    path = str(tmp_path / "s")
    make_store(path)

    def edit(txn, dbs):
        value = bytearray(txn.get(key, db=dbs[db]))
        value[byte] ^= 1 if byte != 2 else 3  # version 2 -> 1, the weaker check
        txn.put(key, bytes(value), db=dbs[db])

    raw_edit(path, edit)
    assert isinstance(answers_or_refuses(path), tiered.CorruptionError)


def test_a_value_moved_to_another_key_is_refused(tmp_path):
    """A volume record copied over another volume's: its checksum covers its key."""
    path = str(tmp_path / "s")
    make_store(path)

    def edit(txn, dbs):
        txn.put(keys.volume_key(2), txn.get(keys.volume_key(1), db=dbs["volumes"]), db=dbs["volumes"])

    raw_edit(path, edit)
    with pytest.raises(tiered.CorruptionError, match="wrong key"):
        tiered.open(path, readonly=True)


def forge(path: str, change) -> None:
    """Rewrite the store as a buggy writer could: ``change(txn, dbs, put)``
    edits values, ``put(db, key, kind, payload)`` stores them with valid
    format-2 checksums, and volume 1's record is then made to count and
    digest exactly the keys it has, so that only the cross-checks can
    tell the store is wrong."""
    import json as _json

    def edit(txn, dbs):
        def put(db, key, kind, payload):
            txn.put(key, codec.wrap(kind, payload, key), db=dbs[db])

        change(txn, dbs, put)
        vk = keys.volume_key(1)
        record = _json.loads(bytes(txn.get(vk, db=dbs["volumes"])[codec.HEADER.size :]))
        ckpts = [k for k, _ in txn.cursor(dbs["checkpoints"]) if k[:8] == vk]
        digest = 0
        for k, _ in txn.cursor(dbs["pages"]):
            if k[:8] == vk:
                digest ^= keys.key_digest(k)
        record.update(checkpoints=len(ckpts), pages_digest=digest)
        put("volumes", vk, codec.KIND_JSON, _json.dumps(record).encode())

    raw_edit(path, edit)


def _json_payload(txn, db, key):
    return json.loads(bytes(txn.get(key, db=db)[codec.HEADER.size :]))


def _move_page(old: bytes, new: bytes):
    def change(txn, dbs, put):
        value = txn.get(old, db=dbs["pages"])
        txn.delete(old, db=dbs["pages"])
        put("pages", new, value[3], bytes(value[codec.HEADER.size :]))

    return change


def _edit_record(**fields):
    def change(txn, dbs, put):
        key = keys.volume_key(1)
        record = {**_json_payload(txn, dbs["volumes"], key), **fields}
        put("volumes", key, codec.KIND_JSON, json.dumps(record).encode())

    return change


def _add_checkpoint(gen: int, name: str):
    def change(txn, dbs, put):
        put("checkpoints", keys.checkpoint_key(1, gen), codec.KIND_JSON, json.dumps({"name": name, "created": 1.0}).encode())

    return change


FORGED = {
    "writeset of period 0": (_move_page(pk(1, b"W", 1, 0), pk(1, b"W", 0, 0)), "no live checkpoint covers"),
    "writeset of the current period": (_move_page(pk(1, b"W", 1, 0), pk(1, b"W", 2, 0)), "no live checkpoint covers"),
    "table the strategy does not use": (_move_page(pk(1, b"W", 1, 0), pk(1, b"G", 0, 0)), "does not use"),
    "unknown tag": (_move_page(pk(1, b"W", 1, 0), pk(1, b"X", 1, 0)), "does not use"),
    "snapshot under a generation": (_move_page(pk(1, b"A", 0, 0), pk(1, b"A", 5, 0)), "not 0"),
    "page beyond the volume": (_move_page(pk(1, b"W", 1, 0), pk(1, b"W", 1, 1)), "beyond the volume"),
    "checkpoint above the generation": (_add_checkpoint(3, "c3"), "outside [1"),
    "lost generation above the generation": (_edit_record(lost_generation=7), "lost_generation"),
    "superset generation above the generation": (_edit_record(superset_generation=7), "superset_generation"),
    "invalid width": (_edit_record(strategy={"mode": "multi-bit", "width": 12}), "strategy"),
    "unknown strategy": (_edit_record(strategy={"mode": "two-bit"}), "strategy"),
    "size not an integer": (_edit_record(size="big"), "size"),
    "format-1 flag name": (_edit_record(dirty=False), "unflushed flag"),
    "record of another id": (_edit_record(id=2), "id 2"),
    "folded past the generation": (_edit_record(folded_through=9), "folded_through"),
}


def _duplicate_name(txn, dbs, put):
    put("checkpoints", keys.checkpoint_key(1, 2), codec.KIND_JSON, json.dumps({"name": "c1", "created": 1.0}).encode())


FORGED["two checkpoints of one name"] = (_duplicate_name, "two checkpoints")


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_store_fails_the_cross_checks(tmp_path, case):
    """Values with valid checksums that contradict each other (what a buggy
    writer could leave) are refused when the volume opens, naming it."""
    change, message = FORGED[case]
    path = str(tmp_path / "s")
    make_store(path)
    forge(path, change)
    if case == "page beyond the volume":  # once an out-of-bounds write
        got = answers_or_refuses_isolated(path)
    else:
        result = answers_or_refuses(path)
        got = ("refused: " if isinstance(result, tiered.CorruptionError) else "answered: ") + str(result)
    assert got.startswith("refused: "), got
    assert message in got and ("volume 'a'" in got or "volume 1" in got or "id 1" in got), got


def test_forged_volume_counter_is_refused(tmp_path):
    path = str(tmp_path / "s")
    make_store(path)
    forge(path, lambda txn, dbs, put: put("meta", b"next_volume", codec.KIND_JSON, b'{"id": 2}'))
    with pytest.raises(tiered.CorruptionError, match="volume counter"):
        tiered.open(path, readonly=True)


# -- format 1 --------------------------------------------------------------


def read_raw(path: str) -> dict[str, dict[bytes, bytes]]:
    """Every stored key and value, by database."""
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False, max_dbs=4)
    try:
        out = {}
        with env.begin() as txn:
            for name in ("meta", "volumes", "checkpoints", "pages"):
                out[name] = {bytes(k): bytes(v) for k, v in txn.cursor(env.open_db(name.encode(), txn=txn))}
        return out
    finally:
        env.close()


def test_a_writer_upgrades_a_format_1_store_in_place(tmp_path):
    path, expected = golden_copy(tmp_path, "v1")
    before = read_raw(path)
    assert {v[2] for db in before.values() for v in db.values()} == {1}
    with tiered.open(path):
        pass
    after = read_raw(path)
    # Every value is now format 2, under the same keys, with the same payload
    # except the records that format 2 extends.
    assert {name: set(db) for name, db in after.items()} == {name: set(db) for name, db in before.items()}
    assert {v[2] for db in after.values() for v in db.values()} == {2}
    for name in ("checkpoints", "pages"):
        for key, value in after[name].items():
            assert value[codec.HEADER.size :] == before[name][key][codec.HEADER.size :]
    assert json.loads(after["meta"][b"format"][codec.HEADER.size :]) == {"format": 2}
    for key, value in after["volumes"].items():
        record = json.loads(value[codec.HEADER.size :])
        old = json.loads(before["volumes"][key][codec.HEADER.size :])
        assert "dirty" not in record and record["unflushed"] == old["dirty"]
        n_ckpt = sum(1 for k in after["checkpoints"] if k[:8] == key)
        assert record["checkpoints"] == n_ckpt
        # the volume that died unflushed is now known to have lost tracking
        if record["name"] != "crashed":
            assert {k: v for k, v in record.items() if k not in ("checkpoints", "pages_digest", "unflushed")} == {
                k: v for k, v in old.items() if k != "dirty"
            }


def test_a_damaged_format_1_store_is_not_upgraded(tmp_path):
    """The upgrade checks every value first: a damaged one is refused, and
    the store is left as it was (the upgrade must not give damaged data a
    valid format-2 checksum).  Readers still read the undamaged volumes."""
    path, expected = golden_copy(tmp_path, "v1")
    victim = next(k for k in read_raw(path)["pages"] if k[:8] == keys.volume_key(1))

    def damage(txn, dbs):
        value = bytearray(txn.get(victim, db=dbs["pages"]))
        value[-1] ^= 0x10
        txn.put(victim, bytes(value), db=dbs["pages"])

    raw_edit(path, damage)
    before = read_raw(path)
    with pytest.raises(tiered.CorruptionError, match="checksum"):
        tiered.open(path)
    assert read_raw(path) == before
    with tiered.open(path, readonly=True) as store:
        assert answers_of(store, "hybrid") == expected_of(expected["volumes"]["hybrid"])


def test_a_renamed_key_in_a_format_1_store_is_refused(tmp_path):
    """Format 1 cannot check keys against values, but the cross-checks
    still refuse a writeset moved to period 0 (W/1/0 -> W/0/0), for readers
    and for the upgrade."""
    path, _ = golden_copy(tmp_path, "v1")
    raw_edit(path, rename("pages", pk(1, b"W", 1, 0), pk(1, b"W", 0, 0)))
    got = answers_or_refuses(path, "one", "c1")
    assert isinstance(got, tiered.CorruptionError) and "no live checkpoint" in str(got), got
    with pytest.raises(tiered.CorruptionError, match="no live checkpoint"):
        tiered.open(path)


def test_a_reader_of_format_1_keeps_reading_while_a_writer_upgrades(tmp_path):
    """A reader's volume reads its snapshot in the format of that snapshot."""
    path, expected = golden_copy(tmp_path, "v1")
    with tiered.open(path, readonly=True) as store:
        before = answers_of(store, "one")
        run_isolated(f"import tiered\ntiered.open({path!r}).close()\n")
        with store._storage.reading() as txn:
            assert txn.get(b"format", db=store._storage.meta)[2] == 2
        assert answers_of(store, "one") == before == expected_of(expected["volumes"]["one"])
        assert store.volumes() == sorted(expected["volumes"])
        assert answers_of(store, "multi8") == expected_of(expected["volumes"]["multi8"])
