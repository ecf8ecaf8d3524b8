"""`tiered compare --durability`, the advisor's --require-exact-after-crash,
and `tiered convert --durability` (small workloads: no timing is checked)."""

from __future__ import annotations

import io
import json

import pytest

import tiered
from tiered import cli
from tiered.errors import InvalidArgumentError
from tiered.replay import report
from tiered.replay.advisor import Limits, recommend, violations
from tiered.replay.compare import Measurement, compare, configurations, disagreements, record_workload
from tiered.replay.workloads import Workload

SMALL = Workload("zipf", volume_size=1 << 30, writes=4000, checkpoint_every=1000, seed=3)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_durability_varies_fastest_and_lazy_comes_first():
    configs = configurations(["one-bit", "multi-bit"], [65536], [1 << 20], durabilities=["sync", "lazy"])
    assert [(c.strategy.mode, c.durability) for c in configs] == [
        ("one-bit", "lazy"), ("one-bit", "sync"), ("multi-bit", "lazy"), ("multi-bit", "sync")]
    assert configs[0].label == "one-bit 64K cache 1M"  # lazy labels are unchanged
    assert configs[1].label == "one-bit 64K cache 1M sync"
    assert [c.durability for c in configurations(["one-bit"], [65536], [1 << 20])] == ["lazy"]
    with pytest.raises(InvalidArgumentError, match="durability"):
        configurations(["one-bit"], [65536], [1 << 20], durabilities=["eager"])


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("durability")
    rec = record_workload(SMALL, str(tmp / "w"))
    configs = configurations(["one-bit"], [65536], [1 << 20], durabilities=["lazy", "sync"])
    return compare(rec, configs, workdir=str(tmp), sync=False, progress=False, batch=64)


def test_sync_configurations_report_their_syncs_and_the_ratio_to_lazy(measured):
    results = measured
    assert all(m.ok for m in results), [m.error for m in results]
    assert disagreements(results) == []  # sync mode answers as lazy mode does
    lazy, sync = results
    assert lazy.durability == "lazy" and lazy.syncs == 0 and lazy.sync_writes == 0 and lazy.replay_vs_lazy is None
    assert sync.durability == "sync" and sync.replay_s > 0
    # 64-write batches, cut at checkpoints: at most one sync each, one at least per period
    periods = SMALL.writes // SMALL.checkpoint_every
    assert periods <= sync.syncs <= periods * -(-SMALL.checkpoint_every // 64)
    assert 0 < sync.sync_writes <= SMALL.writes and sync.sync_fraction == sync.sync_writes / SMALL.writes
    assert 1 <= sync.sync_commits <= sync.syncs and sync.syncs_per_s > 0 and sync.commit_ms > 0
    assert sync.replay_vs_lazy == pytest.approx(sync.replay_s / lazy.replay_s)
    assert set(Measurement.__dataclass_fields__) <= set(sync.to_dict())


def test_the_table_shows_sync_columns_only_when_sync_is_compared(measured):
    lazy, sync = measured
    out = io.StringIO()
    report.write_table(out, [lazy])
    assert "SYNCED" not in out.getvalue()
    out = io.StringIO()
    report.write_table(out, measured)
    header, lazy_row, sync_row = out.getvalue().splitlines()
    assert header.split()[-5:] == ["SYNCED", "SYNCS/S", "REPLAY", "VS", "LAZY"]
    assert sync_row.startswith("one-bit 64K cache 1M sync") and sync_row.endswith("x")
    assert lazy_row.split()[-4:-2] == ["-", "-"] and lazy_row.split()[-1] == "-"
    advice = recommend(measured, Limits(require_exact_after_crash=True))
    out = io.StringIO()
    report.write_verdict(out, measured, advice, [])
    text = out.getvalue()
    assert "SYNCED:" in text and "Recommended: one-bit 64K cache 1M sync" in text
    assert "durability: sync" in text and "tiered convert STORE VOLUME one-bit --durability sync" in text
    out = io.StringIO()
    report.write_verdict(out, [lazy], recommend([lazy], Limits()), [])
    assert "durability" not in out.getvalue() and "SYNCED" not in out.getvalue()


def measurement(label: str, durability: str, **values) -> Measurement:
    base = dict(mode="one-bit", width=None, recent=None, granularity=65536, cache_bytes=1 << 20,
                writes=1, checkpoints=1, writes_per_s=1e7, checkpoint_p50_ms=1.0, checkpoint_max_ms=2.0,
                query_oldest_ms=10.0, ram_peak_bytes=10 << 20, disk_bytes=1 << 20, durability=durability)
    base.update(values)
    return Measurement(label=label, **base)


def test_require_exact_after_crash_admits_only_sync():
    lazy = measurement("one-bit lazy", "lazy", writes_per_s=1e8)
    sync = measurement("one-bit sync", "sync", writes_per_s=1e5)
    assert recommend([lazy, sync], Limits()).choice is lazy
    exact = Limits(require_exact_after_crash=True)
    advice = recommend([lazy, sync], exact)
    assert advice.choice is sync and "--require-exact-after-crash" in advice.reason
    assert violations(lazy, exact) and not violations(sync, exact)
    none = recommend([lazy], exact)
    assert none.choice is None and "none was measured" in none.reason
    # a sync configuration that breaks another limit is the closest, never a lazy one
    tight = Limits(max_ram=1 << 20, require_exact_after_crash=True)
    advice = recommend([lazy, sync], tight)
    assert advice.choice is None and "the closest is one-bit sync" in advice.reason
    with pytest.raises(InvalidArgumentError):
        Limits(require_exact_after_crash="yes")


def test_the_command_names_the_durability():
    sync = measurement("one-bit sync", "sync")
    lazy = measurement("one-bit", "lazy")
    assert report.apply_command(sync) == "tiered convert STORE VOLUME one-bit --durability sync"
    assert report.apply_command(lazy) == "tiered convert STORE VOLUME one-bit"
    assert report.apply_command(lazy, True) == "tiered convert STORE VOLUME one-bit --durability lazy"


COMMON = ("--workload", "zipf", "--writes", "3000", "--checkpoint-every", "1000", "--size", "1G",
          "--mode", "one-bit", "--no-progress", "--no-sync", "--repeat", "1")


def test_cli_compare_durability_json(tmp_path, capsys):
    code, out, err = run_cli(capsys, "compare", *COMMON, "--dir", str(tmp_path), "--durability", "lazy,sync",
                             "--require-exact-after-crash", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["durability"] for r in doc["results"]] == ["lazy", "sync"]
    assert [r["label"] for r in doc["results"]] == ["one-bit 64K cache 64M", "one-bit 64K cache 64M sync"]
    sync = doc["results"][1]
    assert 0 < sync["sync_fraction"] <= 1 and sync["syncs"] > 0 and sync["replay_vs_lazy"] > 0
    assert doc["recommendation"]["durability"] == "sync"
    assert doc["recommendation"]["apply"] == "tiered convert STORE VOLUME one-bit --durability sync"
    assert doc["limits"] == {"require_exact_after_crash": True}
    assert list(tmp_path.iterdir()) == []


def test_cli_require_exact_after_crash_needs_sync(capsys):
    code, out, err = run_cli(capsys, "compare", *COMMON, "--require-exact-after-crash")
    assert code == 2 and "--durability sync" in err and not out


def test_cli_convert_durability(tmp_path, capsys):
    path = str(tmp_path / "s")
    with tiered.open(path) as store:
        vol = store.create_volume("vda", 1 << 30, 65536)
        vol.checkpoint("c0")
        vol.mark(0, 4096)
    code, out, err = run_cli(capsys, "convert", path, "vda", "multi-bit", "--durability", "sync", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["durability"] == {"before": "lazy", "after": "sync"}
    with tiered.open(path, readonly=True) as store:
        vol = store.volume("vda")
        assert vol.durability == "sync" and vol.strategy.mode == "multi-bit"
        assert vol.changed_since("c0").total_bytes == 65536
    code, out, err = run_cli(capsys, "convert", path, "vda", "multi-bit", "--durability", "lazy")
    assert code == 0, err
    assert "durability:" in out and "sync -> lazy" in out
    code, out, err = run_cli(capsys, "convert", path, "vda", "one-bit", "--json")
    assert code == 0 and "durability" not in json.loads(out)
