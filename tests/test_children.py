"""The children of a comparison: started early, warmed up side by side,
measured one at a time, and ended even mid warm-up."""

from __future__ import annotations

import os

import pytest

from tiered.errors import InvalidArgumentError
from tiered.replay.runner import Children
from tiered.replay.compare import compare, configurations, record_workload
from tiered.replay.workloads import Workload

SMALL = Workload("uniform", volume_size=1 << 30, writes=20_000, checkpoint_every=2000, seed=5)


def test_children_started_before_the_recording_measure_it(tmp_path):
    configs = configurations(["one-bit", "multi-bit"], [64 << 10], [1 << 20])
    with Children(configs, str(tmp_path)) as children:
        rec = record_workload(SMALL, str(tmp_path / "writes.bin"))
        results = compare(rec, configs, workdir=str(tmp_path), sync=False, progress=False, repeat=1, children=children)
    assert [m.mode for m in results] == ["one-bit", "multi-bit"]
    assert all(m.ok and m.writes == 20_000 for m in results)
    assert results[0].digest == results[1].digest
    assert sorted(os.listdir(tmp_path)) == ["writes.bin"]  # every child's store is gone


def test_children_of_other_configurations_are_refused(tmp_path):
    configs = configurations(["one-bit", "hybrid"], [64 << 10], [1 << 20])
    rec = record_workload(SMALL, str(tmp_path / "writes.bin"))
    with Children(configs[:1], str(tmp_path)) as children:
        with pytest.raises(InvalidArgumentError, match="other configurations"):
            compare(rec, configs, workdir=str(tmp_path), progress=False, children=children)


def test_closing_ends_children_mid_warm_up(tmp_path):
    configs = configurations(["one-bit", "multi-bit", "hybrid"], [64 << 10], [1 << 20])
    Children(configs, str(tmp_path)).close()
    assert os.listdir(tmp_path) == []
