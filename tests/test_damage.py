"""Damage to a closed store: 0 silent wrong answers and 0 process crashes.

A store with a volume of every strategy (one-bit, multi-bit of width 8 and
16, hybrid with folded generation pages), several checkpoints, some
removed, is written once by a seeded workload, and the multi-bit 16 one is
crash-exact (``durability="sync"``) with its last writes synced by a writer
that was then killed, so that the store holds a journal too; a naive model (a set of
chunks per period) gives what every ``changed_since`` and
``changed_between`` over a few regions must hold.  Then, one damage at a
time on a fresh copy of the closed store, through the ``lmdb`` module
directly:

* every stored value of every database (``meta`` included): one flipped
  bit, truncated to a shorter length (0 included), bytes appended;
* every key: its value moved under the key with one flipped bit, under the
  key one byte shorter and one byte longer, or the key deleted; two values
  of a database swapped; a page's value copied under another
  generation or page; each database emptied or dropped;
* the data file: truncated at several offsets, a bit flipped in each of
  the first bytes of both LMDB meta pages.

After each, the store is opened read-only, as writer (which commits when
it closes), and read-only again, every volume is opened and every
question asked.  Each answer must be the undamaged one
(same ``exact``), or a superset of it flagged ``exact=False``, or a
``TieredError`` raised cleanly; anything else (a different answer marked
exact, a missing chunk, a vanished volume or checkpoint, another exception,
a crash) is a failure.  The sweep runs in child processes, so that a
SIGSEGV or SIGBUS is the child's exit status, not the end of pytest.

Bit flips inside LMDB's own B-tree pages are not claimed: LMDB has no page
checksums, and such damage can crash LMDB itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter

import numpy as np
import pytest
from naive import covers, to_byte_extents

import tiered
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS
from tiered.storage.environment import DB_NAMES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SEED = 20261130
GRAN = 512
# Two and a half pages of 4 Mi chunks: page-level paths, a partial last page.
N_CHUNKS = 2 * PAGE_CHUNKS + PAGE_CHUNKS // 2 + 77
SIZE = N_CHUNKS * GRAN - 100
# m16 is kept crash-exact: its last writes are synced by a writer that is
# then killed, so the store holds its journal too.
JOURNALED = "m16"
VOLUMES = {
    "one": tiered.Strategy("one-bit"),
    "m8": tiered.Strategy("multi-bit", width=8),
    "m16": tiered.Strategy("multi-bit", width=16),
    "hyb": tiered.Strategy("hybrid", recent=2),
}
CHECKPOINTS = [f"c{i}" for i in range(1, 9)]
REMOVED = ["c1", "c4", "c6"]
# (offset, length) of the questions' regions: the whole volume, a region
# inside page 0, and an unaligned one across the page 1/2 boundary.
REGIONS = [
    (0, None),  # to the end of the volume
    (3 * SEG_CHUNKS * GRAN, 5 * SEG_CHUNKS * GRAN),
    ((2 * PAGE_CHUNKS - 3 * SEG_CHUNKS) * GRAN + 100, 7 * SEG_CHUNKS * GRAN),
]


# -- the store and its reference answers ----------------------------------


def _writes(rng: random.Random, period: int) -> list[tuple[int, int]]:
    """One period's writes: scattered chunks, short runs near segment and
    page boundaries, a dense segment now and then, the ragged last chunk."""
    out = [(rng.randrange(N_CHUNKS) * GRAN, GRAN) for _ in range(20)]
    for base in (0, PAGE_CHUNKS - SEG_CHUNKS, 2 * PAGE_CHUNKS - 2 * SEG_CHUNKS, 4 * SEG_CHUNKS):
        start = base + rng.randrange(2 * SEG_CHUNKS)
        out.append((start * GRAN, rng.randrange(1, 80) * GRAN - rng.randrange(GRAN)))
    if period % 3 == 0:
        dense = (5 + period % 2) * SEG_CHUNKS
        out += [((dense + c) * GRAN, GRAN) for c in range(SEG_CHUNKS) if rng.random() < 0.4]
    if period % 4 == 1:
        out.append((SIZE - 1, 1))
    return out


def build_store(path: str) -> dict:
    """Write the store; return, per volume, the model's answers (chunk
    lists) keyed by question."""
    model: dict = {}
    last_writes: list[tuple[int, int]] = []
    with tiered.open(path, sync=False) as store:
        for vname, strategy in VOLUMES.items():
            rng = random.Random(f"{SEED}-{vname}")
            durability = "sync" if vname == JOURNALED else "lazy"
            vol = store.create_volume(vname, SIZE, GRAN, strategy, durability=durability)
            periods: list[set[int]] = []  # chunks written in each period since c1
            start: dict[str, int] = {}
            for i, name in enumerate(CHECKPOINTS):
                vol.checkpoint(name)
                start[name] = len(periods)
                periods.append(set())
                for off, length in _writes(rng, i + 1):
                    vol.mark(off, length)
                    periods[-1].update(range(off // GRAN, (off + length - 1) // GRAN + 1))
                if i == 4:
                    vol.flush()
            for name in REMOVED:
                vol.remove_checkpoint(name)
                del start[name]
            # writes after the last removal, left for close() to flush, or
            # to a writer that syncs them and is killed (JOURNALED)
            for off, length in _writes(rng, 99):
                if vname == JOURNALED:
                    last_writes.append((off, length))
                else:
                    vol.mark(off, length)
                periods[-1].update(range(off // GRAN, (off + length - 1) // GRAN + 1))
            live = [c.name for c in vol.checkpoints()]
            assert live == sorted(start, key=start.__getitem__)
            truth = {}
            for q in questions(live):
                a, b = start[q[0]], (start[q[1]] if q[1] else len(periods))
                chunks = set().union(*periods[a:b])
                truth[json.dumps(q)] = sorted(chunks)
            model[vname] = truth
    _sync_then_die(path, last_writes)
    return model


def _sync_then_die(path: str, writes: list[tuple[int, int]]) -> None:
    """Mark ``writes`` on the JOURNALED volume in a child writer, in three
    synced batches, and kill it: they live only in the journal."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            store = tiered.open(path, sync=False)
            vol = store.volume(JOURNALED)
            for part in (writes[::3], writes[1::3], writes[2::3]):
                vol.sync(vol.mark_many([w[0] for w in part], [w[1] for w in part]))
            assert vol.stats()["journal_entries"] == 3
            store._storage.env.sync(True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the journaling writer failed"


def questions(live: list[str]) -> list[list]:
    """[since, until or None, offset, length] since every checkpoint,
    between consecutive ones and between the first and the last, over
    every region."""
    pairs = [(a, None) for a in live] + list(zip(live, live[1:])) + ([(live[0], live[-1])] if len(live) > 2 else [])
    return [[a, b, off, length] for a, b in pairs for off, length in REGIONS]


def query(vol, q: list) -> tiered.Extents:
    since, until, off, length = q
    return vol.changed_since(since, off, length) if until is None else vol.changed_between(since, until, off, length)


def ask(vol, q: list) -> tuple[list[tuple[int, int]], bool]:
    got = query(vol, q)
    return [tuple(e) for e in got], got.exact


def answers(path: str, readonly: bool = True) -> dict:
    """Every volume's answer to every question: {volume: {question: [extents, exact]}}."""
    out: dict = {}
    with tiered.open(path, readonly=readonly, sync=False) as store:
        for vname in store.volumes():
            vol = store.volume(vname)
            live = [c.name for c in vol.checkpoints()]
            out[vname] = {json.dumps(q): [[list(e) for e in ext], exact] for q in questions(live) for ext, exact in [ask(vol, q)]}
    return out


# -- damage ------------------------------------------------------------------


def _open_env(path: str):
    import lmdb

    env = lmdb.open(path, max_dbs=len(DB_NAMES), map_size=256 << 20)
    dbs = {name.decode(): env.open_db(name) for name in DB_NAMES}
    return env, dbs


def stored_keys(path: str) -> dict[str, list[bytes]]:
    env, dbs = _open_env(path)
    try:
        with env.begin() as txn:
            return {name: [bytes(k) for k, _ in txn.cursor(db)] for name, db in dbs.items()}
    finally:
        env.close()


def _newest_meta(path: str) -> int:
    """Offset in data.mdb of the meta page LMDB uses (the higher txnid)."""
    with open(os.path.join(path, "data.mdb"), "rb") as f:
        head = f.read(152)
        psize = int.from_bytes(head[40:44], "little")
        f.seek(psize)
        second = f.read(152)
    return 0 if int.from_bytes(head[144:152], "little") > int.from_bytes(second[144:152], "little") else psize



def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def make_cases(keys: dict[str, list[bytes]], file_size: int, psize: int, newest: int) -> list[list]:
    """Every damage of the sweep, as JSON-able [kind, ...] lists, from a
    fixed seed (the same cases on every run)."""
    rng = random.Random(SEED)
    cases: list[list] = []
    for db, ks in keys.items():
        for k in ks:
            kh = k.hex()
            cases.append(["value-flip", db, kh, rng.randrange(1 << 20)])  # bit taken modulo the value's
            cases.append(["value-truncate", db, kh, rng.random()])
            cases.append(["value-append", db, kh, rng.randbytes(rng.randrange(1, 12)).hex()])
            cases.append(["key-flip", db, kh, rng.randrange(8 * len(k))])
            cases.append(["key-shorter", db, kh])
            cases.append(["key-longer", db, kh, rng.randrange(256)])
            cases.append(["key-delete", db, kh])
        for _ in range(min(len(ks) // 2, 12)):
            if len(ks) > 1:
                a, b = rng.sample(ks, 2)
                cases.append(["swap", db, a.hex(), b.hex()])
        cases.append(["db-empty", db])
        cases.append(["db-drop", db])
    for k in keys["pages"]:
        vol, tag, gen, page = k[:8], k[8:9], int.from_bytes(k[9:17], "big"), int.from_bytes(k[17:], "big")
        for g, p in rng.sample([(gen + 1, page), (max(gen - 1, 0), page), (gen, page + 1), (gen, max(page - 1, 0))], 2):
            new = vol + tag + g.to_bytes(8, "big") + p.to_bytes(8, "big")
            if new != k:
                cases.append(["page-duplicate", k.hex(), new.hex()])
    # The value of one volume's page under another's key with the same tag.
    for k in rng.sample(keys["pages"], min(6, len(keys["pages"]))):
        other = (int.from_bytes(k[:8], "big") % len(VOLUMES) + 1).to_bytes(8, "big")
        cases.append(["page-duplicate", k.hex(), (other + k[8:]).hex()])
    offsets = {0, 1, 100, psize - 1, psize, psize + 152, 2 * psize, 3 * psize - 7, file_size // 2, file_size - psize, file_size - 1}
    offsets |= {rng.randrange(file_size) for _ in range(6)}
    for off in sorted(o for o in offsets if 0 <= o < file_size):
        cases.append(["file-truncate", off])
    # Meta pages: the page header and MDB_meta (magic, version, address,
    # map size, the free-list and main database records, last page, txnid).
    # A bit of every byte of the meta page LMDB uses (at ``newest``), and
    # of every eighth byte of the other, which LMDB uses only once its
    # txnid is the higher.
    for page in (0, psize):
        for byte in range(0, 152, 1 if page == newest else 8):
            cases.append(["meta-flip", page + byte, rng.randrange(8)])
    return cases


def apply(path: str, case: list) -> None:
    """Damage the closed store at ``path`` as ``case`` says."""
    kind = case[0]
    file = os.path.join(path, "data.mdb")
    if kind == "file-truncate":
        os.truncate(file, case[1])
        return
    if kind in ("meta-flip", "file-flip"):  # file-flip: exploratory runs only
        with open(file, "r+b") as f:
            f.seek(case[1])
            byte = f.read(1)[0]
            f.seek(case[1])
            f.write(bytes([byte ^ (1 << case[2])]))
        return
    env, dbs = _open_env(path)
    try:
        with env.begin(write=True) as txn:
            if kind in ("db-empty", "db-drop"):
                txn.drop(dbs[case[1]], delete=kind == "db-drop")
                return
            if kind == "page-duplicate":
                db, key, new = dbs["pages"], bytes.fromhex(case[1]), bytes.fromhex(case[2])
                txn.put(new, txn.get(key, db=db), db=db)
                return
            db, key = dbs[case[1]], bytes.fromhex(case[2])
            value = bytes(txn.get(key, db=db))
            if kind == "value-flip":
                txn.put(key, flip(value, case[3] % (8 * len(value))), db=db)
            elif kind == "value-truncate":
                txn.put(key, value[: int(case[3] * len(value))], db=db)
            elif kind == "value-append":
                txn.put(key, value + bytes.fromhex(case[3]), db=db)
            elif kind == "swap":
                other = bytes.fromhex(case[3])
                txn.put(key, txn.get(other, db=db), db=db)
                txn.put(other, value, db=db)
            else:
                txn.delete(key, db=db)
                if kind == "key-flip":
                    txn.put(flip(key, case[3]), value, db=db)
                elif kind == "key-shorter":
                    txn.put(key[:-1], value, db=db)
                elif kind == "key-longer":
                    txn.put(key + bytes([case[3]]), value, db=db)
                else:
                    assert kind == "key-delete", kind
    finally:
        env.close()


# -- judging -----------------------------------------------------------------

# Worst first: a case is judged by its worst outcome.
RANKS = ["failure", "reported", "superset", "unchanged"]
#: Outcomes in the report: the ranks, and a child that died on the case.
OUTCOMES = ["crash", *RANKS]


def prepared(reference: dict) -> dict:
    """The reference answers as {volume: [(question, offsets, lengths, exact)]}
    (numpy arrays: comparing them is most of the sweep's time)."""
    out = {}
    for vname, ref in reference.items():
        out[vname] = [
            (json.loads(q), np.array([e[0] for e in ext], np.uint64), np.array([e[1] for e in ext], np.uint64), exact)
            for q, (ext, exact) in ref.items()
        ]
    return out


def judge(path: str, reference: dict) -> tuple[str, list[str]]:
    """Open the damaged store read-only, then as writer, and ask every
    question of ``reference`` (:func:`prepared`); returns the worst
    outcome and what failed."""
    seen: set[str] = set()
    failures: list[str] = []

    def fail(msg: str) -> None:
        seen.add("failure")
        failures.append(msg)

    # A reader, a writer (which commits when it closes), and a reader of
    # what that writer left: a writer must neither launder damage into
    # valid-looking data nor overwrite live pages.
    for mode in ("reader", "writer", "reader after the writer"):
        readonly = mode != "writer"
        store = None
        try:
            store = tiered.open(path, readonly=readonly, sync=False)
            for vname, ref in reference.items():
                try:
                    vol = store.volume(vname)
                except tiered.NotFoundError as exc:
                    fail(f"{mode}: volume {vname!r} vanished: {exc}")
                    continue
                except tiered.TieredError:
                    seen.add("reported")
                    continue
                for q, offsets, lengths, exact in ref:
                    try:
                        ext = query(vol, q)
                    except tiered.NotFoundError as exc:
                        fail(f"{mode}: {vname} {q}: {type(exc).__name__}: {exc}")
                        continue
                    except tiered.TieredError:
                        seen.add("reported")
                        continue
                    same = np.array_equal(ext.offsets, offsets) and np.array_equal(ext.lengths, lengths)
                    if same and ext.exact == exact:
                        seen.add("unchanged")
                        continue
                    got, want = list(ext), list(zip(offsets.tolist(), lengths.tolist()))
                    if not ext.exact and covers(got, want):
                        seen.add("superset")
                    else:
                        fail(f"{mode}: {vname} {q}: answered {got[:4]}... exact={ext.exact}, "
                             f"expected {want[:4]}... exact={exact}")
        except tiered.NotFoundError as exc:
            fail(f"{mode}: {type(exc).__name__}: {exc}")
        except tiered.TieredError:
            seen.add("reported")
        except Exception as exc:  # noqa: BLE001 -- anything else is the bug
            fail(f"{mode}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")
        finally:
            if store is not None:
                try:
                    store.close()
                except tiered.TieredError:
                    seen.add("reported")
                except Exception as exc:  # noqa: BLE001
                    fail(f"{mode} close: {type(exc).__name__}: {exc}")
                store._storage.close()  # even if close() failed: next case, next store
    worst = min(seen or {"unchanged"}, key=RANKS.index)
    return worst, failures


def sweep(base: str, reference_file: str, cases_file: str, shard: int, shards: int) -> None:
    """Child process: run this shard's cases (every ``shards``-th from
    ``shard``); print "CASE <index>" before each (so a crash names it)
    and "RESULT <index> <outcome> <failures>" after it."""
    with open(reference_file) as f:
        reference = prepared(json.load(f))
    with open(cases_file) as f:
        cases = json.load(f)
    work = tempfile.mkdtemp(prefix="damage-")
    try:
        for i in range(shard, len(cases), shards):
            print("CASE", i, flush=True)
            path = os.path.join(work, str(i))
            os.mkdir(path)
            shutil.copyfile(os.path.join(base, "data.mdb"), os.path.join(path, "data.mdb"))
            apply(path, cases[i])
            worst, failed = judge(path, reference)
            print("RESULT", i, worst, json.dumps(failed[:3]), flush=True)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the test ----------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_store_setup(tmp_path_factory):
    """The undamaged store, its reference answers and the sweep's cases."""
    base = str(tmp_path_factory.mktemp("damage") / "store")
    model = build_store(base)
    reference = answers(base)
    with open(os.path.join(base, "data.mdb"), "rb") as f:
        psize = int.from_bytes(f.read(44)[40:44], "little")
    cases = make_cases(stored_keys(base), os.path.getsize(os.path.join(base, "data.mdb")), psize, _newest_meta(base))
    return base, model, reference, cases


def test_undamaged_store_answers_as_the_model(damaged_store_setup):
    """The reference answers are right: exact ones are the model's, and
    inexact ones cover it; a writer gives the same answers."""
    base, model, reference, _ = damaged_store_setup
    for vname, truth in model.items():
        assert set(truth) == set(reference[vname])
        for q, chunks in truth.items():
            since, until, off, length = json.loads(q)
            want = to_byte_extents({(c, c) for c in chunks}, GRAN, off, SIZE if length is None else off + length)
            got, exact = [tuple(e) for e in reference[vname][q][0]], reference[vname][q][1]
            assert covers(got, want), (vname, q)
            if exact:
                assert got == want, (vname, q)
    # The hybrid volume has folded periods into generation pages, and
    # answers about them are inexact somewhere; one-bit is always exact.
    pages = stored_keys(base)["pages"]
    hyb_id = list(VOLUMES).index("hyb") + 1
    assert any(k[:8] == hyb_id.to_bytes(8, "big") and k[8:9] == b"G" for k in pages)
    assert any(not exact for _, exact in reference["hyb"].values())
    assert all(exact for _, exact in reference["one"].values())
    copy = str(damaged_store_setup[0]) + "-writer"
    shutil.copytree(base, copy)
    assert answers(copy, readonly=False) == reference


def run_sweep(
    base: str, reference: dict, cases: list, shards: int = 2, timeout: float = 300
) -> tuple[dict, list, list]:
    """Run the cases in ``shards`` child processes side by side; returns
    per-kind counts of outcomes, the failures, and the crashes: a child
    that dies (SIGSEGV, SIGBUS, an LMDB assertion) or hangs (killed after
    ``timeout`` seconds) names the case it was running, and the cases
    after it run in a new child."""
    work = tempfile.mkdtemp(prefix="damage-sweep-")
    try:
        ref_file, cases_file = os.path.join(work, "reference.json"), os.path.join(work, "cases.json")
        with open(ref_file, "w") as f:
            json.dump(reference, f)
        with open(cases_file, "w") as f:
            json.dump(cases, f)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
        code = "import sys, test_damage; test_damage.sweep(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5]))"
        counts: dict[str, Counter] = {}
        failures: list = []
        crashes: list = []
        pending = list(range(len(cases)))
        while pending:
            with open(cases_file, "w") as f:
                json.dump([cases[i] for i in pending], f)
            children = [
                subprocess.Popen(
                    [sys.executable, "-c", code, base, ref_file, cases_file, str(i), str(shards)],
                    env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
                for i in range(shards)
            ]
            again: list[int] = []
            deadline = time.monotonic() + timeout
            for shard, child in enumerate(children):
                try:
                    out, err = child.communicate(timeout=max(deadline - time.monotonic(), 1))
                except subprocess.TimeoutExpired:
                    child.kill()
                    out, err = child.communicate()
                    err += "\nhung: killed"
                started = done = 0
                for line in out.splitlines():
                    word, index, *rest = line.split(" ", 3)
                    case = cases[pending[int(index)]]
                    if word == "CASE":
                        started += 1
                    elif word == "RESULT":
                        done += 1
                        counts.setdefault(case[0], Counter())[rest[0]] += 1
                        if rest[1] != "[]":
                            failures.append([case, json.loads(rest[1])])
                if child.returncode != 0:
                    assert started == done + 1, err[-3000:]
                    counts.setdefault(case[0], Counter())["crash"] += 1  # hangs included
                    crashes.append([case, child.returncode, err.strip().splitlines()[-1:]])
                    again += pending[shard::shards][started:]
            pending = sorted(again)
        return counts, failures, crashes
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(counts: dict) -> str:
    lines = [f"{'damage':16} {'cases':>6} " + " ".join(f"{r:>10}" for r in OUTCOMES)]
    for kind, c in sorted(counts.items()):
        lines.append(f"{kind:16} {sum(c.values()):6} " + " ".join(f"{c.get(r, 0):10}" for r in OUTCOMES))
    return "\n".join(lines)


def test_damage_is_never_a_silent_wrong_answer_nor_a_crash(damaged_store_setup):
    """Every damage of the sweep: each answer unchanged, a superset flagged
    inexact, or a TieredError; never another exception, never a crash."""
    base, _, reference, cases = damaged_store_setup
    assert len(cases) > 500
    started = time.monotonic()
    counts, failures, crashes = run_sweep(base, reference, cases)
    print(f"\n{len(cases)} damaged stores in {time.monotonic() - started:.1f} s\n{report(counts)}")
    assert sum(sum(c.values()) for c in counts.values()) == len(cases)
    assert not crashes, "\n".join(json.dumps(c) for c in crashes[:20])
    assert not failures, "\n".join(json.dumps(f) for f in failures[:20])
    # The sweep damaged what matters: most damage is reported.
    assert sum(c["reported"] for c in counts.values()) > len(cases) // 2


# -- what the sweep found, one test per kind -----------------------------------


@pytest.mark.parametrize("readonly", [True, False])
@pytest.mark.parametrize(
    "damage",
    ["record deleted", "record key changed", "every record deleted", "keys of an unknown volume"],
)
def test_a_lost_volume_record_is_reported_not_vanished(tmp_path, damage, readonly):
    """Deleting volume 1's record (its key, or every ``volumes`` key) left
    its checkpoints and pages behind and the volume simply missing:
    ``store.volume("a")`` raised VolumeNotFoundError, as for a name that
    never existed.  Keys of a volume without a record are corruption."""
    from test_format import make_store, raw_edit

    from tiered.storage import keys

    path = str(tmp_path / "s")
    make_store(path)
    vk = keys.volume_key(1)

    def edit(txn, dbs):
        if damage == "record deleted":
            txn.delete(vk, db=dbs["volumes"])
        elif damage == "record key changed":  # fails its checksum anyway
            txn.put(keys.volume_key(5), txn.pop(vk, db=dbs["volumes"]), db=dbs["volumes"])
        elif damage == "every record deleted":
            txn.drop(dbs["volumes"], delete=False)
        else:  # a page moved to a volume id nobody has
            key = next(k for k, _ in txn.cursor(dbs["pages"]))
            txn.put(keys.volume_key(7) + bytes(key[8:]), txn.pop(key, db=dbs["pages"]), db=dbs["pages"])

    raw_edit(path, edit)
    with pytest.raises(tiered.CorruptionError, match="volume|checksum"):
        tiered.open(path, readonly=readonly)


@pytest.mark.parametrize(
    "byte,bit",
    [(44, 2), (92, 2), (92, 3), (44, 3), (80, 4), (128, 5)],
    ids=["free-list-dupsort", "main-dupsort", "main-integerkey", "free-list-not-integerkey",
         "free-list-root-past-the-end", "main-root-past-the-end"],
)
def test_a_damaged_lmdb_meta_page_is_refused_not_an_abort(tmp_path, byte, bit):
    """One flipped bit in the newest meta page's free-list flags (MDB_DUPSORT)
    made LMDB fail an assertion at the first write: the writer process
    aborted (SIGABRT).  The flags and root pages of LMDB's core databases
    are checked before LMDB maps the file."""
    from test_decoders import run_isolated
    from test_format import answers_or_refuses, make_store

    path = str(tmp_path / "s")
    make_store(path)
    before = str(answers_or_refuses(path))
    offset = _newest_meta(path) + byte
    with open(os.path.join(path, "data.mdb"), "r+b") as f:
        f.seek(offset)
        value = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([value ^ (1 << bit)]))
    out = run_isolated(
        f"""
        import tiered
        for readonly in (True, False):
            try:
                with tiered.open({path!r}, readonly=readonly) as store:
                    print("answered", store.volume("a").changed_since("c1"))
            except tiered.CorruptionError as exc:
                print("refused", exc)
        """
    )
    assert out.splitlines() and all(line.startswith("refused") for line in out.splitlines()), (before, out)
    assert "database" in out, out


@pytest.mark.parametrize("mode", ["one-bit", "hybrid"])
@pytest.mark.parametrize("readonly", [True, False])
def test_a_query_over_a_damaged_page_names_the_volume_and_checkpoint(tmp_path, mode, readonly):
    """The error of a query that needs a damaged page says which volume and
    which checkpoints were asked about, not only the volume's id."""
    from test_format import make_store, raw_edit

    from tiered.storage import keys

    path = str(tmp_path / "s")
    make_store(path, mode)
    key = keys.page_key(1, b"W", 1, 0)

    def edit(txn, dbs):
        value = bytearray(txn.get(key, db=dbs["pages"]))
        value[-1] ^= 0x10
        txn.put(key, bytes(value), db=dbs["pages"])

    raw_edit(path, edit)
    with tiered.open(path, readonly=readonly) as store:
        vol = store.volume("a")
        with pytest.raises(tiered.CorruptionError) as since:
            vol.changed_since("c1")
        with pytest.raises(tiered.CorruptionError) as between:
            vol.changed_between("c1", "c2", 0, 4096)
        assert list(vol.changed_since("c2")) == [(5 * 512, 512)]  # the rest still answers
        assert list(store.volume("b").changed_since("c1")) == [(0, 512), (5 * 512, 512)]
    assert str(since.value).startswith("volume 'a', checkpoint 'c1': volume 1 page W/1/0: checksum mismatch")
    assert str(between.value).startswith("volume 'a', checkpoints 'c1' and 'c2': volume 1 page W/1/0: checksum")


def test_a_query_over_a_damaged_generation_page_names_the_volume_and_checkpoint(tmp_path):
    """The same for a folded generation page of a hybrid volume."""
    from test_format import raw_edit

    from tiered.storage import keys

    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("h", 64 << 20, 512, tiered.Strategy("hybrid", recent=1))
        for i in range(1, 6):
            vol.checkpoint(f"c{i}")
            vol.mark(i * 512, 512)
    key = keys.page_key(1, b"G", 0, 0)

    def edit(txn, dbs):
        value = bytearray(txn.get(key, db=dbs["pages"]))
        value[12] ^= 1
        txn.put(key, bytes(value), db=dbs["pages"])

    raw_edit(path, edit)
    with tiered.open(path, readonly=True) as store:
        with pytest.raises(tiered.CorruptionError, match=r"^volume 'h', checkpoint 'c1': volume 1 page G/0/0: checksum"):
            store.volume("h").changed_since("c1")


class _DamagedTreeCursor:
    """An LMDB cursor over a B-tree whose branch keys were damaged: a seek
    can land on a key below the one it asked for (found by flipping bits
    in LMDB's pages: opening the store then looped forever)."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys, self.at = keys, 0

    def first(self) -> bool:
        self.at = 0
        return bool(self.keys)

    def key(self) -> bytes:
        return self.keys[self.at]

    def next(self) -> bool:
        self.at += 1
        return self.at < len(self.keys)

    def set_range(self, key: bytes) -> bool:
        self.at = 0  # the damaged branch sends every seek to the first leaf
        return True


def test_keys_out_of_order_end_the_walk_over_volume_ids():
    """Store.open seeks past each volume id's keys (Storage.key_owners); on
    a damaged B-tree a seek went back and the walk never ended."""
    from tiered.storage import keys
    from tiered.storage.environment import Storage

    storage = object.__new__(Storage)  # only its path is used
    storage.path = "/damaged"
    txn = type("Txn", (), {"cursor": lambda self, db: _DamagedTreeCursor(
        [keys.checkpoint_key(1, 1), keys.checkpoint_key(2, 1)])})()
    walk = storage.key_owners(txn, None)
    assert next(walk) == keys.volume_key(1)
    with pytest.raises(tiered.CorruptionError, match="out of order"):
        for _ in range(10):
            next(walk)
