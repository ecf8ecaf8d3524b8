"""`tiered compare`: recording, measuring in child processes, advice, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import tiered
from tiered import cli
from tiered.cli import compare as cli_compare
from tiered.replay.advisor import Limits, recommend, violations
from tiered.replay.compare import (
    CheckpointMark,
    Config,
    Measurement,
    compare,
    configurations,
    disagreements,
    read_recording,
    record,
    record_workload,
)
from tiered.replay.traces import FORMATS
from tiered.replay.workloads import KINDS, Workload, WriteBatch, generate

SMALL = Workload("zipf", volume_size=1 << 30, writes=30_000, checkpoint_every=3000, seed=3)


def flat(events) -> list:
    """Events as ("mark", index) and (offset, length) items, whatever the batching."""
    out = []
    for ev in events:
        if isinstance(ev, CheckpointMark):
            out.append(("mark", ev.index))
        else:
            out.extend(zip(ev.offsets.tolist(), ev.lengths.tolist()))
    return out


def batch(offsets, lengths) -> WriteBatch:
    return WriteBatch(np.array(offsets, np.int64), np.array(lengths, np.int64))


def test_recording_replays_the_same_events(tmp_path):
    events = [CheckpointMark(0), batch([0, 4096], [4096, 10]), CheckpointMark(1), CheckpointMark(2),
              batch([8192], [512]), CheckpointMark(3)]
    rec = record(events, str(tmp_path / "w"), None, "test")
    assert rec.writes == 3 and rec.marks == (0, 2, 2, 3) and rec.size == rec.extent == 8704
    assert flat(read_recording(rec)) == [("mark", 0), (0, 4096), (4096, 10), ("mark", 1), ("mark", 2),
                              (8192, 512), ("mark", 3)]


def test_recording_splits_long_batches_and_keeps_order(tmp_path):
    rec = record_workload(SMALL, str(tmp_path / "w"))
    assert flat(read_recording(rec)) == flat(generate(SMALL))
    assert rec.size == SMALL.volume_size and len(rec.marks) == 10


def test_recording_rejects_writes_past_the_size(tmp_path):
    with pytest.raises(tiered.OutOfRangeError, match="past the volume size 4096"):
        record([CheckpointMark(0), batch([4000], [200])], str(tmp_path / "w"), 4096, "t")
    with pytest.raises(tiered.InvalidArgumentError, match="no writes"):
        record([CheckpointMark(0)], str(tmp_path / "w"), None, "t")


def test_every_strategy_is_measured_and_answers_agree(tmp_path):
    rec = record_workload(SMALL, str(tmp_path / "w"))
    configs = configurations(["one-bit", "multi-bit", "hybrid"], [4096, 65536], [1 << 20], recent=2)
    results = compare(rec, configs, workdir=str(tmp_path), sync=False, progress=False)
    assert [m.label for m in results] == [c.label for c in configs]
    assert disagreements(results) == []
    for m in results:
        assert m.ok, m.error
        assert m.writes == SMALL.writes and m.checkpoints == 10
        assert m.writes_per_s > 0 and 0 < m.checkpoint_p50_ms <= m.checkpoint_max_ms
        assert m.query_oldest_ms > 0 and m.reopen_ms > 0
        assert m.ram_peak_bytes >= max(m.ram_replay_peak_bytes, m.ram_steady_bytes) and m.ram_engine_bytes > 0
        assert m.disk_bytes > 0 and m.store_file_bytes >= m.disk_bytes and m.cpu_s > 0
    # The oldest answer is every distinct chunk written (zipf rewrites a hot set).
    for m in results:
        same_granularity = [x for x in results if x.granularity == m.granularity]
        assert {x.digest for x in same_granularity} == {m.digest}
        assert m.changed_bytes % m.granularity == 0 or m.changed_bytes == SMALL.volume_size


def test_a_failing_configuration_is_reported_not_raised(tmp_path):
    w = Workload("uniform", volume_size=1 << 30, writes=3000, checkpoint_every=10, seed=1)
    rec = record_workload(w, str(tmp_path / "w"))
    narrow = Config(tiered.Strategy("multi-bit", width=8), 65536)
    wide = Config(tiered.Strategy("multi-bit", width=16), 65536)
    results = compare(rec, [narrow, wide], workdir=str(tmp_path), sync=False, progress=False)
    assert not results[0].ok and "CheckpointLimitError" in results[0].error
    assert results[1].ok
    assert disagreements(results) == []


def measurement(label: str, **values) -> Measurement:
    base = dict(mode="one-bit", width=None, recent=None, granularity=65536, cache_bytes=1 << 20,
                writes=1, checkpoints=1, writes_per_s=1e7, checkpoint_p50_ms=1.0, checkpoint_max_ms=2.0,
                query_oldest_ms=10.0, ram_peak_bytes=10 << 20, disk_bytes=1 << 20)
    base.update(values)
    return Measurement(label=label, **base)


def test_advice_respects_limits_and_explains_itself():
    lean = measurement("lean", ram_peak_bytes=4 << 20, query_oldest_ms=40.0)
    fast = measurement("fast", mode="multi-bit", width=16, ram_peak_bytes=40 << 20, query_oldest_ms=5.0)
    advice = recommend([lean, fast], Limits(max_ram=32 << 20))
    assert advice.choice is lean and "the only configuration" in advice.reason
    advice = recommend([lean, fast], Limits(max_query_ms=20))
    assert advice.choice is fast
    advice = recommend([lean, fast], Limits(max_ram=1 << 20))
    assert advice.choice is None
    assert "closest is lean" in advice.reason and "peak RAM 4.0 MiB > 1.0 MiB" in advice.reason
    assert violations(fast, Limits(max_ram=32 << 20, max_query_ms=1)) == [
        "peak RAM 40.0 MiB > 32.0 MiB", "cold query of the oldest checkpoint 5.00 ms > 1.00 ms"]


def test_advice_without_limits_balances_every_measure():
    # Each is best somewhere; "middle" is never more than 2x from the best.
    a = measurement("a", ram_peak_bytes=1 << 20, query_oldest_ms=100.0)
    b = measurement("b", ram_peak_bytes=100 << 20, query_oldest_ms=1.0)
    middle = measurement("middle", ram_peak_bytes=2 << 20, query_oldest_ms=2.0)
    advice = recommend([a, b, middle], Limits())
    assert advice.choice is middle
    assert "no limits were given" in advice.reason
    assert "peak RAM 2.0 MiB, 2.0x the best (1.0 MiB, a)" in advice.reason
    assert "cold query of the oldest checkpoint 2.00 ms, 2.0x the best (1.00 ms, b)" in advice.reason
    failed = measurement("broken", error="CheckpointLimitError: too many")
    assert recommend([failed], Limits()).choice is None


def test_advice_names_every_measure_where_the_choice_is_not_the_best():
    # The table of the complaint: the choice is balanced on what it is chosen
    # on, but its steady RAM is 5.7x and its newest-query time 2.6x the best.
    lean = measurement("lean", ram_peak_bytes=10 << 20, ram_steady_bytes=10 << 20, query_oldest_ms=40.0,
                       query_newest_ms=1.0, cpu_s=1.0, checkpoint_p50_ms=1.0)
    chosen = measurement("chosen", ram_peak_bytes=11 << 20, ram_steady_bytes=57 << 20, query_oldest_ms=10.5,
                         query_newest_ms=2.6, writes_per_s=8e6, cpu_s=1.0, checkpoint_p50_ms=1.0)
    fast = measurement("fast", ram_peak_bytes=60 << 20, ram_steady_bytes=60 << 20, query_oldest_ms=10.0,
                       query_newest_ms=2.0, cpu_s=1.0, checkpoint_p50_ms=1.0)
    advice = recommend([lean, chosen, fast], Limits())
    assert advice.choice is chosen
    assert "every measure" not in advice.reason and "within 5%" not in advice.reason
    assert advice.worse == (
        "mark throughput 8.00 M writes/s, 20% under the best (10.00 M writes/s, lean)",
        "cold query of the newest checkpoint 2.60 ms, 2.6x the best (1.00 ms, lean)",
        "cold query of the oldest checkpoint 10.5 ms, 5% over the best (10.0 ms, fast)",
        "peak RAM 11.0 MiB, 1.1x the best (10.0 MiB, lean)",
        "steady RAM 57.0 MiB, 5.7x the best (10.0 MiB, lean)",
    )
    assert all(item in advice.reason for item in advice.worse)
    # The best on every measure is told so.
    solo = recommend([lean, measurement("worse", ram_peak_bytes=20 << 20, ram_steady_bytes=20 << 20,
                                        query_oldest_ms=80.0, query_newest_ms=2.0, cpu_s=2.0,
                                        checkpoint_p50_ms=2.0, checkpoint_max_ms=4.0, disk_bytes=2 << 20,
                                        writes_per_s=5e6)], Limits())
    assert solo.choice is lean and solo.worse == () and "the best on every measure" in solo.reason


def test_advice_compares_with_every_configuration_measured():
    # Only one meets the limit; it is still compared with the one that does not.
    small = measurement("small", ram_peak_bytes=4 << 20, query_oldest_ms=40.0)
    big = measurement("big", ram_peak_bytes=40 << 20, query_oldest_ms=5.0)
    advice = recommend([small, big], Limits(max_ram=32 << 20))
    assert advice.choice is small and "the only configuration that does" in advice.reason
    assert advice.worse == ("cold query of the oldest checkpoint 40.0 ms, 8.0x the best (5.00 ms, big)",)


def test_plot_stays_readable_with_many_configurations(tmp_path):
    pytest.importorskip("matplotlib")
    from tiered.replay import plot

    results = []
    for i, mode in enumerate(["one-bit", "multi-bit", "hybrid"] * 5):
        granularity = 4096 << (i % 5)
        results.append(measurement(
            f"{mode} {granularity >> 10}K cache {1 + i}M", mode=mode, granularity=granularity,
            ram_peak_bytes=(1 << 20) * (1 + i) ** 3,  # 1 MiB to 3.3 GiB: decades
            ram_steady_bytes=1 << 20, query_oldest_ms=0.05 * 10 ** (i % 4), query_newest_ms=0.01 + i,
            checkpoint_max_ms=3.0 + i % 3, writes_per_s=(50 + 3 * i) * 1e6, cpu_s=1.0))
    limits = Limits(max_ram=512 << 20, max_query_ms=10.0)
    fig = plot.figure(results, limits, "fifteen configurations", results[4].label)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == [m.label for m in results]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for upper, lower in zip(boxes, boxes[1:]):
        assert not upper.overlaps(lower), (upper, lower)
    for axis in fig.axes:
        ticks = [t.get_window_extent(renderer) for t in axis.get_xticklabels() if t.get_text()]
        for left, right in zip(ticks, ticks[1:]):
            assert not left.overlaps(right)
        assert axis.get_xlim()[0] >= 0
    for axis in fig.axes[1:]:  # the names are drawn once, clear of the bars
        assert not any(box.overlaps(axis.get_window_extent(renderer)) for box in boxes)
    scales = {axis.get_title().split("\n")[0]: axis.get_xscale() for axis in fig.axes}
    assert scales["peak RAM (MiB)"] == "log" and scales["cold query, oldest checkpoint (ms)"] == "log"
    assert scales["worst checkpoint (ms)"] == "linear" and scales["mark throughput (million writes/s)"] == "linear"
    plot.draw(results, str(tmp_path / "many.png"), limits, "fifteen configurations", results[4].label)
    assert (tmp_path / "many.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [{"max_ram": 0}, {"max_query_ms": -1.0}, {"max_ram": float("inf")},
                                 {"min_writes_per_s": "fast"}])
def test_impossible_limits_are_rejected(bad):
    with pytest.raises(tiered.InvalidArgumentError):
        Limits(**bad)


def test_disagreeing_answers_are_reported():
    a = measurement("a", digest="x")
    b = measurement("b", digest="y")
    other = measurement("c", granularity=4096, digest="z")
    assert disagreements([a, b, other]) == ["b answered differently from a"]


# -- the command ---------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_match_the_engine():
    assert cli_compare.WORKLOAD_KINDS == KINDS
    assert cli_compare.TRACE_FORMATS == FORMATS
    assert cli_compare.MODES == tiered.config.MODES


def test_cli_compare_prints_a_table_and_a_recommendation(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "compare", "--writes", "20000", "--checkpoint-every", "2000", "--size", "1G",
        "--no-progress", "--no-sync", "--dir", str(tmp_path), "--max-ram", "1G", "--plot", str(tmp_path / "p.png"),
    )
    assert code == 0, err
    assert "CONFIGURATION" in out and "one-bit 64K cache 64M" in out and "hybrid r8" in out
    assert "All 3 configurations gave the same answers" in out and "at 64K chunks:" in out
    assert "Recommended:" in out and "tiered convert STORE VOLUME" in out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [tmp_path / "p.png"]  # temporary stores are gone


def test_cli_compare_json_from_a_trace(tmp_path, capsys):
    trace = tmp_path / "t.log"
    lines = ["fio version 2 iolog", "/dev/x add", "/dev/x open"]
    lines += [f"/dev/x write {i * 8192} 4096" for i in range(3000)]
    trace.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(
        capsys, "compare", "--trace", str(trace), "--checkpoint-every", "300", "--mode", "one-bit,multi-bit",
        "--granularity", "4K,8K", "--json", "--no-progress", "--no-sync",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["writes"] == 3000 and doc["checkpoints"] == 10 and doc["volume_size"] == 2999 * 8192 + 4096
    assert [r["label"] for r in doc["results"]] == [
        "one-bit 4K cache 64M", "one-bit 8K cache 64M", "multi-bit w16 4K cache 64M", "multi-bit w16 8K cache 64M"]
    assert doc["answers_agree"] and doc["recommendation"]["apply"].startswith("tiered convert")
    # Every other 4 KiB block was written: 4K chunks see half, 8K chunks all.
    by_label = {r["label"]: r for r in doc["results"]}
    assert by_label["one-bit 4K cache 64M"]["changed_bytes"] == 3000 * 4096
    assert by_label["one-bit 8K cache 64M"]["changed_bytes"] == 3000 * 8192 - 4096


def write_trace(path, writes: int, seconds_apart: float | None = None) -> str:
    """An fio iolog, version 3 (timed) if ``seconds_apart`` is given."""
    if seconds_apart is None:
        lines = ["fio version 2 iolog", "/dev/x add", "/dev/x open"]
        lines += [f"/dev/x write {i * 8192} 4096" for i in range(writes)]
    else:
        lines = ["fio version 3 iolog", "0 /dev/x add", "0 /dev/x open"]
        lines += [f"{round(i * seconds_apart * 1e6)} /dev/x write {i * 8192} 4096" for i in range(writes)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def nothing_replayed(monkeypatch):
    """Fail the test if any configuration is replayed."""
    from tiered.replay import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a configuration was replayed")

    monkeypatch.setattr(runner, "run_each", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trace", "/nonexistent/trace.log"], "No such file or directory"),
        (["--trace", "TRACE", "--checkpoint-seconds", "1"], "need timestamps"),
        (["--trace", "TRACE", "--size", "4K"], "past the volume size"),
        (["--dir", "/nonexistent/dir"], "No such file or directory"),
    ],
)
def test_cli_compare_bad_input_is_one_line(tmp_path, capsys, nothing_replayed, argv, message):
    trace = tmp_path / "t.log"
    trace.write_text("fio version 2 iolog\n/dev/x write 8192 4096\n")
    argv = [str(trace) if a == "TRACE" else a for a in argv]
    code, out, err = run_cli(capsys, "compare", "--no-progress", *argv)
    assert code == 1
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-ram", "0"], "--max-ram: must be at least 1 byte"),
        (["--size", "0"], "--size: must be at least 1 byte"),
        (["--write-size", "0"], "--write-size: must be at least 1 byte"),
        (["--cache", "0"], "--cache: must be at least 1 byte"),
        (["--mode", "two-bit"], "invalid choice 'two-bit'"),
        (["--mode", "one-bit,hybrid,one-bit"], "names 'one-bit' twice"),
        (["--granularity", "64K,64KiB"], "names 65536 twice"),
        (["--granularity", "3000"], "power of two"),
        (["--size", "4E", "--granularity", "512"], "more than"),
        (["--plot", "/nonexistent/dir/p.png"], "no directory"),
        (["--plot", "PLOT.xyz"], "'.xyz'"),
        (["--plot", "PLOT"], "no file type"),
        (["--trace", "TRACE", "--writes", "5000"], "--writes describe a workload"),
        (["--trace", "TRACE", "--seed", "7", "--iops", "1k"], "--seed, --iops describe a workload"),
        (["--trace", "TRACE", "--write-size", "8K"], "--write-size describe a workload"),
        (["--workload", "zipf", "--format", "fio"], "--format apply to --trace only"),
        (["--skip-bad"], "--skip-bad apply to --trace only"),
        (["--checkpoint-seconds", "1"], "needs --iops"),
        (["--checkpoint-every", "1"], "makes 10,000,000 checkpoints (one every 1 writes)"),
        (["--writes", "1M", "--iops", "1M", "--checkpoint-seconds", "10us"], "makes 100,001 checkpoints"),
        (["--trace", "TIMED", "--checkpoint-seconds", "0.5ms"], "makes 23,998 checkpoints (one every 0.0005 s"),
        (["--trace", "TRACE", "--checkpoint-every", "1"], "makes 12,000 checkpoints (one every 1 writes)"),
    ],
)
def test_cli_compare_usage_errors_before_any_replay(tmp_path, capsys, nothing_replayed, argv, message):
    names = {"TRACE": write_trace(tmp_path / "t.log", 12_000),
             "TIMED": write_trace(tmp_path / "timed.log", 12_000, seconds_apart=0.001),
             "PLOT.xyz": str(tmp_path / "p.xyz"), "PLOT": str(tmp_path / "p")}
    argv = [names.get(a, a) for a in argv]
    code, out, err = run_cli(capsys, "compare", "--no-progress", "--dir", str(tmp_path), *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    if "checkpoints" in message:
        assert "--force" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        os.path.basename(v) for k, v in names.items() if k in ("TRACE", "TIMED"))


def test_cli_compare_force_runs_a_long_schedule():
    parser = cli.build_parser()
    args = parser.parse_args(["compare", "--checkpoint-every", "1", "--force"])
    limits, configs = cli_compare.check_arguments(args)
    assert len(configs) == 3


def test_cli_compare_unmeetable_limits_exit_1(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "compare", "--writes", "5000", "--size", "1G", "--mode", "multi-bit", "--no-progress",
        "--no-sync", "--max-ram", "1K",
    )
    assert code == 1
    assert "No recommendation: no configuration meets --max-ram 1.0 KiB" in out


def test_cli_compare_usage_errors(capsys):
    code, _, err = run_cli(capsys, "compare", "--format", "pcap")
    assert code == 2 and "invalid choice" in err
    code, _, err = run_cli(capsys, "compare", "--trace", "x", "--workload", "zipf")
    assert code == 2 and "not allowed with" in err


def test_cli_cache_budget_follows_the_ram_limit():
    import argparse

    def budgets(**kw):
        return cli_compare.cache_budgets(argparse.Namespace(**{"cache": None, "max_ram": None, **kw}))

    assert budgets() == [64 << 20]
    assert budgets(max_ram=32 << 20) == [16 << 20]
    assert budgets(max_ram=1 << 30) == [64 << 20]
    assert budgets(max_ram=32 << 20, cache=[1 << 20, 2 << 20]) == [1 << 20, 2 << 20]


def test_cli_compare_repeat_must_be_positive(capsys):
    code, _, err = run_cli(capsys, "compare", "--repeat", "0")
    assert code == 2 and "--repeat" in err


def test_memory_is_measured_by_the_kernel():
    from tiered.replay.memory import PeakSampler, anon_rss

    if not anon_rss():
        pytest.skip("no /proc: memory is not measured here")
    with PeakSampler() as sampler:
        before = sampler.sample()
        big = np.ones(64 << 20, np.uint8)  # touched, so resident
        during = sampler.sample()
        del big
        after = sampler.sample()
    assert during - before >= 60 << 20
    assert after < during and sampler.peak >= during


def test_progress_on_a_terminal_is_a_bar_with_a_total_and_an_eta():
    import io

    from tiered.replay.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with Progress(stream=screen) as progress:
        progress.stage("replaying", 4000, "writes")
        progress.set(1000)
        progress._bar.refresh()
        drawn = screen.getvalue()
    assert "replaying" in drawn and "25%" in drawn and "1.00k/4.00k" in drawn
    assert "<" in drawn  # elapsed<remaining: the ETA


def test_progress_elsewhere_is_a_status_line_for_reading_and_replaying(tmp_path, capsys, monkeypatch):
    from tiered.replay import progress

    monkeypatch.setattr(progress, "STATUS_SECONDS", 0.0)  # every update is due
    trace = write_trace(tmp_path / "t.log", 3000)
    code, out, err = run_cli(capsys, "compare", "--trace", trace, "--checkpoint-every", "300", "--mode",
                             "one-bit,hybrid", "--json", "--no-sync", "--dir", str(tmp_path))
    assert code == 0, err
    lines = err.splitlines()
    assert all(line.startswith("tiered compare: ") for line in lines), err
    # Reading the trace: lines against the total estimated from its size.
    assert any(line.startswith("tiered compare: reading t.log: 3,003 of ") and "lines (" in line for line in lines)
    assert any("1/2 one-bit 64K cache 64M: 3,000 of 6,000 writes (50%)" in line and "left" in line for line in lines)
    assert "tiered compare: measured 1/2: one-bit 64K cache 64M" in lines
    assert "tiered compare: measured 2/2: hybrid r8 64K cache 64M" in lines
    assert json.loads(out)["writes"] == 3000
    code, out, err = run_cli(capsys, "compare", "--trace", trace, "--mode", "one-bit", "--json", "--no-sync",
                             "--no-progress", "--dir", str(tmp_path))
    assert (code, err) == (0, "")
