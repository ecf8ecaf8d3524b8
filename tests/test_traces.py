"""Streaming block-trace readers: formats, batching, errors, and a real fio log."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiered
from tiered import cli
from tiered.errors import InvalidArgumentError, TraceFormatError
from tiered.replay.traces import WriteBatch, read_trace

FIO_V2 = """\
fio version 2 iolog
/dev/vdb add
/dev/vdb open
/dev/vdb write 4096 8192
/dev/vdb read 0 4096
/dev/vdb sync 0 0
/dev/vdb trim 65536 4096
/dev/vdb wait 0 100
/dev/vdb write 1048576 512
/dev/vdb close
"""

FIO_V3 = """\
fio version 3 iolog
15 F add
103 F open
108 F write 61440 4096
132 F read 880640 4096
2000108 F trim 0 4096
2500000 F datasync 0 0
3000000 F write 585728 4096
3000010 F close
"""

BLKPARSE = """\
  8,0    3        1     0.000000000   697  Q  WS 223490 + 8 [kjournald]
  8,0    3        2     0.000001000   697  G  WS 223490 + 8 [kjournald]
  8,0    3        3     0.000002000   697  I  WS 223490 + 8 [kjournald]
  8,0    3        4     0.000003000   697  D  WS 223490 + 8 [kjournald]
  8,0    3        5     0.000100000     0  C  WS 223490 + 8 [0]
  8,0    1        6     0.500000000  1234  Q   R 1000 + 16 [cat]
  8,0    1        7     0.600000000  1234  C   R 1000 + 16 [0]
  8,0    0        8     1.000000000   321  Q   D 2048 + 4096 [fstrim]
  8,0    0        9     1.000000500   321  Q FWS [kworker/0:1H]
  8,0    0       10     1.250000000   321  Q  WM 8 + 8 [jbd2/sda1-8]
  8,0    0        0     1.300000000     0  m   N cfq321 insert_request

CPU0 (8,0):
 Reads Queued:           1,        8KiB\t Writes Queued:           3,      12KiB
 Read Dispatches:        0,        0KiB\t Write Dispatches:        0,        0KiB
Total (8,0):
 Reads Queued:           1,        8KiB\t Writes Queued:           3,      12KiB

Throughput (R/W): 0KiB/s / 0KiB/s
Events (8,0): 11 entries
Skips: 0 forward (0 -   0.0%)
"""

MSR_ROWS = """\
128166372003061629,hm,1,Read,7014609920,24576,41286
128166372016382155,hm,1,Write,1317441536,8192,1331
128166372026382245,hm,1,Write,2436440064,4096,1234
128166372036382245,hm,0,Read,0,4096,1000
128166372046382245,hm,0,Write,512,512,1000
"""


def write(tmp_path: Path, text: str, name: str = "trace") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def collect(reader) -> tuple[list[WriteBatch], np.ndarray, np.ndarray, np.ndarray | None]:
    batches = list(reader)
    offs = np.concatenate([b.offsets for b in batches]) if batches else np.empty(0, np.int64)
    lens = np.concatenate([b.lengths for b in batches]) if batches else np.empty(0, np.int64)
    times = None
    if batches and batches[0].times is not None:
        times = np.concatenate([b.times for b in batches])
    return batches, offs, lens, times


def test_fio_v2(tmp_path: Path) -> None:
    reader = read_trace(write(tmp_path, FIO_V2), batch=3)
    assert reader.format == "fio"
    batches, offs, lens, times = collect(reader)
    assert offs.tolist() == [4096, 65536, 1048576]  # the read, sync and wait are skipped
    assert lens.tolist() == [8192, 4096, 512]
    assert times is None and all(b.times is None for b in batches)
    assert offs.dtype == np.int64 and lens.dtype == np.int64
    assert reader.lines == 10 and reader.writes == 3 and reader.skipped == 0


def test_fio_v3_times_in_microseconds(tmp_path: Path) -> None:
    reader = read_trace(write(tmp_path, FIO_V3))
    _, offs, lens, times = collect(reader)
    assert offs.tolist() == [61440, 0, 585728]
    assert lens.tolist() == [4096, 4096, 4096]
    assert times is not None and times.dtype == np.float64
    np.testing.assert_allclose(times, [108e-6, 2.000108, 3.0])


def test_blkparse_counts_queue_events_and_skips_summary(tmp_path: Path) -> None:
    reader = read_trace(write(tmp_path, BLKPARSE), batch=2)
    assert reader.format == "blkparse"
    batches, offs, lens, times = collect(reader)
    # One entry per I/O (Q only), the read skipped, the discard kept, the
    # empty flush (no sectors) passed over.
    assert offs.tolist() == [223490 * 512, 2048 * 512, 8 * 512]
    assert lens.tolist() == [8 * 512, 4096 * 512, 8 * 512]
    np.testing.assert_allclose(times, [0.0, 1.0, 1.25])
    assert [len(b) for b in batches] == [2, 1]
    assert reader.skipped == 0


def test_blkparse_completions_only(tmp_path: Path) -> None:
    text = "".join(line + "\n" for line in BLKPARSE.splitlines() if " C " in line)
    _, offs, lens, _ = collect(read_trace(write(tmp_path, text)))
    assert offs.tolist() == [223490 * 512]
    assert lens.tolist() == [8 * 512]


@pytest.mark.parametrize("header", ["", "Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime\n"])
def test_msr(tmp_path: Path, header: str) -> None:
    reader = read_trace(write(tmp_path, header + MSR_ROWS), batch=3)
    assert reader.format == "msr"
    batches, offs, lens, times = collect(reader)
    assert offs.tolist() == [1317441536, 2436440064, 512]
    assert lens.tolist() == [8192, 4096, 512]
    # 100 ns ticks, counted from the first record (a read).
    np.testing.assert_allclose(times, [1.3320526, 2.3320616, 4.3320616])
    assert [len(b) for b in batches] == [3]


def test_batches_split_and_are_independent(tmp_path: Path) -> None:
    lines = ["fio version 2 iolog"] + [f"f write {i * 4096} 4096" for i in range(7)]
    batches = list(read_trace(write(tmp_path, "\n".join(lines) + "\n"), batch=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    # Each yielded batch owns its arrays: later batches do not overwrite it.
    assert batches[0].offsets.tolist() == [0, 4096, 8192]
    assert batches[1].offsets.tolist() == [12288, 16384, 20480]
    with pytest.raises(dataclasses_frozen_error()):
        batches[0].offsets = np.empty(0, np.int64)  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    ("fmt", "text", "line", "what"),
    [
        ("fio", "fio version 2 iolog\nf write 0 4096\nf write x 4096\n", 3, "offset"),
        ("fio", "fio version 2 iolog\nf scribble 0 4096\n", 2, "unknown action"),
        ("fio", "fio version 3 iolog\n1 f write 0\n", 2, "expected"),
        ("fio", "fio version 2 iolog\nf write \u00b2 4096\n", 2, "offset"),
        ("blkparse", "  8,0 0 1 0.1 5 Q W 12x + 8 [a]\n", 1, "sector + count"),
        ("blkparse", "  8,0 0 1 0.1 Q\n", 1, "event line"),
        ("msr", "1,h,0,Write,0,512,1\n2,h,0,Write,0\n", 2, "7 comma-separated"),
        ("msr", "1,h,0,Flush,0,512,1\n", 1, "neither Read nor Write"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, fmt: str, text: str, line: int, what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceFormatError, match=re.escape(what)) as info:
        list(read_trace(path, format=fmt))
    assert f"{path}:{line}:" in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_skip_bad_counts(tmp_path: Path) -> None:
    text = "fio version 2 iolog\nf write 0 4096\nf write x 4096\ngarbage\nf write 8192 4096\n"
    reader = read_trace(write(tmp_path, text), skip_bad=True)
    _, offs, _, _ = collect(reader)
    assert offs.tolist() == [0, 8192]
    assert reader.skipped == 2 and reader.lines == 5
    list(reader)  # iterating again re-reads and resets the counts
    assert reader.skipped == 2


def test_autodetect_and_unknown_format(tmp_path: Path) -> None:
    assert read_trace(write(tmp_path, "\n\n" + FIO_V3, "a")).format == "fio"
    assert read_trace(write(tmp_path, BLKPARSE, "b")).format == "blkparse"
    assert read_trace(write(tmp_path, MSR_ROWS, "c")).format == "msr"
    for name, text in [("d", "hello world\n"), ("e", ""), ("f", "fio version 1 iolog\n")]:
        path = write(tmp_path, text, name)
        with pytest.raises(TraceFormatError) as info:
            read_trace(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_arguments(tmp_path: Path) -> None:
    path = write(tmp_path, FIO_V2)
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "missing", format="msr")
    with pytest.raises(InvalidArgumentError):
        read_trace(path, format="csv")
    with pytest.raises(InvalidArgumentError):
        read_trace(path, batch=0)
    with pytest.raises(TraceFormatError, match="header"):
        list(read_trace(write(tmp_path, MSR_ROWS, "m"), format="fio"))


def test_big_trace_streams_in_batches(tmp_path: Path) -> None:
    n = 300_000
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        for i in range(n):
            kind = "Read" if i % 3 == 0 else "Write"
            f.write(f"{128166372003061629 + i * 10},h,0,{kind},{i * 512},{512 + (i % 8) * 512},5\n")
    reader = read_trace(path, batch=65536)
    total = count = batches = 0
    for b in reader:
        assert len(b) <= 65536
        batches += 1
        count += len(b)
        total += int(b.lengths.sum())
    writes = [i for i in range(n) if i % 3]
    assert count == len(writes) == reader.writes
    assert total == sum(512 + (i % 8) * 512 for i in writes)
    assert batches == -(-len(writes) // 65536)
    assert reader.lines == n


def test_replay_into_volume(tmp_path: Path) -> None:
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("v", size=1 << 30, granularity=4096, strategy="hybrid")
        vol.checkpoint("before")
        for b in read_trace(write(tmp_path, BLKPARSE)):
            vol.mark_many(b.offsets, b.lengths)
        changed = vol.changed_since("before")
        # Sector 223490 is not 4 KiB aligned: its 4 KiB write spans two chunks.
        assert list(changed) == [(4096, 4096), (1 << 20, 2 << 20), (223490 * 512 // 4096 * 4096, 8192)]


def run_fio(tmp_path: Path) -> tuple[Path, set[int], int, int]:
    """fio's random writes to a file: (its iolog, the 4 KiB chunks whose
    bytes changed, the file size, the chunk size)."""
    fio = shutil.which("fio")
    if fio is None:
        pytest.skip("fio is not installed")
    size, chunk = 64 << 20, 4096
    data, log = tmp_path / "data", tmp_path / "iolog"
    rng = np.random.default_rng(7)
    before = rng.integers(0, 256, size, dtype=np.uint8)
    before.tofile(data)  # pre-filled at full size, so fio does not lay the file out
    # Zero buffers over random bytes: every written 4 KiB chunk visibly changes.
    subprocess.run(
        [fio, "--name=t", f"--filename={data}", "--rw=randwrite", "--bs=4k", "--size=64M",
         "--io_size=2M", "--ioengine=psync", f"--write_iolog={log}", "--randrepeat=1",
         "--randseed=7", "--zero_buffers", "--output=/dev/null"],
        check=True, capture_output=True,
    )
    after = np.fromfile(data, dtype=np.uint8)
    differs = (before.reshape(-1, chunk) != after.reshape(-1, chunk)).any(axis=1)
    expected = set(np.flatnonzero(differs).tolist())
    assert len(expected) == (2 << 20) // chunk
    return log, expected, size, chunk


@pytest.mark.parametrize("strategy", ["one-bit", "multi-bit", "hybrid"])
def test_real_fio_log_matches_changed_bytes(tmp_path: Path, strategy: str) -> None:
    log, expected, size, chunk = run_fio(tmp_path)
    reader = read_trace(log)
    assert reader.format == "fio"
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("f", size=size, granularity=chunk, strategy=strategy)
        vol.checkpoint("before")
        for b in reader:
            vol.mark_many(b.offsets, b.lengths)
        got: set[int] = set()
        for offset, length in vol.changed_since("before"):
            got.update(range(offset // chunk, (offset + length) // chunk))
    assert got == expected


def test_compare_on_a_real_fio_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, expected, size, chunk = run_fio(tmp_path)
    code = cli.main(["compare", "--trace", str(log), "--size", str(size), "--granularity", "4K",
                     "--checkpoint-every", "64", "--cache", "4M", "--max-ram", "32MiB", "--json",
                     "--no-progress", "--no-sync"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["writes"] == len(expected) and doc["answers_agree"]
    # The oldest checkpoint precedes every write: its answer is every chunk fio changed.
    assert {r["changed_bytes"] for r in doc["results"]} == {len(expected) * chunk}
    assert doc["recommendation"]["apply"].startswith("tiered convert STORE VOLUME")


# -- traces as their tools write them --------------------------------------
#
# The files in tests/data have the shapes fio, blkparse and the MSR traces
# have.  Expected writes come from plain_writes, a bare line splitter that
# shares no code with the reader under test.

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent


def plain_writes(path: Path, fmt: str, action: str = "Q") -> tuple[list[tuple[int, int]], int]:
    """(the writes with data, the I/Os that write nothing) of a plain text trace."""
    writes: list[tuple[int, int]] = []
    nothing = 0
    lines = path.read_text().splitlines()
    if fmt == "fio":
        v3 = lines[0].split()[2] == "3"
        for line in lines[1:]:
            fields = line.split()[1:] if v3 else line.split()
            if len(fields) != 4:
                continue
            if fields[1] in ("write", "trim") and int(fields[3]) > 0:
                writes.append((int(fields[2]), int(fields[3])))
            else:
                nothing += 1
    elif fmt == "blkparse":
        for line in lines:
            fields = line.split()
            if len(fields) < 7 or not re.fullmatch(r"\d+,\d+", fields[0]) or fields[5] != action:
                continue
            rwbs = fields[6]
            if ("W" in rwbs or "D" in rwbs) and len(fields) > 9 and fields[8] == "+" and int(fields[9]) > 0:
                writes.append((int(fields[7]) * 512, int(fields[9]) * 512))
            else:
                nothing += 1
    else:
        for line in lines:
            fields = line.split(",")
            if fields[3] == "Write" and int(fields[5]) > 0:
                writes.append((int(fields[4]), int(fields[5])))
            else:
                nothing += 1
    return writes, nothing


def pairs(offs: np.ndarray, lens: np.ndarray) -> list[tuple[int, int]]:
    return list(zip(offs.tolist(), lens.tolist()))


@pytest.mark.parametrize("name", ["fio_v2_syncs.iolog", "fio_v3_syncs.iolog"])
def test_fio_sync_lines_are_passed_over_and_counted(name: str) -> None:
    path = DATA / name
    reader = read_trace(path, batch=2)
    assert reader.format == "fio"
    _, offs, lens, _ = collect(reader)
    writes, nothing = plain_writes(path, "fio")
    assert pairs(offs, lens) == writes and writes
    # sync, datasync, sync_file_range, syncfs, wait, read and the zero-length
    # write and trim: counted apart from malformed lines.
    assert reader.ignored == nothing >= 6
    assert reader.skipped == 0 and reader.writes == len(writes)
    assert reader.lines == len(path.read_text().splitlines())


@pytest.mark.parametrize("name", ["blkparse_tty.txt", "blkparse_redirected.txt"])
def test_blkparse_output_as_blkparse_prints_it(name: str) -> None:
    # "Input file ... added" lines first (a terminal) or last (a file), the
    # summaries, a flush and its completion without "+ count".
    path = DATA / name
    assert "C  WS 7928928 [0]" in path.read_text() and "Input file sda.blktrace.0 added" in path.read_text()
    reader = read_trace(path)
    assert reader.format == "blkparse"
    _, offs, lens, times = collect(reader)
    writes, nothing = plain_writes(path, "blkparse")
    assert pairs(offs, lens) == writes and len(writes) == 5
    assert reader.ignored == nothing == 3  # the read, the flush, the zero-length write
    assert times is not None and len(times) == len(writes)


def test_blkparse_completions_only_with_flush_completions(tmp_path: Path) -> None:
    path = DATA / "blkparse_complete.txt"
    writes, nothing = plain_writes(path, "blkparse", action="C")
    reader = read_trace(path, batch=2)
    _, offs, lens, _ = collect(reader)
    assert pairs(offs, lens) == writes and len(writes) == 5
    assert reader.ignored == nothing == 2  # the read and the flush completion
    # The same events without blkparse's preamble and summaries.
    events = [line for line in path.read_text().splitlines(keepends=True) if re.match(r"\s+\d+,\d+ ", line)]
    _, offs, lens, _ = collect(read_trace(write(tmp_path, "".join(events))))
    assert pairs(offs, lens) == writes


def test_blkparse_completions_held_back_until_a_queue_event(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tiered.replay.traces.formats as formats

    monkeypatch.setattr(formats, "BLKPARSE_LOOKAHEAD", 4)
    c = "".join(f"  8,0 0 {i} 0.{i:09d} 0 C W {i * 8} + 8 [0]\n" for i in range(1, 11))
    q = "  8,0 1 99 1.000000000 7 Q W 80000 + 8 [dd]\n"
    # A Q event among the first completions: Q events alone are the writes.
    reader = read_trace(write(tmp_path, c[: c.index("  8,0 0 3 ")] + q + c, "q"))
    assert [o for b in reader for o in b.offsets.tolist()] == [80000 * 512]
    # Completions only: all of them, in order, in batches.
    batches = list(read_trace(write(tmp_path, c, "c"), batch=3))
    assert [len(b) for b in batches] == [3, 1, 3, 3]
    assert [o for b in batches for o in b.offsets.tolist()] == [i * 8 * 512 for i in range(1, 11)]
    # A Q event after the look-ahead decided for completions: an error, not a mix.
    path = write(tmp_path, c + q, "cq")
    with pytest.raises(TraceFormatError, match="queue") as info:
        list(read_trace(path))
    assert f"{path}:11:" in str(info.value)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("fio", "fio version 2 iolog\nf write 0 0\nf trim 4096 0\nf write 8192 4096\n"),
        ("fio", "fio version 3 iolog\n1 f write 0 0\n2 f trim 4096 0\n3 f write 8192 4096\n"),
        ("blkparse", "  8,0 0 1 0.1 5 Q W 0 + 0 [a]\n  8,0 0 2 0.2 5 Q D [a]\n  8,0 0 3 0.3 5 Q W 16 + 8 [a]\n"),
        ("msr", "1,h,0,Write,0,0,1\n2,h,0,Write,4096,0,1\n3,h,0,Write,8192,4096,1\n"),
    ],
)
def test_zero_length_writes_and_trims_are_dropped(tmp_path: Path, fmt: str, text: str) -> None:
    reader = read_trace(write(tmp_path, text))
    assert reader.format == fmt
    _, offs, lens, _ = collect(reader)
    assert pairs(offs, lens) == [(8192, 4096)]
    assert reader.ignored == 2 and reader.skipped == 0


@pytest.mark.parametrize(
    "text",
    [
        "fio version 2 iolog\nf add\nf open\nf write 0 0\nf sync_file_range 0 0\nf trim 4096 0\nf close\n",
        "  8,0 0 1 0.1 5 Q R 0 + 8 [cat]\n  8,0 0 2 0.2 0 C WS 7928928 [0]\n",
        "1,h,0,Read,0,4096,1\n",
    ],
)
def test_compare_on_a_trace_without_writes_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = write(tmp_path, text)
    code = cli.main(["compare", "--trace", str(path), "--mode", "one-bit", "--no-progress", "--no-sync"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(path) in err and "no writes" in err


def msr_lines(n: int) -> bytes:
    return "".join(f"{128166372003061629 + i},hm,1,Write,{i * 4096},4096,1331\n" for i in range(n)).encode()


def run_reader(path: str, data: bytes) -> list[int]:
    """(writes, lines) read by a separate process from ``data`` on its stdin, a pipe."""
    code = (
        "import sys\nfrom tiered.replay.traces import read_trace\n"
        "r = read_trace(sys.argv[1])\nn = sum(len(b) for b in r)\nprint(n, r.lines, r.compression)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, path], input=data, capture_output=True, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return done.stdout.decode().split()


@pytest.mark.parametrize("path", ["-", "/dev/stdin"])
def test_a_pipe_loses_no_line(path: str) -> None:
    data = msr_lines(10_000)
    assert run_reader(path, data) == ["10000", "10000", "None"]
    fio = b"fio version 3 iolog\n1 f add\n" + b"".join(b"%d f write %d 4096\n" % (i, i * 4096) for i in range(10_000))
    assert run_reader(path, fio) == ["10000", "10002", "None"]
    blk = (DATA / "blkparse_complete.txt").read_bytes()
    writes, _ = plain_writes(DATA / "blkparse_complete.txt", "blkparse", action="C")
    assert run_reader(path, blk)[0] == str(len(writes))


def test_compare_reads_a_trace_from_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tiered.cli", "compare", "--trace", "-", "--mode", "one-bit", "--json",
         "--no-progress", "--no-sync", "--repeat", "1", "--checkpoint-every", "2500"],
        input=msr_lines(10_000), capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["writes"] == 10_000


def test_a_pipe_is_read_once(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"1,h,0,Write,0,4096,1\n")
    os.close(write_end)
    reader = read_trace(f"/dev/fd/{read_end}")
    try:
        assert sum(len(b) for b in reader) == 1
        with pytest.raises(InvalidArgumentError, match="only once"):
            list(reader)
    finally:
        os.close(read_end)


def compress(kind: str, data: bytes, **options: object) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    import zstandard

    return zstandard.ZstdCompressor(write_checksum=True, **options).compress(data)  # type: ignore[arg-type]


KINDS = ["gzip", "xz", "zstd"]
PLAIN = [("fio_v3_syncs.iolog", "fio"), ("blkparse_tty.txt", "blkparse"), ("msr_hm_1.csv", "msr")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "fmt"), PLAIN)
def test_compressed_traces_are_read_directly(tmp_path: Path, kind: str, name: str, fmt: str) -> None:
    # Told by the magic number, not the name: no suffix here.
    path = tmp_path / "trace"
    path.write_bytes(compress(kind, (DATA / name).read_bytes()))
    reader = read_trace(path)
    assert (reader.format, reader.compression) == (fmt, kind)
    _, offs, lens, _ = collect(reader)
    assert pairs(offs, lens) == plain_writes(DATA / name, fmt)[0]
    # Several gzip members or zstd frames, as concatenating files makes.
    text = (DATA / name).read_bytes()
    path.write_bytes(compress(kind, text[:100]) + compress(kind, text[100:]))
    _, offs2, _, _ = collect(read_trace(path))
    assert offs2.tolist() == offs.tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_a_compressed_pipe(kind: str) -> None:
    assert run_reader("-", compress(kind, msr_lines(10_000))) == ["10000", "10000", kind]


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_or_corrupt_compressed_trace(tmp_path: Path, kind: str) -> None:
    data = compress(kind, msr_lines(50_000))
    for name, damaged in [
        ("cut", data[: len(data) // 2]),
        ("cut-tail", data[:-5]),
        ("cut-head", data[:12]),
        ("flipped", data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x55]) + data[len(data) // 2 + 1 :]),
    ]:
        path = tmp_path / f"{name}.{kind}"
        path.write_bytes(damaged)
        # cut-head fails while the format is being detected, or, given, at line 1.
        for fmt in (None, "msr") if name == "cut-head" else (None,):
            with pytest.raises(TraceFormatError) as info:
                list(read_trace(path, format=fmt))
            message = str(info.value)
            assert re.match(re.escape(str(path)) + r":\d+: ", message), message
            assert kind in message and "\n" not in message


def test_compressed_trace_streams_in_constant_memory(tmp_path: Path) -> None:
    import tracemalloc

    text = msr_lines(150_000)  # 7 MB of text
    path = tmp_path / "big.csv.gz"
    path.write_bytes(gzip.compress(text, compresslevel=1))
    reader = read_trace(path, batch=4096)
    tracemalloc.start()
    try:
        count = sum(len(b) for b in reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 150_000
    assert peak < 2 << 20, peak  # the text is 7 MB


@pytest.mark.parametrize("fmt", ["fio", "blkparse", "msr"])
def test_damaged_lines_raise_only_trace_format_errors(tmp_path: Path, fmt: str) -> None:
    import random

    name = {"fio": "fio_v3_syncs.iolog", "blkparse": "blkparse_tty.txt", "msr": "msr_hm_1.csv"}[fmt]
    lines = (DATA / name).read_text().splitlines(keepends=True)
    rng = random.Random(fmt)
    junk = ["²", "٣", "9" * 30, "-1", "+", ",", " ", "\x00", "\ufffd", "1_0", "0x10", "nan", "\n", "Q", "C"]
    for case in range(300):
        damaged = list(lines)
        k = rng.randrange(1 if fmt == "fio" else 0, len(damaged))
        line = damaged[k]
        at = rng.randrange(len(line))
        cut = rng.randrange(at, min(len(line), at + 4) + 1)
        damaged[k] = line[:at] + rng.choice(junk) + line[cut:]
        path = write(tmp_path, "".join(damaged), f"{fmt}{case}")
        for skip_bad in (False, True):
            try:
                list(read_trace(path, format=fmt, skip_bad=skip_bad))
            except TraceFormatError as exc:
                assert re.match(re.escape(str(path)) + r":\d+: ", str(exc)), str(exc)


def test_a_byte_order_mark_and_crlf_line_ends(tmp_path: Path) -> None:
    # As a Windows tool saves a CSV: the MSR traces were recorded on Windows.
    path = tmp_path / "win.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "msr_hm_1.csv").read_bytes().replace(b"\n", b"\r\n"))
    reader = read_trace(path)
    assert reader.format == "msr"
    _, offs, lens, _ = collect(reader)
    assert pairs(offs, lens) == plain_writes(DATA / "msr_hm_1.csv", "msr")[0]


def test_fio_format_given_keeps_v3_times(tmp_path: Path) -> None:
    for path in (write(tmp_path, FIO_V3), DATA / "fio_v3_syncs.iolog"):
        _, _, _, times = collect(read_trace(path, format="fio"))
        assert times is not None and times[0] > 0
    _, _, _, times = collect(read_trace(write(tmp_path, FIO_V2, "v2"), format="fio"))
    assert times is None


def test_real_fio_log_with_syncs(tmp_path: Path) -> None:
    fio = shutil.which("fio")
    if fio is None:
        pytest.skip("fio is not installed")
    log = tmp_path / "iolog"
    subprocess.run(
        [fio, "--name=t", f"--filename={tmp_path / 'data'}", "--rw=randwrite", "--bs=4k", "--size=4M",
         "--io_size=256k", "--ioengine=psync", "--fsync=8", "--sync_file_range=write:4",
         f"--write_iolog={log}", "--output=/dev/null"],
        check=True, capture_output=True,
    )
    text = log.read_text()
    assert " sync_file_range " in text and " sync " in text
    writes, nothing = plain_writes(log, "fio")
    reader = read_trace(log)
    _, offs, lens, _ = collect(reader)
    assert pairs(offs, lens) == writes and len(writes) == 64
    assert reader.ignored == nothing > 0 and reader.skipped == 0
