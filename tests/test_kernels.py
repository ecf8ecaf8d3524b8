"""The numba kernels against naive Python versions."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from naive import naive_mark_bits, naive_mark_gens, naive_runs

from tiered.storage import codec, keys
from tiered.config import PAGE_CHUNKS, PAGE_SEGMENTS, SEG_CHUNKS
from tiered.errors import CorruptionError
from tiered.bitmaps.table import SegmentTable

N_CHUNKS = 2 * PAGE_CHUNKS + 3 * SEG_CHUNKS + 17
N_SEGMENTS = -(-N_CHUNKS // SEG_CHUNKS)
SHIFT = 9  # 512-byte chunks
BOUNDARIES = [0, 63, 64, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_CHUNKS - 1, PAGE_CHUNKS, N_CHUNKS - 1]


@st.composite
def writes(draw, max_n=40):
    n = draw(st.integers(0, max_n))
    offs, lens = [], []
    size = N_CHUNKS << SHIFT
    for _ in range(n):
        base = draw(st.sampled_from(BOUNDARIES) | st.integers(0, N_CHUNKS - 1))
        off = min(size, max(0, (base << SHIFT) + draw(st.integers(-600, 600))))
        length = draw(st.sampled_from([0, 1, 512, 513, 64 << SHIFT, SEG_CHUNKS << SHIFT]) | st.integers(0, 5 * SEG_CHUNKS << SHIFT))
        offs.append(off)
        lens.append(min(length, size - off))
    return np.array(offs, np.int64), np.array(lens, np.int64)


def table_bits(table: SegmentTable) -> set[int]:
    starts, counts = table.spans().runs(0, table.n_chunks)
    return {c for s, n in zip(starts.tolist(), counts.tolist()) for c in range(s, s + n)}


def table_gens(table: SegmentTable) -> dict[int, int]:
    """Non-zero generations of a table, chunk by chunk (small tables only)."""
    out: dict[int, int] = {}
    spans = table.spans()
    for first, count, ref in zip(spans.first.tolist(), spans.count.tolist(), spans.ref.tolist()):
        for seg in range(first, first + count):
            for k in range(SEG_CHUNKS):
                c = seg * SEG_CHUNKS + k
                if c >= table.n_chunks:
                    break
                v = -ref - 2 if ref < 0 else int(spans.rows[ref, k])
                if v:
                    out[c] = v
    return out


@settings(max_examples=60, deadline=None)
@given(writes())
def test_mark_bits_matches_naive(batch):
    offs, lens = batch
    table = SegmentTable(N_CHUNKS)
    table.mark_many(offs, lens, SHIFT, 1)
    expected: set[int] = set()
    naive_mark_bits(expected, offs.tolist(), lens.tolist(), SHIFT)
    assert table_bits(table) == expected
    assert table.spans().count_bits() == len(expected)


@settings(max_examples=40, deadline=None)
@given(writes(max_n=10))
def test_single_mark_equals_batch(batch):
    offs, lens = batch
    one, many = SegmentTable(N_CHUNKS), SegmentTable(N_CHUNKS)
    for o, n in zip(offs.tolist(), lens.tolist()):
        one.mark(o, n, SHIFT, 1)
    many.mark_many(offs, lens, SHIFT, 1)
    assert table_bits(one) == table_bits(many)


@settings(max_examples=30, deadline=None)
@given(st.lists(writes(max_n=6), min_size=1, max_size=4), st.sampled_from([np.uint8, np.uint16, np.uint32]))
def test_mark_gens_and_threshold_match_naive(batches, dtype):
    table = SegmentTable(N_CHUNKS, dtype)
    expected: dict[int, int] = {}
    for gen, (offs, lens) in enumerate(batches, start=1):
        table.mark_many(offs, lens, SHIFT, gen)
        naive_mark_gens(expected, offs.tolist(), lens.tolist(), SHIFT, gen)
    if sum(len(o) for o, _ in batches) and max(lens.sum() for _, lens in batches) < 4 * SEG_CHUNKS << SHIFT:
        assert table_gens(table) == expected
    for at_least in range(1, len(batches) + 2):
        bits = SegmentTable(N_CHUNKS)
        bits.or_at_least(table.spans(), at_least)
        assert table_bits(bits) == {c for c, g in expected.items() if g >= at_least}
        for below in range(at_least, len(batches) + 2):
            band = SegmentTable(N_CHUNKS)
            band.or_at_least(table.spans(), at_least, below)
            assert table_bits(band) == {c for c, g in expected.items() if at_least <= g < below}


@settings(max_examples=40, deadline=None)
@given(writes(max_n=15), writes(max_n=15))
def test_or_spans_is_union(a, b):
    ta, tb = SegmentTable(N_CHUNKS), SegmentTable(N_CHUNKS)
    ta.mark_many(*a, SHIFT, 1)
    tb.mark_many(*b, SHIFT, 1)
    expected = table_bits(ta) | table_bits(tb)
    ta.or_spans(tb.spans())
    assert table_bits(ta) == expected


@settings(max_examples=30, deadline=None)
@given(writes(max_n=8), writes(max_n=8), st.integers(1, 200))
def test_assign_sets_generation_of_marked_chunks(base, bits, gen):
    gens = SegmentTable(N_CHUNKS, np.uint32)
    gens.mark_many(*base, SHIFT, 7)
    marked = SegmentTable(N_CHUNKS)
    marked.mark_many(*bits, SHIFT, 1)
    expected: dict[int, int] = {}
    naive_mark_gens(expected, base[0].tolist(), base[1].tolist(), SHIFT, 7)
    for c in table_bits(marked):
        expected[c] = gen
    gens.assign(marked.spans(), gen)
    at_least = SegmentTable(N_CHUNKS)
    at_least.or_at_least(gens.spans(), 1)
    assert table_bits(at_least) == set(expected)
    exact = SegmentTable(N_CHUNKS)
    exact.or_at_least(gens.spans(), gen)
    assert table_bits(exact) == {c for c, g in expected.items() if g >= gen}


@settings(max_examples=40, deadline=None)
@given(writes(max_n=20), st.integers(0, N_CHUNKS), st.integers(0, N_CHUNKS))
def test_runs_clip_to_region(batch, a, b):
    lo, hi = min(a, b), max(a, b)
    table = SegmentTable(N_CHUNKS)
    table.mark_many(*batch, SHIFT, 1)
    starts, counts = table.spans().runs(lo, hi)
    assert list(zip(starts.tolist(), counts.tolist())) == naive_runs(table_bits(table), lo, hi)


def test_remap_preserves_order_of_live_generations():
    table = SegmentTable(N_CHUNKS, np.uint8)
    for gen in (3, 9, 20, 21, 40):
        table.mark(gen * 5000 << SHIFT, (gen + 1) << SHIFT, SHIFT, gen)
    table.set_chunks(PAGE_CHUNKS, 2 * PAGE_CHUNKS - 1, 21)  # a uniform page

    def at_least(t: SegmentTable, gen: int) -> list:
        bits = SegmentTable(N_CHUNKS)
        bits.or_at_least(t.spans(), gen)
        starts, counts = bits.spans().runs(0, N_CHUNKS)
        return list(zip(starts.tolist(), counts.tolist()))

    live = [9, 21, 30]
    before = [at_least(table, g) for g in live]
    table.remap(np.array(live))
    # "changed since the i-th live generation" must not move
    assert [at_least(table, i + 1) for i in range(len(live))] == before
    assert at_least(table, len(live) + 1) == []


def test_whole_volume_mark_stays_small():
    huge = SegmentTable(1 << 38)  # 1 PiB at 4 KiB
    huge.mark(0, 1 << 50, 12, 1)
    assert huge.nbytes < 1 << 20
    assert huge.spans().count_bits() == 1 << 38


# -- codec ---------------------------------------------------------------


def page_key(page: int, tag: bytes = b"W") -> bytes:
    return keys.page_key(7, tag, 3, page)


def decode(value: bytes, page: int, dtype=None, n_segments: int | None = None, key: bytes | None = None):
    """Decode a stored page as PageIO does (format 2, this page's key)."""
    where = dict(key=page_key(page) if key is None else key, version=codec.FORMAT_VERSION,
                 n_segments=N_SEGMENTS if n_segments is None else n_segments)
    if dtype is None:
        return codec.decode_bits_page(value, page, "test", **where)
    return codec.decode_gens_page(value, page, dtype, "test", **where)


def pages_roundtrip(table: SegmentTable) -> SegmentTable:
    """Encode every page and decode it back to spans loaded into a new table."""
    back = SegmentTable(table.n_chunks, None if table.is_bits else table.row_dtype)
    spans = table.spans()
    for page in spans.pages().tolist():
        part = spans.page_slice(page)
        n_seg = table.n_segments
        if table.is_bits:
            back.load(decode(codec.encode_bits_page(part, page, page_key(page)), page, n_segments=n_seg))
        else:
            back.load(decode(codec.encode_gens_page(part, page, page_key(page)), page, table.row_dtype, n_seg))
    return back


@settings(max_examples=60, deadline=None)
@given(writes())
def test_bits_codec_roundtrip(batch):
    table = SegmentTable(N_CHUNKS)
    table.mark_many(*batch, SHIFT, 1)
    assert table_bits(pages_roundtrip(table)) == table_bits(table)


@settings(max_examples=30, deadline=None)
@given(st.lists(writes(max_n=6), min_size=1, max_size=3), st.sampled_from([np.uint8, np.uint16, np.uint32]))
def test_gens_codec_roundtrip(batches, dtype):
    table = SegmentTable(N_CHUNKS, dtype)
    for gen, (offs, lens) in enumerate(batches, start=1):
        table.mark_many(offs, lens, SHIFT, gen * 60)
    back = pages_roundtrip(table)
    for at_least in (1, 60, 61, 120, 180):
        x, y = SegmentTable(N_CHUNKS), SegmentTable(N_CHUNKS)
        x.or_at_least(table.spans(), at_least)
        y.or_at_least(back.spans(), at_least)
        assert table_bits(x) == table_bits(y)


def test_random_bits_encode_below_two_bytes_per_chunk():
    rng = np.random.default_rng(7)
    table = SegmentTable(1 << 20)
    chunks = rng.choice(1 << 20, size=10_000, replace=False)
    table.mark_many(chunks.astype(np.int64) << SHIFT, np.full(len(chunks), 512, np.int64), SHIFT, 1)
    spans = table.spans()
    size = sum(len(codec.encode_bits_page(spans.page_slice(p), p, page_key(p))) - codec.HEADER.size for p in spans.pages().tolist())
    assert size < 2 * len(chunks)  # a roaring array container needs 2 bytes each


@pytest.mark.parametrize("damage", ["flip", "truncate", "version", "old-version", "kind", "flags", "reserved", "key"])
def test_damaged_page_is_detected(damage):
    table = SegmentTable(N_CHUNKS)
    table.mark(0, 1 << 20, SHIFT, 1)
    table.mark(5 << 20, 3000, SHIFT, 1)
    value = bytearray(codec.encode_bits_page(table.spans().page_slice(0), 0, page_key(0)))
    key = page_key(0)
    if damage == "flip":
        value[-1] ^= 0x40
    elif damage == "truncate":
        value = value[:-3]
    elif damage == "version":
        value[2] = 99
    elif damage == "old-version":
        value[2] = 1  # a format-1 header skips the key check: refused in a format-2 store
    elif damage == "kind":
        value[3] = codec.KIND_GENS_PAGE
    elif damage == "flags":
        value[4] = 1
    elif damage == "reserved":
        value[5] = 1
    else:
        key = keys.page_key(7, b"W", 2, 0)  # the same value read under another generation
    with pytest.raises(CorruptionError):
        decode(bytes(value), 0, key=key)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["bits", "gens8", "gens32"]))
def test_garbage_payload_never_crashes_decoder(payload, kind):
    key = page_key(3)
    try:
        if kind == "bits":
            spans = decode(codec.wrap(codec.KIND_BITS_PAGE, payload, key), 3, n_segments=4 * PAGE_SEGMENTS)
        else:
            dtype = np.uint8 if kind == "gens8" else np.uint32
            value = codec.wrap(codec.KIND_GENS_PAGE, bytes([np.dtype(dtype).itemsize]) + payload, key)
            spans = decode(value, 3, dtype, n_segments=4 * PAGE_SEGMENTS)
    except CorruptionError:
        return
    assert (spans.first >> 10 == 3).all()
    assert (spans.ref < len(spans.rows)).all()


@pytest.mark.parametrize("density", [0.002, 0.05, 0.5, 0.97])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_gens_codec_roundtrip_at_every_density(density, dtype):
    """Every record kind (uniform, sparse, packed, raw) decodes to the same values."""
    rng = np.random.default_rng(int(density * 1000))
    table = SegmentTable(4 * SEG_CHUNKS, dtype)
    chunks = np.flatnonzero(rng.random(4 * SEG_CHUNKS) < density).astype(np.int64)
    gens = rng.integers(1, 250 if dtype == np.uint8 else 70000 if dtype == np.uint32 else 60000, len(chunks))
    for c, g in zip(chunks.tolist(), gens.tolist()):
        table.mark(c << SHIFT, 1, SHIFT, g)
    assert table_gens(pages_roundtrip(table)) == table_gens(table)


# -- the sync-mode probes (tiered/bitmaps/probe_kernels.py) ---------------


def _chunks(offs: np.ndarray, lens: np.ndarray) -> list[set[int]]:
    return [set(range(o >> SHIFT, ((o + n - 1) >> SHIFT) + 1)) if n else set() for o, n in zip(offs.tolist(), lens.tolist())]


@settings(max_examples=60, deadline=None)
@given(writes(), writes(), writes(), writes(max_n=30), st.booleans())
def test_probes_match_naive(active_w, open_w, flight_w, batch, bits):
    """bits_all, bits_any, gens_all_at_least, all_marked and classify
    against set arithmetic, over tables with whole pages and segments."""
    from tiered.bitmaps import probe_kernels as P

    gen = 5
    active = SegmentTable(N_CHUNKS, None if bits else np.uint16)
    # A generation table holds older periods too: only ``gen`` counts.
    if not bits:
        active.mark_many(*open_w, SHIFT, gen - 1)
    active.mark_many(*active_w, SHIFT, 1 if bits else gen)
    marked = table_bits(active) if bits else {c for c, v in table_gens(active).items() if v >= gen}
    opened, flight = SegmentTable(N_CHUNKS), SegmentTable(N_CHUNKS)
    opened.mark_many(*open_w, SHIFT, 1)
    flight.mark_many(*flight_w, SHIFT, 1)
    in_open, in_flight = table_bits(opened), table_bits(flight)
    offs, lens = batch
    touched = _chunks(offs, lens)
    for c, (o, n) in zip(touched, zip(offs.tolist(), lens.tolist())):
        if not n:
            continue
        c0, c1 = o >> SHIFT, (o + n - 1) >> SHIFT
        assert P.bits_any(opened.index, opened.pool, opened.n_top, c0, c1) == bool(c & in_open)
        assert P.bits_all(opened.index, opened.pool, opened.n_top, c0, c1) == (c <= in_open)
        if not bits:
            assert P.gens_all_at_least(active.index, active.pool, active.n_top, c0, c1, gen) == (c <= marked)
    assert P.all_marked(active.index, active.pool, bits, gen, active.n_top, offs, lens, SHIFT) == all(
        c <= marked for c in touched
    )
    new_out = np.empty(len(offs), np.int64)
    n_new, status = P.classify(
        active.index, active.pool, bits, gen, opened.index, opened.pool, flight.index, flight.pool,
        active.n_top, offs, lens, SHIFT, new_out,
    )
    new = [i for i, c in enumerate(touched) if not c <= marked]
    assert new_out[:n_new].tolist() == new
    needs_open = bool(new) or any(c & in_open for c in touched)
    assert bool(status & P.NEEDS_OPEN) == needs_open
    if not needs_open:  # the flight bit is only looked for while the open one is not set
        assert bool(status & P.NEEDS_FLIGHT) == any(c & in_flight for c in touched)
