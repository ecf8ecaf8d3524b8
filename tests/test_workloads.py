"""Synthetic workloads: counts, bounds, alignment, checkpoints, shape of each kind."""

from __future__ import annotations

import numpy as np
import pytest

import tiered
from tiered.replay.batches import WriteBatch
from tiered.errors import InvalidArgumentError
from tiered.replay.workloads import KINDS, CheckpointMark, Workload, generate, schedule_checkpoints

MiB = 1 << 20


def collect(w: Workload) -> tuple[np.ndarray, np.ndarray, list]:
    """All offsets and lengths, plus the event list."""
    events = list(generate(w))
    batches = [e for e in events if isinstance(e, WriteBatch)]
    offs = np.concatenate([b.offsets for b in batches]) if batches else np.empty(0, np.int64)
    lens = np.concatenate([b.lengths for b in batches]) if batches else np.empty(0, np.int64)
    return offs, lens, events


def mark_positions(events: list) -> list[tuple[int, int]]:
    """(index, writes before it) for every checkpoint mark."""
    out, done = [], 0
    for e in events:
        if isinstance(e, WriteBatch):
            done += len(e)
        else:
            out.append((e.index, done))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_count_bounds_alignment(kind: str) -> None:
    w = Workload(kind, volume_size=64 * MiB + 12345, writes=50_000, sizes=(4096, 65536, 5000),
                 weights=(0.8, 0.1, 0.1), batch=7000, seed=3)
    offs, lens, events = collect(w)
    assert len(offs) == 50_000
    assert offs.dtype == np.int64 and lens.dtype == np.int64
    assert (offs >= 0).all() and (offs + lens <= w.volume_size).all()
    assert (offs % 4096 == 0).all()
    assert set(np.unique(lens).tolist()) == {4096, 5000, 65536}
    assert all(len(e) <= 7000 for e in events if isinstance(e, WriteBatch))


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_every(kind: str) -> None:
    w = Workload(kind, volume_size=64 * MiB, writes=10_000, checkpoint_every=3000, batch=1024)
    _, _, events = collect(w)
    # Mark i opens period i, so it comes after exactly i * N writes; batches
    # cannot straddle it because it sits between events.
    assert mark_positions(events) == [(0, 0), (1, 3000), (2, 6000), (3, 9000)]
    assert isinstance(events[0], CheckpointMark) and isinstance(events[-1], WriteBatch)


def test_no_trailing_mark_when_exact() -> None:
    w = Workload("uniform", volume_size=MiB, writes=6000, checkpoint_every=3000)
    assert mark_positions(list(generate(w))) == [(0, 0), (1, 3000)]


def test_checkpoint_seconds() -> None:
    w = Workload("uniform", volume_size=64 * MiB, writes=20_000, iops=1000.0, checkpoint_seconds=2.0,
                 batch=4096, seed=5)
    events = list(generate(w))
    period, seen = 0, [0]
    for e in events[1:]:
        if isinstance(e, CheckpointMark):
            assert e.index == period + 1
            period = e.index
            seen.append(period)
        else:
            assert e.times is not None and e.times.dtype == np.float64
            # Every write of a batch lies in the period opened by the last mark.
            assert (np.floor(e.times / 2.0) == period).all()
    times = np.concatenate([e.times for e in events if isinstance(e, WriteBatch)])
    assert (np.diff(times) > 0).all()
    assert sum(len(e) for e in events if isinstance(e, WriteBatch)) == 20_000
    # ~20 s of trace at 1000 IOPS, so about 10 periods.
    assert 8 <= len(seen) <= 12


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    def run(seed: int) -> list:
        w = Workload(kind, volume_size=256 * MiB, writes=20_000, sizes=(4096, 16384), batch=3000,
                     checkpoint_every=5000, iops=500.0, seed=seed, skewed=True)
        return list(generate(w))

    a, b, c = run(7), run(7), run(8)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert type(x) is type(y)
        if isinstance(x, WriteBatch):
            assert np.array_equal(x.offsets, y.offsets) and np.array_equal(x.lengths, y.lengths)
            assert np.array_equal(x.times, y.times)
        else:
            assert x == y
    assert not np.array_equal(collect_offsets(a), collect_offsets(c))


def collect_offsets(events: list) -> np.ndarray:
    return np.concatenate([e.offsets for e in events if isinstance(e, WriteBatch)])


def top_share(offs: np.ndarray, blocks: int, fraction: float = 0.01) -> float:
    """Share of writes hitting the most-written `fraction` of the blocks."""
    counts = np.sort(np.bincount(offs // 4096, minlength=blocks))[::-1]
    return counts[: max(1, int(blocks * fraction))].sum() / len(offs)


def test_zipf_skew_and_scatter() -> None:
    size, n = 64 * MiB, 100_000
    blocks = size // 4096
    zipf, _, _ = collect(Workload("zipf", volume_size=size, writes=n, seed=1))
    uniform, _, _ = collect(Workload("uniform", volume_size=size, writes=n, seed=1))
    # a=1.2 over 16384 blocks puts ~3/4 of writes on the top 1%; uniform
    # puts ~2% there (1% plus Poisson noise).
    assert top_share(zipf, blocks) > 0.5
    assert top_share(uniform, blocks) < 0.05
    # The hot blocks are scattered, not packed at the start of the volume.
    hottest = np.argsort(np.bincount(zipf // 4096, minlength=blocks))[::-1][:20]
    assert hottest.max() - hottest.min() > blocks // 4


def test_zipf_huge_volume() -> None:
    # No array of all blocks: a 1 PiB volume with byte alignment is fine.
    w = Workload("zipf", volume_size=1 << 50, writes=10_000, align=512, seed=2)
    offs, lens, _ = collect(w)
    assert (offs % 512 == 0).all() and (offs + lens <= 1 << 50).all()
    assert len(np.unique(offs)) < 10_000  # hot blocks repeat


def test_sequential_wraps() -> None:
    size = 4 * MiB  # 1024 blocks of 4 KiB
    w = Workload("sequential", volume_size=size, writes=3000, batch=700)
    offs, _lens, _ = collect(w)
    # Fixed-size appends: write i lands at (i mod 1024) * 4 KiB.
    assert np.array_equal(offs, (np.arange(3000) % 1024) * 4096)


def test_sequential_wraps_variable_sizes_in_log_region() -> None:
    size = 16 * MiB
    w = Workload("sequential", volume_size=size, writes=5000, sizes=(4096, 12288, 6000),
                 log_region=0.25, batch=333, seed=4)
    offs, lens, _ = collect(w)
    end = size // 4
    assert (offs + lens <= end).all() and (offs % 4096 == 0).all()
    slots = -(-lens // 4096) * 4096
    step = np.diff(offs)
    appended = step == slots[:-1]
    wrapped = offs[1:] == 0
    assert (appended | wrapped).all()  # every write follows the last, or wraps
    assert wrapped.sum() >= 5  # ~5000 * 8 KiB / 4 MiB laps
    # A wrap only happens when the next write would not fit before the end.
    assert (offs[:-1][wrapped] + slots[:-1][wrapped] + slots[1:][wrapped] > end).all()


def test_database_mixes_log_and_pages() -> None:
    size = 256 * MiB
    w = Workload("database", volume_size=size, writes=50_000, log_fraction=0.3, seed=9)
    offs, lens, _ = collect(w)
    log_end = size // 16
    in_log = offs < log_end
    assert abs(in_log.mean() - 0.3) < 0.02
    assert (lens == 8192).all()  # default database page
    assert (offs[in_log] + lens[in_log] <= log_end).all()
    # Log writes are appends; page writes are spread over the rest.
    log_offs = offs[in_log]
    assert np.array_equal(log_offs, (np.arange(len(log_offs)) * 8192) % log_end)
    pages = offs[~in_log]
    assert pages.min() >= log_end and pages.max() > size - size // 8
    # Uniform over ~61k slots: ~76% of 35k draws are distinct (birthday collisions).
    assert len(np.unique(pages)) > 0.7 * len(pages)


def test_database_skewed() -> None:
    size = 256 * MiB
    w = Workload("database", volume_size=size, writes=50_000, skewed=True, seed=9)
    offs, _, _ = collect(w)
    pages = offs[offs >= size // 16]
    assert len(np.unique(pages)) < 0.5 * len(pages)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kind": "random"}, "kind"),
        ({"volume_size": 0}, "volume_size"),
        ({"writes": 0}, "writes"),
        ({"writes": -5}, "writes"),
        ({"writes": 1.5}, "writes"),
        ({"batch": 0}, "batch"),
        ({"align": 0}, "align"),
        ({"seed": -1}, "seed"),
        ({"write_size": 2 * MiB}, "write_size"),
        ({"sizes": (4096, 2 * MiB)}, "sizes"),
        ({"sizes": ()}, "sizes"),
        ({"sizes": (4096, 0)}, "sizes"),
        ({"sizes": (4096,), "weights": (1.0, 2.0)}, "weights"),
        ({"sizes": (4096, 8192), "weights": (0.0, 0.0)}, "weights"),
        ({"sizes": (4096,), "write_size": 4096}, "write_size"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"checkpoint_seconds": 1.0}, "checkpoint_seconds"),
        ({"checkpoint_seconds": -1.0, "iops": 10.0}, "checkpoint_seconds"),
        ({"checkpoint_every": 5, "checkpoint_seconds": 1.0, "iops": 10.0}, "checkpoint_every"),
        ({"iops": 0.0}, "iops"),
        ({"kind": "zipf", "zipf_a": 1.0}, "zipf_a"),
        ({"log_region": 0.0}, "log_region"),
        ({"log_region": 1.5}, "log_region"),
        ({"kind": "database", "log_fraction": 1.2}, "log_fraction"),
        ({"kind": "database", "log_region": 1 / 1024}, "log_region"),
        ({"kind": "database", "log_region": 1.0}, "log_region"),
    ],
)
def test_bad_arguments(kwargs: dict, field: str) -> None:
    args = {"kind": "uniform", "volume_size": MiB, "writes": 100}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError, match=field):
        Workload(**args)


def test_write_batch_checks_dtypes() -> None:
    ok = np.zeros(3, np.int64)
    WriteBatch(ok, ok, None)
    with pytest.raises(InvalidArgumentError, match="offsets"):
        WriteBatch(np.zeros(3, np.int32), ok, None)
    with pytest.raises(InvalidArgumentError, match="lengths"):
        WriteBatch(ok, np.zeros(2, np.int64), None)
    with pytest.raises(InvalidArgumentError, match="times"):
        WriteBatch(ok, ok, np.zeros(3, np.float32))


def test_lists_become_tuples() -> None:
    w = Workload("uniform", volume_size=MiB, writes=10, sizes=[4096, 8192], weights=[1, 3])
    assert w.sizes == (4096, 8192) and w.weights == (1.0, 3.0)
    hash(w)


@pytest.mark.parametrize("kind", KINDS)
def test_replay_into_volume(tmp_path, kind: str) -> None:
    size = 64 * MiB
    w = Workload(kind, volume_size=size, writes=20_000, checkpoint_every=5000, batch=2048,
                 sizes=(4096, 65536), weights=(0.9, 0.1), seed=11)
    st = tiered.open(str(tmp_path / "s"), sync=False)
    try:
        vol = st.create_volume("v", size=size, strategy="hybrid")
        expected: dict[int, np.ndarray] = {}  # period -> chunks written in it
        period = -1
        for ev in generate(w):
            if isinstance(ev, WriteBatch):
                vol.mark_many(ev.offsets, ev.lengths)
                first = ev.offsets // vol.granularity
                last = (ev.offsets + ev.lengths - 1) // vol.granularity
                touched = [np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist())]
                expected[period] = np.union1d(expected[period], np.concatenate(touched))
            else:
                vol.checkpoint(f"c{ev.index}")
                period = ev.index
                expected[period] = np.empty(0, np.int64)
        assert [c.name for c in vol.checkpoints()] == ["c0", "c1", "c2", "c3"]
        for since in range(4):
            want = np.unique(np.concatenate([expected[p] for p in range(since, 4)]))
            g = vol.granularity
            got = [np.arange(o // g, (o + n - 1) // g + 1) for o, n in vol.changed_since(f"c{since}")]
            got_chunks = np.unique(np.concatenate(got)) if got else np.empty(0, np.int64)
            assert np.array_equal(got_chunks, want)
    finally:
        st.close()


# -- checkpoints for streams without any (traces) --------------------------------


def _flatten(events) -> list:
    out = []
    for ev in events:
        if isinstance(ev, CheckpointMark):
            out.append(("mark", ev.index))
        else:
            out.extend(ev.offsets.tolist())
    return out


def _batches(sizes, times=False) -> list[WriteBatch]:
    out, start = [], 0
    for n in sizes:
        offs = np.arange(start, start + n, dtype=np.int64)
        clock = offs.astype(np.float64) / 10 if times else None
        out.append(WriteBatch(offs, np.ones(n, np.int64), clock))
        start += n
    return out


@pytest.mark.parametrize("sizes", [[5, 7], [12], [1] * 12, [3, 3, 3, 3]])
def test_schedule_checkpoints_every_n_writes_ignores_batch_boundaries(sizes):
    got = _flatten(schedule_checkpoints(_batches(sizes), every=3))
    expected = [("mark", 0), 0, 1, 2, ("mark", 1), 3, 4, 5, ("mark", 2), 6, 7, 8, ("mark", 3), 9, 10, 11]
    assert got == expected


def test_schedule_checkpoints_by_trace_time_keeps_empty_periods():
    # times are offset/10 s: writes 0..9 in second 0, 10..19 in second 1...
    batches = _batches([15, 10])
    timed = [WriteBatch(b.offsets, b.lengths, np.where(b.offsets < 20, b.offsets / 10, b.offsets / 10 + 2))
             for b in batches]
    # Writes 20..24 come at 4.0..4.4 s: seconds 2 and 3 have no writes but still get their marks.
    got = _flatten(schedule_checkpoints(timed, seconds=1.0))
    expected = [("mark", 0), *range(10), ("mark", 1), *range(10, 20), ("mark", 2), ("mark", 3), ("mark", 4),
                *range(20, 25)]
    assert got == expected


def test_schedule_checkpoints_bad_arguments():
    with pytest.raises(tiered.InvalidArgumentError, match="one of every"):
        list(schedule_checkpoints(_batches([3])))
    with pytest.raises(tiered.InvalidArgumentError, match="need timestamps"):
        list(schedule_checkpoints(_batches([3]), seconds=1.0))
    with pytest.raises(tiered.InvalidArgumentError, match="every"):
        list(schedule_checkpoints(_batches([3]), every=0))
