"""Page decoders against crafted pages: valid envelopes and varints around
numbers that are wrong (near 2**63, past the segment, the page or the
volume).  A decoder must refuse them with CorruptionError, never write out
of bounds: the kernels run with boundscheck=False, so such a bug is a
segfault, a heap corruption or a silently wrong answer.

Cases that could crash run in a child process, so that a crash fails the
test instead of killing the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, given, settings

from tiered.bitmaps.table import SegmentTable
from tiered.config import PAGE_SEGMENTS, SEG_CHUNKS, SEG_WORDS
from tiered.errors import CorruptionError
from tiered.storage import codec, keys
from tiered.storage import page_kernels as K

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIG = (1 << 63) - 1

# A volume of 2.5 pages: page 2 is partial, page 3 lies beyond it.
N_SEGMENTS = 2 * PAGE_SEGMENTS + PAGE_SEGMENTS // 2
N_CHUNKS = N_SEGMENTS * SEG_CHUNKS


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 128:
        out.append((v & 127) | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def payload(*parts: int | bytes) -> bytes:
    """ints as varints, bytes as they are."""
    return b"".join(varint(p) if isinstance(p, int) else p for p in parts)


def page_key(page: int) -> bytes:
    return keys.page_key(5, b"W", 2, page)


def outcome(kind: str, body: bytes, page: int, n_segments: int = N_SEGMENTS, width: int = 4) -> str:
    """Decode a crafted page payload every way PageIO can; returns "refused"
    or "ok", and checks that what decodes lies inside the page and volume."""
    key = page_key(page)
    where = dict(key=key, version=codec.FORMAT_VERSION)
    dtype = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32}[width])
    results = []
    if kind == "bits":
        value = codec.wrap(codec.KIND_BITS_PAGE, body, key)
        calls = [lambda: codec.decode_bits_page(value, page, "crafted", n_segments=n_segments, **where)]
    else:
        value = codec.wrap(codec.KIND_GENS_PAGE, bytes([width]) + body, key)
        acc = SegmentTable(n_segments * SEG_CHUNKS)
        calls = [
            lambda: codec.decode_gens_page(value, page, dtype, "crafted", n_segments=n_segments, **where),
            lambda: codec.or_gens_page_at_least(value, page, dtype, "crafted", acc, 1, **where),
        ]
    for call in calls:
        try:
            spans = call()
        except CorruptionError:
            results.append("refused")
            continue
        if spans is not None:
            lo = page * PAGE_SEGMENTS
            assert (spans.first >= lo).all() and (spans.first + spans.count <= min(lo + PAGE_SEGMENTS, n_segments)).all()
            assert (spans.ref < len(spans.rows)).all()
        results.append("ok")
    assert len(set(results)) == 1, results  # every path agrees
    return results[0]


def run_isolated(code: str) -> str:
    """Run ``code`` in a child process with this tiered; its stdout, or a
    failure naming how it died."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=HERE, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, f"child died with {child.returncode}:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}"
    return child.stdout


FULL, POS, RUNS, RAW = K.KIND_FULL, K.KIND_POS, K.KIND_RUNS, K.KIND_RAW
UNIFORM, SPARSE, GRAW, PACKED = K.KIND_UNIFORM, K.KIND_SPARSE, K.KIND_GRAW, K.KIND_PACKED
B = bytes  # a kind byte: bytes([k])

#: name -> (decoder kind, payload, page, n_segments or None).  Each must be refused.
CRAFTED = {
    "gap near 2**63": ("bits", payload(1, BIG, 1, B([FULL])), 0, None),
    "gap + count wrap to negative": ("bits", payload(1, 1 << 62, (1 << 62) + 5, B([FULL])), 0, None),
    "second record's gap wraps": ("bits", payload(2, 0, 1, B([FULL]), BIG, 1, B([FULL])), 0, None),
    "count near 2**63": ("bits", payload(1, 0, BIG, B([FULL])), 1, None),
    "position gap wraps": ("bits", payload(1, 0, 1, B([POS]), 2, 0, BIG), 0, None),
    "position past the segment": ("bits", payload(1, 0, 1, B([POS]), 1, SEG_CHUNKS), 0, None),
    "position count near 2**63": ("bits", payload(1, 0, 1, B([POS]), BIG, 0), 0, None),
    "run start wraps": ("bits", payload(1, 0, 1, B([RUNS]), 2, BIG, BIG - 100, 0, 50), 0, None),
    "run length wraps": ("bits", payload(1, 0, 1, B([RUNS]), 1, 5, BIG - 2), 0, None),
    "run past the segment": ("bits", payload(1, 0, 1, B([RUNS]), 1, SEG_CHUNKS - 2, 2), 0, None),
    "page beyond the volume": ("bits", payload(1, 0, 1, B([FULL])), 3, None),
    "page near 2**63": ("bits", payload(1, 0, 1, B([FULL])), BIG, None),
    "page that wraps when shifted": ("bits", payload(1, 0, 1, B([FULL])), 1 << 54, None),
    "record past the volume's last segment": ("bits", payload(1, PAGE_SEGMENTS // 2, 1, B([FULL])), 2, None),
    "whole page past a partial last page": ("bits", payload(1, 0, PAGE_SEGMENTS, B([FULL])), 2, None),
    "sparse position wraps": ("gens", payload(1, 0, 1, B([SPARSE]), 2, 0, 1, BIG, 1), 0, None),
    "sparse count near 2**63": ("gens", payload(1, 0, 1, B([SPARSE]), BIG, 0, 1), 0, None),
    "uniform page beyond the volume": ("gens", payload(1, 0, PAGE_SEGMENTS, B([UNIFORM]), 7), 3, None),
    "uniform gap near 2**63": ("gens", payload(1, BIG, 1, B([UNIFORM]), 7), 0, None),
    "uniform past the volume's last segment": ("gens", payload(1, PAGE_SEGMENTS - 1, 1, B([UNIFORM]), 7), 2, None),
    "raw generations past the volume": ("gens", payload(1, PAGE_SEGMENTS // 2 + 3, 1, B([GRAW])) + bytes(4 * SEG_CHUNKS), 2, None),
    "volume of no segment": ("gens", payload(1, 0, 1, B([UNIFORM]), 7), 0, 0),
    # Directory entries are int32 and a uniform segment stores -(gen + 2):
    # a generation above MAX_GEN_32 would wrap into a row index.
    "uniform generation past int32 entries": ("gens", payload(1, 0, 1, B([UNIFORM]), 1 << 31), 0, None),
    "whole page of a generation past int32": ("gens", payload(1, 0, PAGE_SEGMENTS, B([UNIFORM]), (1 << 32) - 1), 0, None),
    "sparse generation past MAX_GEN_32": ("gens", payload(1, 0, 1, B([SPARSE]), 1, 0, 1 << 31), 0, None),
    "raw generation past MAX_GEN_32": ("gens", payload(1, 0, 1, B([GRAW])) + bytes(4 * SEG_CHUNKS - 4) + b"\xff" * 4, 0, None),
    "packed generation past MAX_GEN_32": ("gens", payload(1, 0, 1, B([PACKED]), B([4]), b"\x01" + bytes(8 * SEG_WORDS - 1), b"\xff" * 4), 0, None),
}


def test_crafted_pages_are_refused():
    """Each crafted page, in a child process: refused, not decoded."""
    code = """
    import sys
    from test_decoders import CRAFTED, outcome
    for name, (kind, body, page, n_seg) in CRAFTED.items():
        print(name, flush=True)  # the last name printed is the one that crashed
        args = (kind, body, page) if n_seg is None else (kind, body, page, n_seg)
        try:
            print("->", outcome(*args), flush=True)
        except AssertionError:
            print("-> decoded out of bounds", flush=True)
    """
    out = run_isolated(code)
    lines = out.splitlines()
    results = dict(zip(lines[::2], lines[1::2]))
    assert set(results) == set(CRAFTED)
    accepted = [name for name, r in results.items() if r != "-> refused"]
    assert not accepted, f"decoded instead of refused: {accepted}"


def test_a_valid_page_still_decodes_at_the_volume_edge():
    """The bounds refuse only what is wrong: the last segment of a partial
    last page, and a full record ending exactly at it, decode."""
    assert outcome("bits", payload(1, PAGE_SEGMENTS // 2 - 1, 1, B([POS]), 1, SEG_CHUNKS - 1), 2) == "ok"
    assert outcome("bits", payload(1, 0, PAGE_SEGMENTS // 2, B([FULL])), 2) == "ok"
    assert outcome("gens", payload(1, 0, PAGE_SEGMENTS // 2, B([UNIFORM]), 9), 2) == "ok"
    assert outcome("bits", payload(1, 0, 1, B([RUNS]), 1, 0, SEG_CHUNKS - 1), 0) == "ok"


# -- structured fuzzing: valid varints and checksums around bad numbers ---

EDGES = [0, 1, 2, 63, 64, SEG_CHUNKS - 2, SEG_CHUNKS - 1, SEG_CHUNKS, PAGE_SEGMENTS - 1, PAGE_SEGMENTS,
         PAGE_SEGMENTS + 1, 1 << 31, 1 << 32, 1 << 53, 1 << 62, BIG - SEG_CHUNKS, BIG - 1, BIG]
numbers = st.sampled_from(EDGES) | st.integers(0, 3 * SEG_CHUNKS) | st.integers(0, BIG)


@st.composite
def crafted_page(draw):
    """A page payload of well-formed varints whose numbers are drawn around
    every bound; returns (decoder kind, payload, page)."""
    kind = draw(st.sampled_from(["bits", "gens"]))
    kinds = [FULL, POS, RUNS, RAW] if kind == "bits" else [UNIFORM, SPARSE, GRAW, PACKED]
    n = draw(st.integers(0, 4))
    parts: list[int | bytes] = [draw(st.sampled_from([n, n + 1, max(n - 1, 0)]) | numbers)]
    for _ in range(n):
        rec = draw(st.sampled_from(kinds + [0, 9, 255]))
        parts += [draw(numbers), draw(st.sampled_from([1, 1, 2, PAGE_SEGMENTS]) | numbers), B([rec])]
        if rec in (POS, RUNS, SPARSE):
            k = draw(st.integers(0, 5))
            parts.append(draw(st.sampled_from([k, k + 1]) | numbers))
            per = {POS: 1, RUNS: 2, SPARSE: 2}[rec]
            parts += [draw(numbers) for _ in range(k * per)]
        elif rec == UNIFORM:
            parts.append(draw(numbers))
        elif rec == RAW:
            parts.append(draw(st.binary(min_size=8 * SEG_WORDS, max_size=8 * SEG_WORDS)))
        elif rec == GRAW:
            parts.append(bytes(draw(st.sampled_from([4 * SEG_CHUNKS, 4 * SEG_CHUNKS - 1]))))
        elif rec == PACKED:
            vb = draw(st.sampled_from([1, 2, 4, 3, 0]))
            bitmap = draw(st.binary(min_size=8 * SEG_WORDS, max_size=8 * SEG_WORDS))
            parts += [B([vb]), bitmap, draw(st.binary(max_size=64))]
    if draw(st.booleans()):
        parts.append(draw(st.binary(max_size=3)))  # trailing bytes
    page = draw(st.sampled_from([0, 1, 2, 3, 1 << 40, BIG]))
    return kind, payload(*parts), page


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(crafted_page())
def structured_fuzz(case):
    kind, body, page = case
    outcome(kind, body, page)


def test_structured_fuzz_never_crashes_a_decoder():
    """Hundreds of crafted pages, in a child process: each is refused or
    decodes inside its page and volume, the same way on every path."""
    out = run_isolated("from test_decoders import structured_fuzz\nstructured_fuzz()\nprint('done')\n")
    assert out.strip().endswith("done")
