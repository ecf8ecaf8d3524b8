"""The `tiered` command: exact output, error exits, and a fast start."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tiered
from tiered.cli import main, map_ranges

G = 64 << 10
# 16 whole chunks and a partial one, so the last range is clipped to the size.
SIZE = 16 * G + 1000
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    path = str(tmp_path / "store")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G, strategy="hybrid")
        vol.checkpoint("base")
        vol.mark(0, 100)  # chunk 0
        vol.mark(3 * G + 5, 10)  # chunk 3
        vol.checkpoint("next")
        vol.mark(10 * G, 2 * G)  # chunks 10 and 11
        vol.mark(16 * G, 1)  # the partial last chunk
        store.create_volume("empty", size=1 << 30, strategy="one-bit")
    # Closed here: LMDB allows one environment per path per process.
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lines(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


# -- changed ---------------------------------------------------------------


def test_changed_since_maps_the_whole_volume(store_path, capsys):
    code, out, err = run(capsys, "changed", store_path, "vda", "base")
    assert (code, err) == (0, "")
    assert out == (
        "         0       65536    1  dirty\n"
        "     65536      131072    0  clean\n"
        "    196608       65536    1  dirty\n"
        "    262144      393216    0  clean\n"
        "    655360      131072    1  dirty\n"
        "    786432      262144    0  clean\n"
        "   1048576        1000    1  dirty\n"
    )


def test_changed_between_ends_with_the_clean_tail(store_path, capsys):
    code, out, err = run(capsys, "changed", store_path, "vda", "base", "--to", "next")
    assert (code, err) == (0, "")
    assert out == (
        "         0       65536    1  dirty\n"
        "     65536      131072    0  clean\n"
        "    196608       65536    1  dirty\n"
        "    262144      787432    0  clean\n"
    )


def test_changed_region_is_clipped_at_both_ends(store_path, capsys):
    code, out, err = run(
        capsys, "changed", store_path, "vda", "base", "--offset", "100", "--length", "200K"
    )
    assert (code, err) == (0, "")
    assert out == (
        "       100       65436    1  dirty\n"
        "     65536      131072    0  clean\n"
        "    196608        8292    1  dirty\n"
    )


def test_changed_offset_alone_runs_to_the_end(store_path, capsys):
    code, out, _ = run(capsys, "changed", store_path, "vda", "next", "--offset", "12KiB")
    assert code == 0
    assert out == (
        "     12288      643072    0  clean\n"
        "    655360      131072    1  dirty\n"
        "    786432      262144    0  clean\n"
        "   1048576        1000    1  dirty\n"
    )


def test_changed_with_nothing_written_is_one_clean_line(store_path, capsys):
    code, out, _ = run(capsys, "changed", store_path, "vda", "next", "--length", "64K")
    assert (code, out) == (0, "         0       65536    0  clean\n")


def test_changed_empty_region_prints_nothing(store_path, capsys):
    argv = ["changed", store_path, "vda", "base", "--offset", "1M", "--length", "0"]
    assert run(capsys, *argv) == (0, "", "")


def test_changed_json(store_path, capsys):
    code, out, err = run(capsys, "changed", store_path, "vda", "base", "--to", "next", "--json")
    assert (code, err) == (0, "")
    with tiered.open(store_path, readonly=True) as store:
        gid = store.volume("vda").generation_id
    assert json.loads(out) == {
        "generation_id": gid,
        "volume": "vda",
        "since": "base",
        "until": "next",
        "offset": 0,
        "length": SIZE,
        "unclean_shutdown": False,
        "granularity": G,
        "exact": True,
        "total_bytes": 2 * G,
        "extents": [{"offset": 0, "length": G}, {"offset": 3 * G, "length": G}],
    }


def test_changed_after_unclean_shutdown_warns(tmp_path, capsys):
    path = str(tmp_path / "store")
    # A process that marks a write and dies without closing the store.
    crash = python(
        "-c",
        "import os, tiered\n"
        f"store = tiered.open({path!r}, sync=False)\n"
        "vol = store.create_volume('vda', size=1 << 20, granularity=65536, strategy='one-bit')\n"
        "vol.checkpoint('base')\n"
        "vol.mark(0, 100)\n"
        "os._exit(0)\n",
    )
    assert crash.returncode == 0, crash.stderr
    code, out, err = run(capsys, "changed", path, "vda", "base")
    assert code == 0
    assert out == "         0     1048576    1  dirty\n"
    assert err.startswith("tiered: warning: volume 'vda' was not closed cleanly")
    assert len(err.splitlines()) == 1


def test_changed_notes_an_inexact_map(tmp_path, capsys):
    path = str(tmp_path / "store")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("vda", size=1 << 20, granularity=G, strategy="hybrid")
        # Enough checkpoints for hybrid to fold old writesets into its
        # generation array, where answers between checkpoints are supersets.
        for i in range(20):
            vol.checkpoint(f"c{i}")
            vol.mark(0, 1)
            vol.mark(G * (i % 15 + 1), 1)
        exact = vol.changed_between("c0", "c1").exact
    code, _, err = run(capsys, "changed", path, "vda", "c0", "--to", "c1")
    assert code == 0
    note = "tiered: warning: the map may include chunks that were not written (exact=false)\n"
    assert err == ("" if exact else note)
    code, out, _ = run(capsys, "changed", path, "vda", "c0", "--to", "c1", "--json")
    assert json.loads(out)["exact"] is exact


# -- other commands --------------------------------------------------------


def test_volumes(store_path, capsys):
    code, out, err = run(capsys, "volumes", store_path)
    assert (code, err) == (0, "")
    assert out == lines(
        """
        NAME   SIZE     GRANULARITY  MODE     DURABILITY  CHECKPOINTS
        empty  1G       64K          one-bit  lazy        0
        vda    1049576  64K          hybrid   lazy        2
        """
    )


def test_volumes_json(store_path, capsys):
    code, out, _ = run(capsys, "volumes", store_path, "--json")
    assert code == 0
    with tiered.open(store_path, readonly=True) as store:
        gids = {name: store.volume(name).generation_id for name in store.volumes()}
    assert json.loads(out) == [
        {"name": "empty", "size": 1 << 30, "granularity": G, "mode": "one-bit", "durability": "lazy",
         "checkpoints": 0, "generation_id": gids["empty"]},
        {"name": "vda", "size": SIZE, "granularity": G, "mode": "hybrid", "durability": "lazy",
         "checkpoints": 2, "generation_id": gids["vda"]},
    ]


def test_checkpoints_oldest_first_in_utc(store_path, capsys):
    with tiered.open(store_path, readonly=True) as store:
        created = [c.created for c in store.volume("vda").checkpoints()]
        gid = store.volume("vda").generation_id
    stamps = [
        datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for t in created
    ]
    code, out, _ = run(capsys, "checkpoints", store_path, "vda")
    assert code == 0
    assert out == f"NAME  CREATED\nbase  {stamps[0]}\nnext  {stamps[1]}\n"

    code, out, _ = run(capsys, "checkpoints", store_path, "vda", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"name": "base", "created": stamps[0], "created_unix": created[0], "generation_id": gid},
        {"name": "next", "created": stamps[1], "created_unix": created[1], "generation_id": gid},
    ]


def test_stats(store_path, capsys):
    code, out, _ = run(capsys, "stats", store_path, "vda", "--json")
    assert code == 0
    stats = json.loads(out)
    assert {k: stats[k] for k in ("volume", "mode", "size", "granularity", "checkpoints")} == {
        "volume": "vda",
        "mode": "hybrid",
        "size": SIZE,
        "granularity": G,
        "checkpoints": 2,
    }
    assert stats["unclean_shutdown"] is False

    code, out, _ = run(capsys, "stats", store_path, "vda")
    assert code == 0
    assert "mode:               hybrid" in out.splitlines()
    assert "unclean_shutdown:   false" in out.splitlines()


def test_store_is_not_modified(store_path, capsys):
    data = Path(store_path, "data.mdb")
    before = data.read_bytes()
    for argv in (
        ["volumes", store_path],
        ["checkpoints", store_path, "vda"],
        ["changed", store_path, "vda", "base"],
        ["stats", store_path, "vda"],
    ):
        assert run(capsys, *argv)[0] == 0
    assert data.read_bytes() == before


# -- errors ----------------------------------------------------------------


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert err.startswith("tiered: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["changed", "{store}", "nope", "base"], ["'nope'"]),
        (["checkpoints", "{store}", "nope"], ["'nope'"]),
        (["stats", "{store}", "nope"], ["'nope'"]),
        (["changed", "{store}", "vda", "gone"], ["'gone'"]),
        (["changed", "{store}", "vda", "base", "--to", "gone"], ["'gone'"]),
        (["changed", "{store}", "vda", "next", "--to", "base"], ["'next'", "'base'"]),
        (["changed", "{store}", "vda", "base", "--offset", "2M"], ["outside"]),
        (["changed", "{store}", "vda", "base", "--offset", "1M", "--length", "1M"], ["outside"]),
        (["volumes", "{store}/missing"], ["missing"]),
    ],
)
def test_runtime_errors_exit_1(store_path, capsys, argv, fragments):
    code, out, err = run(capsys, *(a.format(store=store_path) for a in argv))
    assert (code, out) == (1, "")
    assert_one_line_error(err, *fragments)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["changed", "{store}", "vda", "base", "--offset", "12Q"], ["--offset", "'12Q'"]),
        (["changed", "{store}", "vda", "base", "--length", "1.3K"], ["--length", "'1.3K'", "whole"]),
        (["changed", "{store}", "vda"], ["CHECKPOINT"]),
        (["frobnicate", "{store}"], ["frobnicate"]),
        ([], ["COMMAND"]),
    ],
)
def test_usage_errors_exit_2(store_path, capsys, argv, fragments):
    code, out, err = run(capsys, *(a.format(store=store_path) for a in argv))
    assert (code, out) == (2, "")
    assert_one_line_error(err, *fragments)


def test_help_returns_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("volumes", "checkpoints", "changed", "stats", "convert"):
        assert name in out


# -- convert ---------------------------------------------------------------


def changed_maps(capsys: pytest.CaptureFixture[str], path: str) -> dict[tuple[str, str | None], dict]:
    """`changed --json` since every checkpoint and between every pair."""
    with tiered.open(path, readonly=True) as store:
        names = [c.name for c in store.volume("vda").checkpoints()]
    maps = {}
    for i, older in enumerate(names):
        for newer in [None, *names[i + 1 :]]:
            argv = ["changed", path, "vda", older, "--json"] + ([] if newer is None else ["--to", newer])
            code, out, err = run(capsys, *argv)
            assert (code, err) == (0, "")
            maps[older, newer] = json.loads(out)
    return maps


def report_rows(out: str) -> dict[str, str]:
    rows = [line.split(":", 1) for line in out.splitlines()]
    return {key: value.strip() for key, value in rows}


def test_convert_round_trip(store_path, capsys):
    before = changed_maps(capsys, store_path)
    started = time.perf_counter()
    code, out, err = run(capsys, "convert", store_path, "vda", "one-bit")
    elapsed = time.perf_counter() - started
    assert (code, err) == (0, "")
    rows = report_rows(out)
    assert list(rows) == ["volume", "strategy", "checkpoints kept", "seconds", "disk_bytes", "ram_bytes"]
    assert rows["volume"] == "vda"
    assert rows["strategy"] == "hybrid (recent 8) -> one-bit"
    assert rows["checkpoints kept"] == "2"
    # The conversion's own time: part of the command's, not a timestamp.
    assert 0 <= float(rows["seconds"]) <= elapsed + 0.0005  # printed with 3 decimals
    for key in ("disk_bytes", "ram_bytes"):
        old, arrow, new = rows[key].split()
        assert arrow == "->" and int(old) > 0 and int(new) > 0
    # No folded period: one-bit keeps every answer exact, so every map is the same.
    assert changed_maps(capsys, store_path) == before

    started = time.perf_counter()
    code, out, err = run(capsys, "convert", store_path, "vda", "multi-bit", "--width", "8", "--json")
    elapsed = time.perf_counter() - started
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert set(report) == {"volume", "from", "to", "checkpoints", "seconds", "disk_bytes", "ram_bytes"}
    assert report["volume"] == "vda" and report["checkpoints"] == 2
    assert report["from"] == {"mode": "one-bit"}
    assert report["to"] == {"mode": "multi-bit", "width": 8}
    assert isinstance(report["seconds"], float) and 0 < report["seconds"] <= elapsed
    for key in ("disk_bytes", "ram_bytes"):
        assert set(report[key]) == {"before", "after"}
        assert all(isinstance(v, int) and v > 0 for v in report[key].values())
    code, out, _ = run(capsys, "stats", store_path, "vda", "--json")
    assert code == 0
    assert json.loads(out)["mode"] == "multi-bit"
    assert json.loads(out)["disk_bytes"] == report["disk_bytes"]["after"]
    after = changed_maps(capsys, store_path)
    assert after.keys() == before.keys()
    for (older, newer), answer in after.items():
        if newer is None or answer["exact"]:
            assert answer == before[older, newer]
        else:
            # Multi-bit keeps one generation per chunk: a map between two
            # checkpoints may grow, but never loses a chunk.
            chunks = {(e["offset"], e["length"]) for e in answer["extents"]}
            assert {(e["offset"], e["length"]) for e in before[older, newer]["extents"]} <= chunks

    code, out, err = run(capsys, "convert", store_path, "vda", "hybrid", "--recent", "3")
    assert (code, err) == (0, "")
    assert report_rows(out)["strategy"] == "multi-bit (width 8) -> hybrid (recent 3)"
    with tiered.open(store_path, readonly=True) as store:
        assert store.volume("vda").strategy.fixed() == {"mode": "hybrid", "recent": 3}
    for (older, newer), answer in changed_maps(capsys, store_path).items():
        if newer is None:
            assert answer == before[older, newer]


def test_convert_to_the_same_strategy_persists(store_path, capsys):
    before = changed_maps(capsys, store_path)
    code, out, err = run(capsys, "convert", store_path, "vda", "hybrid")
    assert (code, err) == (0, "")
    assert report_rows(out)["strategy"] == "hybrid (recent 8) -> hybrid (recent 8)"
    assert changed_maps(capsys, store_path) == before


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["hybrid", "--width", "8"], ["--width", "multi-bit", "hybrid"]),
        (["one-bit", "--width", "16"], ["--width", "multi-bit", "one-bit"]),
        (["multi-bit", "--recent", "2"], ["--recent", "hybrid", "multi-bit"]),
        (["one-bit", "--recent", "2"], ["--recent", "hybrid"]),
        (["multi-bit", "--width", "12"], ["--width", "12"]),
        (["hybrid", "--recent", "0"], ["--recent"]),
        (["two-bit"], ["MODE", "'two-bit'"]),
        ([], ["MODE"]),
    ],
)
def test_convert_usage_errors_exit_2_and_change_nothing(store_path, capsys, argv, fragments):
    data = Path(store_path, "data.mdb")
    before = data.read_bytes()
    code, out, err = run(capsys, "convert", store_path, "vda", *argv)
    assert (code, out) == (2, "")
    assert_one_line_error(err, *fragments, "tiered convert --help")
    assert data.read_bytes() == before


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["convert", "{store}", "nope", "one-bit"], ["'nope'"]),
        (["convert", "{store}/missing", "vda", "one-bit"], ["no store", "missing"]),
    ],
)
def test_convert_runtime_errors_exit_1(store_path, capsys, argv, fragments):
    code, out, err = run(capsys, *(a.format(store=store_path) for a in argv))
    assert (code, out) == (1, "")
    assert_one_line_error(err, *fragments)
    assert not Path(store_path, "missing").exists()  # a missing store is not created


def test_convert_beyond_the_checkpoint_limit_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "store")
    with tiered.open(path, sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G, strategy="one-bit")
        for i in range(256):
            vol.checkpoint(f"c{i}")
    code, out, err = run(capsys, "convert", path, "vda", "multi-bit", "--width", "8")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "256 live checkpoints", "width 8")
    with tiered.open(path, readonly=True) as store:
        assert store.volume("vda").strategy.mode == "one-bit"


def test_convert_while_another_process_writes_is_one_line(store_path, capsys):
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import sys, tiered\ns = tiered.open({store_path!r})\nprint('ready', flush=True)\nsys.stdin.readline()"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        code, out, err = run(capsys, "convert", store_path, "vda", "one-bit")
        assert (code, out) == (1, "")
        assert_one_line_error(err, "another process", "stop that process and retry")
    finally:
        writer.communicate("done\n", timeout=60)
    # Once the writer is gone, the same command succeeds.
    assert run(capsys, "convert", store_path, "vda", "one-bit")[0] == 0


# -- helpers ---------------------------------------------------------------


def test_map_ranges_merges_adjacent_extents():
    assert list(map_ranges([(0, 10), (10, 5), (20, 5)], 0, 30)) == [
        (0, 15, 1),
        (15, 5, 0),
        (20, 5, 1),
        (25, 5, 0),
    ]
    assert list(map_ranges([], 5, 9)) == [(5, 4, 0)]
    assert list(map_ranges([], 5, 5)) == []


# -- start-up --------------------------------------------------------------


@pytest.mark.parametrize("module", ["tiered", "tiered.cli"])
def test_python_m_help(module):
    result = python("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tiered ")


def test_cli_import_leaves_the_engine_unloaded():
    result = python(
        "-c",
        "import sys, tiered.cli\n"
        "print(sorted(m for m in ('numba', 'numpy', 'lmdb', 'tiered.store', 'tiered.volume')"
        " if m in sys.modules))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_lazy_package_still_exports_every_name():
    result = python(
        "-c",
        "import tiered\n"
        "assert tiered.__all__ == sorted(tiered.__all__)\n"
        "from tiered.store import open as store_open\n"
        "assert tiered.open is store_open\n"
        "from tiered import *\n"
        "missing = [n for n in tiered.__all__ if n not in globals()]\n"
        "print(missing, set(tiered.__all__) <= set(dir(tiered)))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[] True\n"
