"""Volume.convert: every checkpoint and every answer survives a change of strategy.

Each history is a fixed list of operations replayed on a volume and on
:class:`naive.ReferenceVolume`, so every answer is checked against the truth:
``changed_since`` exactly, ``changed_between`` as a superset that is exact
whenever it says so.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from naive import ReferenceVolume, covers

import tiered
from tiered.config import PAGE_CHUNKS, SEG_CHUNKS

GRAN = 512
# Two pages and a ragged third, so page-level paths (uniform pages, writes
# across a page boundary) are converted too.
N_CHUNKS = 2 * PAGE_CHUNKS + 3 * SEG_CHUNKS + 77
SIZE = N_CHUNKS * GRAN - 100

STRATEGIES = {
    "one-bit": tiered.Strategy("one-bit"),
    "multi-bit-8": tiered.Strategy("multi-bit", width=8),
    "multi-bit-32": tiered.Strategy("multi-bit", width=32),
    # recent=1 folds at every other checkpoint; recent=8 never does here.
    "hybrid-1": tiered.Strategy("hybrid", recent=1),
    "hybrid-8": tiered.Strategy("hybrid", recent=8, cache_bytes=0),
}
PAIRS = [(a, b) for a in STRATEGIES for b in STRATEGIES]

# Chunks written again and again, so older periods' writes are hidden
# wherever only the last writer is kept.
HOT = [0, 1, 63, 64, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_CHUNKS - 1, PAGE_CHUNKS, N_CHUNKS - 1]

CHILD_ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Op = tuple  # ("mark", offset, length) | ("checkpoint", name) | ("remove", name)


# -- histories ------------------------------------------------------------------


def random_writes(rng: np.random.Generator, n: int) -> list[Op]:
    ops: list[Op] = []
    for _ in range(n):
        kind = int(rng.integers(0, 6))
        if kind == 0:  # a hot chunk
            offset, length = int(rng.choice(HOT)) * GRAN + int(rng.integers(0, GRAN)), 1
        elif kind == 1:  # a whole segment: a uniform directory entry
            seg = int(rng.integers(0, N_CHUNKS // SEG_CHUNKS))
            offset, length = seg * SEG_CHUNKS * GRAN, SEG_CHUNKS * GRAN
        elif kind == 2:  # across the first page boundary
            offset, length = (PAGE_CHUNKS - 2) * GRAN + int(rng.integers(0, GRAN)), 5 * GRAN
        else:  # anywhere, a few chunks
            offset, length = int(rng.integers(0, SIZE)), int(rng.integers(1, 4 * GRAN))
        offset = min(offset, SIZE - 1)  # the last chunk is partial
        ops.append(("mark", offset, min(length, SIZE - offset)))
    return ops


def history(seed: int) -> list[Op]:
    """Checkpoints with writes between them, removals of the oldest, of the
    newest and of middle ones, and writes after the newest checkpoint."""
    rng = np.random.default_rng(seed)
    ops: list[Op] = []
    for i in range(12):
        ops.append(("checkpoint", f"c{i}"))
        ops += random_writes(rng, 4)
        if i == 5:
            ops.append(("remove", "c4"))
        if i == 8:
            ops.append(("remove", "c8"))  # the newest, with writes after it
        if i == 9:
            ops.append(("mark", PAGE_CHUNKS * GRAN, PAGE_CHUNKS * GRAN))  # a whole page
    ops += [("remove", "c0"), ("remove", "c11"), ("checkpoint", "c12")]
    return ops + random_writes(rng, 3)


def more_history(seed: int) -> list[Op]:
    """What a converted volume goes through next: enough checkpoints for
    hybrid-1 to fold, and removals around the converted periods."""
    rng = np.random.default_rng(seed + 1000)
    ops: list[Op] = random_writes(rng, 2)
    for i in range(4):
        ops.append(("checkpoint", f"d{i}"))
        ops += random_writes(rng, 3)
        if i == 1:
            ops.append(("remove", "c5"))
    return ops + [("remove", "d3")] + random_writes(rng, 2)


def replay(ops: list[Op], vol: tiered.Volume | None, model: ReferenceVolume) -> None:
    for op in ops:
        if op[0] == "mark":
            model.mark(op[1], op[2])
            if vol is not None:
                vol.mark(op[1], op[2])
        elif op[0] == "checkpoint":
            model.checkpoint(op[1])
            if vol is not None:
                vol.checkpoint(op[1])
        else:
            model.remove(op[1])
            if vol is not None:
                vol.remove_checkpoint(op[1])


def new_model() -> ReferenceVolume:
    return ReferenceVolume(SIZE, GRAN)


# -- checks ----------------------------------------------------------------------


def answers(vol: tiered.Volume) -> dict:
    """Every changed_since and changed_between, as comparable values."""
    names = [c.name for c in vol.checkpoints()]
    out = {}
    for i, a in enumerate(names):
        since = vol.changed_since(a)
        out[a] = (since.offsets.tobytes(), since.lengths.tobytes(), since.exact)
        for b in names[i + 1 :]:
            between = vol.changed_between(a, b)
            out[a, b] = (list(between), between.exact)
    return out


def check_truth(vol: tiered.Volume, model: ReferenceVolume, lost: frozenset[str] = frozenset()) -> None:
    names = model.names()
    assert [c.name for c in vol.checkpoints()] == names
    for i, a in enumerate(names):
        since = vol.changed_since(a)
        if a in lost:
            assert list(since) == [(0, SIZE)] and not since.exact
        else:
            assert list(since) == model.changed_since(a), f"changed_since({a!r})"
            assert since.exact
        # A region that starts and ends inside chunks, across a page boundary.
        lo, hi = (PAGE_CHUNKS - 3) * GRAN + 7, (PAGE_CHUNKS + 70) * GRAN + 9
        part = vol.changed_since(a, lo, hi - lo)
        assert list(part) == ([(lo, hi - lo)] if a in lost else model.changed_since(a, lo, hi))
        for b in names[i + 1 :]:
            got = vol.changed_between(a, b)
            if a in lost:
                assert list(got) == [(0, SIZE)] and not got.exact
                continue
            truth = model.changed_between(a, b)
            assert covers(list(got), truth), f"changed_between({a!r}, {b!r}) missed a chunk"
            assert covers(model.changed_since(a), list(got)), f"changed_between({a!r}, {b!r}) beyond since"
            if got.exact:
                assert list(got) == truth, f"changed_between({a!r}, {b!r}) claims to be exact"


def open_volume(path: str, strategy: tiered.Strategy | None = None) -> tuple[tiered.Store, tiered.Volume]:
    store = tiered.open(path, sync=False)
    return store, store.volume("v", strategy)


def build(path: str, strategy: tiered.Strategy, ops: list[Op]) -> tuple[tiered.Store, tiered.Volume, ReferenceVolume]:
    store = tiered.open(path, sync=False)
    vol = store.create_volume("v", size=SIZE, granularity=GRAN, strategy=strategy)
    model = new_model()
    replay(ops, vol, model)
    return store, vol, model


# -- every pair of strategies --------------------------------------------------------


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_convert_keeps_every_answer(tmp_path, source, target):
    path = str(tmp_path / "s")
    ops = history(seed=PAIRS.index((source, target)))
    store, vol, model = build(path, STRATEGIES[source], ops)
    before = answers(vol)
    vol.convert(STRATEGIES[target])
    assert vol.strategy == STRATEGIES[target]
    after = answers(vol)
    for a in model.names():
        assert after[a] == before[a], f"changed_since({a!r}) changed"
    if source == target == "one-bit":
        assert after == before
    check_truth(vol, model)
    store.close()

    store, vol = open_volume(path)
    assert vol.strategy.fixed() == STRATEGIES[target].fixed()
    assert not vol.unclean_shutdown
    check_truth(vol, model)
    # The converted volume keeps tracking: writes, checkpoints, folds, removals.
    replay(more_history(seed=len(ops)), vol, model)
    check_truth(vol, model)
    # And converts back.
    vol.convert(STRATEGIES[source])
    check_truth(vol, model)
    store.close()

    store, vol = open_volume(path, STRATEGIES[source])
    check_truth(vol, model)
    store.close()


@pytest.mark.parametrize("target", STRATEGIES)
def test_convert_a_volume_without_checkpoints(tmp_path, target):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES["hybrid-1"], history(seed=1))
    for name in model.names():
        vol.remove_checkpoint(name)
        model.remove(name)
    vol.convert(STRATEGIES[target])
    assert vol.checkpoints() == []
    replay([("checkpoint", "x"), ("mark", 5 * GRAN, 1), ("checkpoint", "y"), ("mark", 0, 1)], vol, model)
    check_truth(vol, model)
    store.close()


# -- multi-bit renumbering and its limit -----------------------------------------------

WIDTH_8 = tiered.Strategy("multi-bit", width=8)


def many_checkpoints(created: int, kept: int) -> list[Op]:
    """``created`` checkpoints, each followed by a write, of which the
    ``created - kept`` removed ones are spread over the history."""
    ops: list[Op] = []
    rng = np.random.default_rng(created)
    for i in range(created):
        ops.append(("checkpoint", f"c{i}"))
        ops.append(("mark", int(rng.choice(HOT[:6])) * GRAN, 1))
        ops.append(("mark", int(rng.integers(0, 2 * SEG_CHUNKS)) * GRAN, 1))
    gone = np.linspace(0, created - 1, created - kept).astype(int)
    return ops + [("remove", f"c{i}") for i in gone]


def check_since(vol: tiered.Volume, model: ReferenceVolume) -> None:
    """changed_since of every checkpoint, and changed_between of neighbours
    (checking every pair of hundreds of checkpoints would be slow)."""
    names = model.names()
    assert [c.name for c in vol.checkpoints()] == names
    for name in names:
        assert list(vol.changed_since(name)) == model.changed_since(name), name
    for a, b in itertools.pairwise(names):
        got = vol.changed_between(a, b)
        truth = model.changed_between(a, b)
        assert covers(list(got), truth)
        if got.exact:
            assert list(got) == truth


@pytest.mark.parametrize("source", ["multi-bit-32", "one-bit", "hybrid-1"])
def test_convert_to_width_8_renumbers(tmp_path, source):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES[source], many_checkpoints(created=300, kept=240))
    assert vol.stats()["generation"] == 300
    vol.convert(WIDTH_8)
    assert vol.stats()["generation"] == 240
    assert [c.generation for c in vol.checkpoints()] == list(range(1, 241))
    check_since(vol, model)
    # The renumbered volume takes checkpoints up to its limit, and no more.
    for i in range(15):
        replay([("checkpoint", f"n{i}"), ("mark", i * GRAN, 1)], vol, model)
    with pytest.raises(tiered.CheckpointLimitError):
        vol.checkpoint("one-too-many")
    check_since(vol, model)
    store.close()
    store, vol = open_volume(path, WIDTH_8)
    check_since(vol, model)
    store.close()


@pytest.mark.parametrize("source", ["multi-bit-32", "one-bit"])
def test_too_many_checkpoints_for_width_8_changes_nothing(tmp_path, source):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES[source], many_checkpoints(created=270, kept=256))
    vol.mark(7 * GRAN, 1)  # unpersisted marks must survive the failed conversion too
    model.mark(7 * GRAN, 1)
    before, stats = answers_since(vol), vol.stats()
    with pytest.raises(tiered.CheckpointLimitError, match="256 live checkpoints"):
        vol.convert(WIDTH_8)
    assert vol.strategy == STRATEGIES[source]
    assert answers_since(vol) == before
    assert {k: vol.stats()[k] for k in ("mode", "generation", "checkpoints")} == {
        k: stats[k] for k in ("mode", "generation", "checkpoints")
    }
    check_since(vol, model)
    store.close()
    store, vol = open_volume(path, STRATEGIES[source])
    check_since(vol, model)
    store.close()


def answers_since(vol: tiered.Volume) -> list:
    return [list(vol.changed_since(c.name)) for c in vol.checkpoints()]


# -- refusals -----------------------------------------------------------------------------


def test_readonly_volume_refuses_to_convert(tmp_path):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES["hybrid-1"], history(seed=2))
    store.close()
    with tiered.open(path, readonly=True) as reader:
        vol = reader.volume("v")
        with pytest.raises(tiered.ReadOnlyError):
            vol.convert("one-bit")
        assert vol.strategy.fixed() == STRATEGIES["hybrid-1"].fixed()
        check_truth(vol, model)
    store, vol = open_volume(path, STRATEGIES["hybrid-1"])
    check_truth(vol, model)
    store.close()


@pytest.mark.parametrize(
    "bad",
    [lambda: "two-bit", lambda: 3, lambda: {"mode": "one-bit"}, lambda: tiered.Strategy("multi-bit", width=12)],
    ids=["unknown-mode", "int", "dict", "width-12"],
)
def test_bad_strategy_changes_nothing(tmp_path, bad):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES["multi-bit-8"], history(seed=3))
    before = answers(vol)
    with pytest.raises(tiered.InvalidArgumentError):
        vol.convert(bad())
    assert vol.strategy == STRATEGIES["multi-bit-8"]
    assert answers(vol) == before
    store.close()
    store, vol = open_volume(path, STRATEGIES["multi-bit-8"])
    check_truth(vol, model)
    store.close()


def test_closed_volume_refuses_to_convert(tmp_path):
    store, vol, _ = build(str(tmp_path / "s"), STRATEGIES["one-bit"], [("checkpoint", "a")])
    vol.close()
    with pytest.raises(tiered.ClosedError):
        vol.convert("hybrid")
    store.close()


def test_old_strategy_no_longer_matches(tmp_path):
    path = str(tmp_path / "s")
    store, vol, model = build(path, tiered.Strategy("hybrid"), history(seed=4))
    vol.convert(WIDTH_8)
    with pytest.raises(tiered.StrategyMismatchError):
        store.volume("v", strategy="hybrid")
    assert store.volume("v", strategy=WIDTH_8) is vol
    store.close()
    store = tiered.open(path, sync=False)
    with pytest.raises(tiered.StrategyMismatchError, match="mode"):
        store.volume("v", strategy="hybrid")
    with pytest.raises(tiered.StrategyMismatchError, match="width"):
        store.volume("v", strategy=tiered.Strategy("multi-bit", width=16))
    vol = store.volume("v")
    assert vol.strategy.fixed() == WIDTH_8.fixed()
    check_truth(vol, model)
    store.close()


def test_same_strategy_persists_and_takes_the_new_cache_budget(tmp_path):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES["multi-bit-8"], history(seed=5))
    assert vol.stats()["unflushed"]  # multi-bit checkpoints do not persist marks
    small = tiered.Strategy("multi-bit", width=8, cache_bytes=1 << 20)
    vol.convert(small)
    assert vol.strategy == small and vol.stats()["cache_budget_bytes"] == 1 << 20
    assert not vol.stats()["unflushed"]
    store._storage.close()  # a crash: nothing of the volume's RAM is persisted now
    store, vol = open_volume(path)
    assert not vol.unclean_shutdown
    check_truth(vol, model)
    store.close()


def test_reader_keeps_its_snapshot_across_a_conversion(tmp_path):
    path = str(tmp_path / "s")
    store, vol, model = build(path, STRATEGIES["hybrid-1"], history(seed=8))
    store.close()
    names = model.names()
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            f"""
            import json, sys, tiered
            store = tiered.open({path!r}, readonly=True)
            vol = store.volume("v")
            def since():
                return [list(vol.changed_since(n)) for n in {names!r}]
            first = since()
            print("ready", flush=True)
            sys.stdin.readline()
            same = since() == first
            vol.close()
            vol = store.volume("v")
            print(json.dumps([same, vol.strategy.mode, since() == first]), flush=True)
            """
        )],
        env=CHILD_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert reader.stdout.readline().strip() == "ready"
    store, vol = open_volume(path)
    vol.convert(WIDTH_8)
    store.close()
    out, _ = reader.communicate("go\n", timeout=60)
    assert json.loads(out) == [True, "multi-bit", True]


# -- unclean shutdowns and crashes ---------------------------------------------------------


def child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=CHILD_ENV, stdout=subprocess.PIPE, text=True
    )


def run_writer(path: str, strategy: tiered.Strategy, ops: list[Op], then: str) -> subprocess.Popen:
    """A child that replays ``ops`` on a new volume, then runs ``then``."""
    head = textwrap.dedent(
        f"""
        import json, os, sys, time, tiered
        store = tiered.open({path!r})
        vol = store.create_volume("v", size={SIZE}, granularity={GRAN},
                                  strategy=tiered.Strategy(**{json.dumps(strategy.fixed())}))
        for op in json.loads({json.dumps(json.dumps(ops))}):
            if op[0] == "mark":
                vol.mark(op[1], op[2])
            elif op[0] == "checkpoint":
                vol.checkpoint(op[1])
            else:
                vol.remove_checkpoint(op[1])
        """
    )
    return child(head + textwrap.dedent(then))


UNCLEAN = [
    ("one-bit", "multi-bit-8"),
    ("multi-bit-32", "hybrid-1"),
    ("hybrid-1", "one-bit"),
    ("hybrid-8", "multi-bit-32"),
]


@pytest.mark.parametrize("source, target", UNCLEAN, ids=[f"{a}-to-{b}" for a, b in UNCLEAN])
def test_convert_after_an_unclean_shutdown_keeps_the_loss(tmp_path, source, target):
    path = str(tmp_path / "s")
    ops = history(seed=6)  # ends with marks after the newest checkpoint: lost in the crash
    writer = run_writer(path, STRATEGIES[source], ops, "os._exit(0)\n")
    assert writer.wait(timeout=120) == 0
    model = new_model()
    replay(ops, None, model)
    lost = frozenset(model.names())
    store, vol = open_volume(path)
    assert vol.unclean_shutdown
    replay([("checkpoint", "after"), ("mark", 3 * GRAN, 1), ("mark", PAGE_CHUNKS * GRAN, 1)], vol, model)
    vol.convert(STRATEGIES[target])
    assert vol.unclean_shutdown
    check_truth(vol, model, lost)
    store.close()
    store, vol = open_volume(path)
    assert vol.unclean_shutdown and vol.strategy.fixed() == STRATEGIES[target].fixed()
    check_truth(vol, model, lost)
    for name in [n for n in model.names() if n in lost]:
        vol.remove_checkpoint(name)
        model.remove(name)
    assert not vol.unclean_shutdown
    check_truth(vol, model)
    store.close()


def test_unclean_shutdown_survives_renumbering(tmp_path):
    path = str(tmp_path / "s")
    ops = many_checkpoints(created=300, kept=200)
    writer = run_writer(path, STRATEGIES["multi-bit-32"], ops, "vol.mark(0, 1)\nos._exit(0)\n")
    assert writer.wait(timeout=120) == 0
    model = new_model()
    replay(ops + [("mark", 0, 1)], None, model)
    store, vol = open_volume(path)
    replay([("checkpoint", "after"), ("mark", 9 * GRAN, 1)], vol, model)
    vol.convert(WIDTH_8)
    assert vol.stats()["generation"] == 201
    assert vol.unclean_shutdown
    names = model.names()
    assert names[-1] == "after"
    for name in names[:-1]:  # every checkpoint from before the crash
        assert list(vol.changed_since(name)) == [(0, SIZE)]
    assert list(vol.changed_since("after")) == model.changed_since("after")
    store.close()
    store, vol = open_volume(path, WIDTH_8)
    assert vol.unclean_shutdown
    assert list(vol.changed_since(names[-2])) == [(0, SIZE)]
    assert list(vol.changed_since("after")) == model.changed_since("after")
    store.close()


CRASHES = [("multi-bit-8", "one-bit", "exit"), ("one-bit", "hybrid-1", "sigkill"), ("hybrid-1", "multi-bit-32", "exit")]


@pytest.mark.parametrize("source, target, how", CRASHES, ids=["-".join(c) for c in CRASHES])
def test_crash_right_after_convert_leaves_the_new_strategy(tmp_path, source, target, how):
    path = str(tmp_path / "s")
    # The marks after the newest checkpoint are in RAM only until convert
    # stores them.
    ops = history(seed=7)
    end = {
        "exit": "os._exit(0)\n",
        "sigkill": "print('converted', flush=True)\ntime.sleep(60)\n",
    }[how]
    target_fixed = json.dumps(STRATEGIES[target].fixed())
    writer = run_writer(path, STRATEGIES[source], ops, f"vol.convert(tiered.Strategy(**{target_fixed}))\n{end}")
    if how == "sigkill":
        assert writer.stdout.readline().strip() == "converted"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    else:
        assert writer.wait(timeout=120) == 0
    model = new_model()
    replay(ops, None, model)
    store, vol = open_volume(path)
    assert vol.strategy.fixed() == STRATEGIES[target].fixed()
    assert not vol.unclean_shutdown
    check_truth(vol, model)
    store.close()
