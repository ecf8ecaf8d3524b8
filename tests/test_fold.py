"""Hybrid's page kernels against the table-based code they replace: the
fold's page rewrite (tiered.storage.fold), hybrid folds stopped at any
segment, and the query's scan of generation pages (tiered.storage.scan_kernels)."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from test_kernels import N_CHUNKS, SHIFT, table_gens, writes

import tiered
from tiered.bitmaps.table import SegmentTable
from tiered.config import PAGE_CHUNKS, PAGE_SEGMENTS, SEG_CHUNKS
from tiered.errors import CorruptionError
from tiered.storage import codec
from tiered.storage.fold import PageFold

N_SEGMENTS = -(-N_CHUNKS // SEG_CHUNKS)
GENS = np.dtype(np.uint32)
KEY = b"test-key"  # format 2's checksum covers the key a value is stored under
WHERE = dict(key=KEY, version=codec.FORMAT_VERSION)


def stored_gens(table: SegmentTable, page: int) -> np.ndarray:
    """A page of a generation table as the fold reads it: payload past the width byte."""
    spans = table.spans()
    if page not in spans.pages().tolist():
        return np.frombuffer(b"", np.uint8)
    value = codec.encode_gens_page(spans.page_slice(page), page, KEY)
    return codec.gens_payload(value, page, GENS, "test", KEY, codec.FORMAT_VERSION, N_SEGMENTS)


def stored_bits(table: SegmentTable, page: int) -> np.ndarray | None:
    spans = table.spans()
    if page not in spans.pages().tolist():
        return None
    value = codec.encode_bits_page(spans.page_slice(page), page, KEY)
    return codec.bits_payload(value, page, "test", KEY, codec.FORMAT_VERSION, N_SEGMENTS)


def fold_by_steps(base: SegmentTable, writesets: list[tuple[int, SegmentTable]], steps: list[int]) -> SegmentTable:
    """Every page through PageFold, ``steps`` segments at a time (cycled),
    each step computed twice and the first result dropped, as when a
    transaction is retried."""
    out = SegmentTable(N_CHUNKS, GENS)
    for page in range(-(-N_SEGMENTS // PAGE_SEGMENTS)):
        ws = [(g, b) for g, t in writesets if (b := stored_bits(t, page)) is not None]
        fold = PageFold(page, 0, stored_gens(base, page), ws, N_SEGMENTS, GENS, "test")
        i = 0
        while True:
            fold.advance(steps[i % len(steps)])  # dropped: never committed
            step = fold.advance(steps[i % len(steps)])
            fold.commit(step)
            i += 1
            if step.payload is not None:
                break
        value = codec.wrap(codec.KIND_GENS_PAGE, step.payload, KEY)
        out.load(codec.decode_gens_page(value, page, GENS, "test", **WHERE, n_segments=N_SEGMENTS))
    return out


@st.composite
def histories(draw):
    base = SegmentTable(N_CHUNKS, GENS)
    for gen in range(1, draw(st.integers(0, 3)) + 1):
        base.mark_many(*draw(writes(max_n=6)), SHIFT, gen)
    writesets = []
    for gen in range(10, 10 + draw(st.integers(0, 4))):
        table = SegmentTable(N_CHUNKS)
        table.mark_many(*draw(writes(max_n=6)), SHIFT, 1)
        writesets.append((gen, table))
    steps = draw(st.lists(st.sampled_from([1, 2, 7, 300, PAGE_SEGMENTS]) | st.integers(1, PAGE_SEGMENTS), min_size=1, max_size=4))
    return base, writesets, steps


@settings(max_examples=80, deadline=None)
@given(histories())
def test_page_fold_matches_assign(history):
    base, writesets, steps = history
    expected = SegmentTable(N_CHUNKS, GENS)
    expected.load(base.spans())
    for gen, table in writesets:
        expected.assign(table.spans(), gen)
    assert table_gens(fold_by_steps(base, writesets, steps)) == table_gens(expected)


def test_uniform_page_stays_one_record():
    base = SegmentTable(N_CHUNKS, GENS)
    base.mark(0, PAGE_CHUNKS << SHIFT, SHIFT, 3)
    full = SegmentTable(N_CHUNKS)
    full.mark(0, PAGE_CHUNKS << SHIFT, SHIFT, 1)
    fold = PageFold(0, 0, stored_gens(base, 0), [(12, stored_bits(full, 0))], N_SEGMENTS, GENS, "test")
    payload = fold.advance().payload
    value = codec.wrap(codec.KIND_GENS_PAGE, payload, KEY)
    spans = codec.decode_gens_page(value, 0, GENS, "test", **WHERE, n_segments=N_SEGMENTS)
    assert spans.count.tolist() == [PAGE_SEGMENTS] and spans.ref.tolist() == [-12 - 2]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.booleans())
def test_garbage_pages_never_crash_the_fold(gens_payload, bits_payload, with_writeset):
    ws = [(5, np.frombuffer(bits_payload, np.uint8))] if with_writeset else []
    try:
        fold = PageFold(1, 0, np.frombuffer(gens_payload, np.uint8), ws, N_SEGMENTS, GENS, "fuzz")
        payload = fold.advance().payload
    except CorruptionError:
        return
    # What it wrote decodes.
    spans = codec.decode_gens_page(codec.wrap(codec.KIND_GENS_PAGE, payload, KEY), 1, GENS, "fuzz", **WHERE, n_segments=N_SEGMENTS)
    assert (spans.first >> 10 == 1).all()


def test_truncated_stored_page_is_corruption():
    base = SegmentTable(N_CHUNKS, GENS)
    base.mark_many(np.array([0, 5 << 20], np.int64), np.array([3000, 70000], np.int64), SHIFT, 4)
    payload = stored_gens(base, 0)
    fold = PageFold(0, 0, payload[:-2], [], N_SEGMENTS, GENS, "page G/0/0")
    with pytest.raises(CorruptionError, match="page G/0/0"):
        fold.advance()


# -- hybrid volumes ----------------------------------------------------------

GRANULARITY = 512
SIZE = (3 * PAGE_CHUNKS + 5 * SEG_CHUNKS + 7) * GRANULARITY  # three pages and a ragged fourth


N_VOLUME_CHUNKS = SIZE // GRANULARITY


def random_writes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = rng.integers(0, N_VOLUME_CHUNKS, n) * GRANULARITY
    lengths = np.minimum(rng.choice([512, 4096, 65536], n), SIZE - offsets)
    return offsets.astype(np.int64), lengths.astype(np.int64)


def chunk_mask(offsets, lengths) -> np.ndarray:
    mask = np.zeros(N_VOLUME_CHUNKS, bool)
    for o, n in zip(offsets, lengths):
        if n:
            mask[o // GRANULARITY : -(-(o + n) // GRANULARITY)] = True
    return mask


def test_fold_steps_are_bounded_and_answers_exact(tmp_path, monkeypatch):
    """Every checkpoint rewrites at most 1/recent of the fold's segments,
    and answers stay exact at every step, across a reopen mid-page and a
    retried transaction."""
    recent = 3
    done: list[int] = []
    advance = PageFold.advance

    def counted(self, segments=None):
        step = advance(self, segments)
        done.append(step.segments)
        return step

    monkeypatch.setattr(PageFold, "advance", counted)
    rng = np.random.default_rng(5)
    newest = np.full(N_VOLUME_CHUNKS, -1, np.int64)  # the last period that wrote each chunk
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = store.create_volume("v", SIZE, GRANULARITY, strategy=tiered.Strategy("hybrid", recent=recent))
    pages = -(-SIZE // GRANULARITY // PAGE_CHUNKS)
    share = -(-(pages * PAGE_SEGMENTS - (PAGE_SEGMENTS - 5 - 1)) // recent)
    for i in range(40):
        done.clear()
        vol.checkpoint(f"c{i}")
        assert sum(done) <= share, (i, done)
        if i == 20:  # reopen: the page being rewritten starts again
            store.close()
            store = tiered.open(str(tmp_path / "s"), sync=False)
            vol = store.volume("v")
        if i == 25:  # a transaction run twice, the first one aborted
            storage = vol._storage
            write = storage.write

            def twice(fn):
                with storage.env.begin(write=True) as txn:
                    fn(txn)
                    txn.abort()
                done.clear()  # count the steps of the run that commits
                return write(fn)

            monkeypatch.setattr(storage, "write", twice)
        offsets, lengths = random_writes(rng, 300)
        vol.mark_many(offsets, lengths)
        newest[chunk_mask(offsets, lengths)] = i
        for j in (0, i // 2, i):
            ext = vol.changed_since(f"c{j}")
            assert np.array_equal(chunk_mask(ext.offsets.tolist(), ext.lengths.tolist()), newest >= j), (i, j)
    assert vol._history.folded_through > 0
    store.close()


# -- the query's scan of generation pages -------------------------------------


def same_bits(a: SegmentTable, b: SegmentTable) -> bool:
    (ao, al), (bo, bl) = a.spans().runs(0, N_CHUNKS), b.spans().runs(0, N_CHUNKS)
    return np.array_equal(ao, bo) and np.array_equal(al, bl)


def threshold_by_decoding(value: bytes, page: int, dtype, at_least: int) -> SegmentTable:
    table = SegmentTable(N_CHUNKS, dtype)
    table.load(codec.decode_gens_page(value, page, dtype, "test", **WHERE, n_segments=N_SEGMENTS))
    out = SegmentTable(N_CHUNKS)
    out.or_at_least(table.spans(), at_least)
    return out


@pytest.mark.parametrize("density", [0.002, 0.05, 0.6, 0.97])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_scan_at_least_matches_decoding(density, dtype):
    rng = np.random.default_rng(int(density * 1000) + np.dtype(dtype).itemsize)
    table = SegmentTable(N_CHUNKS, dtype)
    top = {1: 250, 2: 60000, 4: 70000}[np.dtype(dtype).itemsize]
    # 16 segments at the start of page 0 and 8 at the start of page 1
    region = np.concatenate([np.arange(16 * SEG_CHUNKS), PAGE_CHUNKS + np.arange(8 * SEG_CHUNKS)])
    chunks = region[rng.random(len(region)) < density].astype(np.int64)
    for c, g in zip(chunks.tolist(), rng.integers(1, top, len(chunks)).tolist()):
        table.mark(c << SHIFT, 1, SHIFT, g)
    table.mark((PAGE_CHUNKS + 9 * SEG_CHUNKS) << SHIFT, 3 * SEG_CHUNKS << SHIFT, SHIFT, 7)  # uniform segments
    spans = table.spans()
    for page in spans.pages().tolist():
        value = codec.encode_gens_page(spans.page_slice(page), page, KEY)
        for at_least in (1, 7, 8, top // 2, top):
            got = SegmentTable(N_CHUNKS)
            codec.or_gens_page_at_least(value, page, np.dtype(dtype), "test", got, at_least, **WHERE)
            assert same_bits(got, threshold_by_decoding(value, page, dtype, at_least))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([np.uint8, np.uint32]), st.integers(1, 300))
def test_garbage_never_crashes_the_scan(payload, dtype, at_least):
    value = codec.wrap(codec.KIND_GENS_PAGE, bytes([np.dtype(dtype).itemsize]) + payload, KEY)
    got = SegmentTable(N_CHUNKS)
    try:
        codec.or_gens_page_at_least(value, 1, np.dtype(dtype), "fuzz", got, at_least, **WHERE)
    except CorruptionError:
        with pytest.raises(CorruptionError):
            codec.decode_gens_page(value, 1, dtype, "fuzz", **WHERE, n_segments=N_SEGMENTS)
        return
    assert same_bits(got, threshold_by_decoding(value, 1, dtype, at_least))


def test_folds_finish_when_every_checkpoint_is_made_by_a_new_process(tmp_path):
    """Open, checkpoint, close, again and again: closing stores the page
    being rewritten, so every fold still finishes and the one-bit
    writesets stay bounded."""
    recent = 2
    rng = np.random.default_rng(9)
    newest = np.full(N_VOLUME_CHUNKS, -1, np.int64)
    path = str(tmp_path / "s")
    with tiered.open(path, sync=False) as store:
        store.create_volume("v", SIZE, GRANULARITY, strategy=tiered.Strategy("hybrid", recent=recent))
    for i in range(24):
        with tiered.open(path, sync=False) as store:
            vol = store.volume("v")
            vol.checkpoint(f"c{i}")
            offsets, lengths = random_writes(rng, 200)
            vol.mark_many(offsets, lengths)
            newest[chunk_mask(offsets, lengths)] = i
            assert len(vol._history.writesets(0)) <= 3 * recent + 1
    with tiered.open(path, sync=False) as store:
        vol = store.volume("v")
        assert vol._history.folded_through >= 24 - 3 * recent - 1
        for j in (0, 11, 23):
            ext = vol.changed_since(f"c{j}")
            assert np.array_equal(chunk_mask(ext.offsets.tolist(), ext.lengths.tolist()), newest >= j)
