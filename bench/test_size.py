"""Serialized size of one sealed writeset, tiered against pyroaring.

A universe of 1,048,576 chunks (2**20) with three patterns:

* 1% random chunks (10,486);
* 10% random chunks (104,858);
* 10% in clustered extents of 64 chunks (1,638 non-overlapping runs at
  random, unaligned positions: 104,832 chunks).

tiered's size is what sealing stores: the chunks go into a bitmap
``SegmentTable`` (as the active writeset does), each of its pages is encoded
with ``tiered.storage.codec.encode_bits_page`` (envelope included) and the lengths
are summed; the LMDB key (25 bytes per page) is not counted.  The same set
is also sealed through a real volume and the growth of
``vol.stats()["disk_bytes"]`` is recorded as a cross-check (that one counts
keys, and the checkpoint and volume records too).

pyroaring's size is ``len(BitMap(chunks).serialize())``, as plain updates
leave the bitmap (``optimize=False``) and after ``run_optimize()`` (roaring's
run containers only appear after it; the constructor does it by default).

The benchmarks time encoding (tiered: span export + page encoding; pyroaring:
serialize, and run_optimize + serialize on a fresh copy) and decoding; the
sizes are in extra_info and printed by ``test_size_summary``.
"""

from __future__ import annotations

import numpy as np
import pyroaring
import pytest
from benchutil import (
    SEED,
    WRITE_SIZE,
    clustered_chunks,
    fmt_time,
    print_report,
    random_chunks,
)

import tiered
from tiered.storage.codec import decode_bits_page, encode_bits_page
from tiered.bitmaps.table import SegmentTable

UNIVERSE = 1 << 20
PATTERNS = {
    "1%-random": lambda: np.sort(random_chunks(0.01, SEED + 1, UNIVERSE)),
    "10%-random": lambda: np.sort(random_chunks(0.10, SEED + 2, UNIVERSE)),
    "10%-clustered-64": lambda: clustered_chunks(0.10, 64, SEED + 3, UNIVERSE),
}
CODECS = ("tiered", "pyroaring", "pyroaring-run_optimize")


@pytest.fixture(scope="module")
def patterns() -> dict[str, np.ndarray]:
    made = {name: make() for name, make in PATTERNS.items()}
    for chunks in made.values():
        assert len(np.unique(chunks)) == len(chunks)
    return made


def tiered_table(chunks: np.ndarray) -> SegmentTable:
    """The chunks as tiered's active writeset holds them (one write per
    chunk, granularity 1 byte so offsets are chunk numbers)."""
    table = SegmentTable(UNIVERSE)
    table.mark_many(chunks.astype(np.int64), np.ones(len(chunks), np.int64), 0, 1)
    return table


def tiered_encode(table: SegmentTable) -> list[tuple[int, bytes]]:
    spans = table.spans()
    return [(page, encode_bits_page(spans.page_slice(page), page)) for page in spans.pages().tolist()]


def tiered_decode(pages: list[tuple[int, bytes]]) -> list:
    return [decode_bits_page(value, page, "bench") for page, value in pages]


def sealed_bytes_via_volume(tmp_path, chunks: np.ndarray) -> int:
    """disk_bytes growth from sealing the set through a real volume."""
    granularity = 64 << 10
    with tiered.open(str(tmp_path / "sealed"), sync=False) as store:
        vol = store.create_volume("vol", UNIVERSE * granularity, granularity, strategy="one-bit")
        vol.checkpoint("before")
        before = vol.stats()["disk_bytes"]
        vol.mark_many(chunks * granularity, np.full(len(chunks), WRITE_SIZE, np.int64))
        vol.checkpoint("after")
        after = vol.stats()["disk_bytes"]
        assert vol.changed_between("before", "after").total_bytes == len(chunks) * granularity
    return after - before


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_encode(benchmark, record, patterns, tmp_path, pattern, codec):
    benchmark.group = f"size: encode one sealed writeset, 2^20 chunks, {pattern}"
    chunks = patterns[pattern]
    info: dict = {"pattern": pattern, "codec": codec, "universe": UNIVERSE, "set_chunks": len(chunks)}
    if codec == "tiered":
        table = tiered_table(chunks)
        pages = benchmark(tiered_encode, table)
        size = sum(len(v) for _, v in pages)
        decoded = tiered_decode(pages)
        assert sum(s.count_bits() for s in decoded) == len(chunks)
        info["pages"] = len(pages)
        info["volume_disk_bytes_delta"] = sealed_bytes_via_volume(tmp_path, chunks)
    else:
        values = chunks.astype(np.uint32)
        # The constructor run-optimizes by default; "pyroaring" is the
        # bitmap as plain updates leave it.
        bm = pyroaring.BitMap(values, optimize=False)
        if codec == "pyroaring":
            blob = benchmark(bm.serialize)
        else:

            def fresh_copy():
                return (pyroaring.BitMap(values, optimize=False),), {}

            def optimize_and_serialize(b):
                b.run_optimize()
                return b.serialize()

            blob = benchmark.pedantic(optimize_and_serialize, setup=fresh_copy, rounds=50, warmup_rounds=1)
        size = len(blob)
        assert pyroaring.BitMap.deserialize(blob) == bm
    info.update(bytes=size, bits_per_set_chunk=round(8 * size / len(chunks), 3))
    record(benchmark, f"encode/{pattern}/{codec}", **info)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_decode(benchmark, record, patterns, pattern, codec):
    benchmark.group = f"size: decode one sealed writeset, 2^20 chunks, {pattern}"
    chunks = patterns[pattern]
    if codec == "tiered":
        pages = tiered_encode(tiered_table(chunks))
        decoded = benchmark(tiered_decode, pages)
        assert sum(s.count_bits() for s in decoded) == len(chunks)
    else:
        bm = pyroaring.BitMap(chunks.astype(np.uint32), optimize=False)
        if codec == "pyroaring-run_optimize":
            bm.run_optimize()
        blob = bm.serialize()
        assert benchmark(pyroaring.BitMap.deserialize, blob) == bm
    record(benchmark, f"decode/{pattern}/{codec}", pattern=pattern, codec=codec)


@pytest.mark.bench_summary
def test_size_summary(medians, capsys):
    if not medians:
        pytest.skip("no size benchmark measured in this run")
    header = (f"  {'pattern':18s} {'codec':24s} {'bytes':>8s} {'bits/chunk':>10s} {'encode':>10s} "
              f"{'decode':>10s}  vs pyroaring (best)")
    lines = [header]
    for pattern in PATTERNS:
        rows = {c: medians.get(f"encode/{pattern}/{c}") for c in CODECS}
        roaring = [rows[c]["bytes"] for c in CODECS[1:] if rows.get(c)]
        best = min(roaring) if roaring else None
        for codec, m in rows.items():
            if not m:
                continue
            dec = medians.get(f"decode/{pattern}/{codec}")
            rel = f"{m['bytes'] / best:.2f}x" if best else "-"
            lines.append(
                f"  {pattern:18s} {codec:24s} {m['bytes']:>8d} {m['bits_per_set_chunk']:>10.2f} "
                f"{fmt_time(m['median']):>10s} {fmt_time(dec['median']) if dec else '-':>10s}  {rel}"
            )
        t = rows.get("tiered")
        if t:
            lines.append(f"  {'':18s} {'(tiered via a volume)':24s} {t['volume_disk_bytes_delta']:>8d}"
                         "  disk_bytes growth: keys, checkpoint and volume records included")
    print_report(capsys, "serialized size of one sealed writeset vs pyroaring", lines)
