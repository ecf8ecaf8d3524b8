"""remove_checkpoint() on a volume with 100 checkpoints, against a plain
pyroaring + LMDB store.

The volume is the 100-checkpoint history of the session fixture
``histories`` (conftest.py): 1 TiB / 64 KiB, checkpoints c000 .. c099,
1% of the chunks (random, ``dirty_sets(0.01, i)``) written after each, the
store closed cleanly with sync=False.  Removing changes the store, so every
round works on its own copy: the untimed setup copies ``data.mdb`` into a
fresh directory and opens it (store and volume, so tiered's page cache is
empty), the timed part is one ``vol.remove_checkpoint(name)`` (its LMDB
commit included, sync=False), and the untimed teardown closes the copy and
deletes it.  The checkpoints removed:

* oldest (c000): one-bit drops its writeset; hybrid and multi-bit have
  nothing to rewrite (the period is in the generation array);
* middle (c050): one-bit ORs its writeset into its predecessor's and
  rewrites that one; hybrid's c050 is already folded into the generation
  array, so nothing is rewritten;
* newest (c099): one-bit and hybrid OR the predecessor's writeset into the
  active one and persist it; multi-bit only drops the record.

The peer, ``pyroaring+lmdb``, is the straightforward design: one
serialized ``pyroaring.BitMap`` per sealed period in LMDB (sync=False, the
same periods), the current period's BitMap in RAM (read at open), the live
checkpoints in one record.  It removes a checkpoint the way one-bit does:
the oldest drops its period, a middle one ORs its period into its
predecessor's, the newest ORs its predecessor's period into the active one
and persists it.

After the timed rounds one more copy checks the answer next to the removed
checkpoint (the successor of the oldest, the predecessor of the others):
it must be what it was before.  ``test_history_summary`` (last) prints the
medians and each mode's ratio to the peer; there is no target.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import pyroaring
import pytest
from benchutil import (
    GRANULARITY,
    HISTORY_FRACTION,
    HISTORY_LENGTHS,
    MODES,
    SHIFT,
    ckpt_name,
    fmt_time,
    positions,
    print_report,
)

import tiered

LENGTH = max(HISTORY_LENGTHS)
WHICH = positions(LENGTH)
PEER = "pyroaring+lmdb"
CONTENDERS = tuple(f"tiered-{m}" for m in MODES) + (PEER,)
ROUNDS = 15


# -- the peer ----------------------------------------------------------------

ACTIVE = b"active"
LIVE = b"checkpoints"


def period_key(i: int) -> bytes:
    return b"p%08d" % i


def open_env(path: str) -> lmdb.Environment:
    return lmdb.open(path, map_size=1 << 30, sync=False, metasync=False)


class RoaringStore:
    """One serialized BitMap per sealed period, keyed by the number of the
    checkpoint that started it; the current period in RAM."""

    def __init__(self, path: str) -> None:
        self.env = open_env(path)
        with self.env.begin() as txn:
            self.active = pyroaring.BitMap.deserialize(txn.get(ACTIVE))
            self.live = np.frombuffer(txn.get(LIVE), np.uint32).tolist()

    @staticmethod
    def build(path: str, periods: list[np.ndarray]) -> None:
        """Store checkpoints 0 .. len(periods)-1, period i holding those chunks."""
        env = open_env(path)
        with env.begin(write=True) as txn:
            for i, chunks in enumerate(periods[:-1]):
                txn.put(period_key(i), pyroaring.BitMap(chunks.astype(np.uint32)).serialize())
            txn.put(ACTIVE, pyroaring.BitMap(periods[-1].astype(np.uint32)).serialize())
            txn.put(LIVE, np.arange(len(periods), dtype=np.uint32).tobytes())
        env.close()

    def _load(self, txn: lmdb.Transaction, i: int) -> pyroaring.BitMap:
        return pyroaring.BitMap.deserialize(txn.get(period_key(i)))

    def remove_checkpoint(self, i: int) -> None:
        pos = self.live.index(i)
        live = self.live[:pos] + self.live[pos + 1 :]
        active = self.active
        with self.env.begin(write=True) as txn:
            if pos == len(self.live) - 1:  # newest: the predecessor's period joins the active one
                prev = self.live[pos - 1]
                active = self.active | self._load(txn, prev)
                txn.delete(period_key(prev))
                txn.put(ACTIVE, active.serialize())
            elif pos > 0:  # middle: its period joins the predecessor's
                prev = self.live[pos - 1]
                txn.put(period_key(prev), (self._load(txn, prev) | self._load(txn, i)).serialize())
                txn.delete(period_key(i))
            else:
                txn.delete(period_key(i))
            txn.put(LIVE, np.array(live, np.uint32).tobytes())
        self.live, self.active = live, active

    def changed_chunks(self, i: int) -> int:
        """How many chunks changed since checkpoint i."""
        with self.env.begin() as txn:
            stored = [self._load(txn, j) for j in self.live[:-1] if j >= i]
        return len(pyroaring.BitMap.union(self.active, *stored))

    def close(self) -> None:
        self.env.close()


@pytest.fixture(scope="module")
def roaring_store(tmp_path_factory, dirty_sets) -> str:
    """The peer's store, holding the same periods as the histories."""
    path = str(tmp_path_factory.mktemp("roaring-history"))
    RoaringStore.build(path, [dirty_sets(HISTORY_FRACTION, i) >> SHIFT for i in range(LENGTH)])
    return path


# -- one round per fresh copy ------------------------------------------------


class Opened:
    """A copy of a store, open: ``remove(i)`` removes checkpoint i,
    ``changed(i)`` counts the chunks changed since checkpoint i."""

    def __init__(self, contender: str, path: str) -> None:
        if contender == PEER:
            peer = RoaringStore(path)
            self.remove: Callable[[int], None] = peer.remove_checkpoint
            self.changed: Callable[[int], int] = peer.changed_chunks
            self.close: Callable[[], None] = peer.close
        else:
            store = tiered.open(path, sync=False)
            vol = store.volume("vol")
            self.remove = lambda i: vol.remove_checkpoint(ckpt_name(i))
            self.changed = lambda i: vol.changed_since(ckpt_name(i)).total_bytes // GRANULARITY
            self.close = store.close


def fresh_copy(source: str, root: Path, n: int) -> str:
    """A copy of a closed store's data file in a new directory (LMDB makes
    the lock file, tiered its writer lock)."""
    dst = root / f"copy-{n}"
    dst.mkdir()
    shutil.copyfile(os.path.join(source, "data.mdb"), dst / "data.mdb")
    return str(dst)


def neighbour(which: str) -> int:
    """The checkpoint whose answer a removal must leave unchanged."""
    return WHICH[which] + 1 if which == "oldest" else WHICH[which] - 1


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("which", list(WHICH))
def test_remove_checkpoint(benchmark, record, histories, roaring_store, tmp_path, which, contender):
    index = WHICH[which]
    benchmark.group = f"remove_checkpoint: {LENGTH} checkpoints x 1% dirty, {which} ({ckpt_name(index)})"
    mode = contender.removeprefix("tiered-") if contender != PEER else None
    history = histories(mode or "one-bit", LENGTH)
    source = roaring_store if contender == PEER else history.path
    live: list[tuple[Opened, str]] = []
    made = itertools.count()

    def setup():
        path = fresh_copy(source, tmp_path, next(made))
        live.append((Opened(contender, path), path))
        return (live[-1][0].remove, index), {}

    def remove(fn, i):
        fn(i)

    def teardown(*_):
        opened, path = live.pop()
        opened.close()
        shutil.rmtree(path)

    try:
        benchmark.pedantic(remove, setup=setup, teardown=teardown, rounds=ROUNDS, warmup_rounds=1)
    finally:
        while live:  # --benchmark-disable never runs the teardown
            teardown()
    path = fresh_copy(source, tmp_path, next(made))
    opened = Opened(contender, path)
    try:
        opened.remove(index)
        assert opened.changed(neighbour(which)) == history.expected_chunks[neighbour(which)]
    finally:
        opened.close()
    record(benchmark, f"remove/{which}/{contender}", which=which, checkpoint=ckpt_name(index),
           contender=contender, store_bytes=os.path.getsize(os.path.join(source, "data.mdb")))


@pytest.mark.bench_summary
def test_history_summary(medians, capsys):
    if not medians:
        pytest.skip("no remove_checkpoint benchmark measured in this run")
    lines = [f"  {'contender':16s} " + " ".join(f"{w:>10s}" for w in WHICH)]
    for contender in CONTENDERS:
        cells = [medians.get(f"remove/{w}/{contender}") for w in WHICH]
        lines.append(f"  {contender:16s} " + " ".join(f"{fmt_time(m['median']) if m else '-':>10s}" for m in cells))
    lines.append(f"  x {PEER} (tiered median / the peer's; > 1: tiered slower):")
    for contender in CONTENDERS[:-1]:
        cells = []
        for w in WHICH:
            ours, peer = medians.get(f"remove/{w}/{contender}"), medians.get(f"remove/{w}/{PEER}")
            cells.append(f"{ours['median'] / peer['median']:>9.2f}x" if ours and peer else f"{'-':>10s}")
        lines.append(f"  {contender:16s} " + " ".join(cells))
    print_report(capsys, f"remove_checkpoint() over {LENGTH} checkpoints vs {PEER}", lines)
