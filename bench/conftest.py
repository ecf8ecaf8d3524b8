"""Fixtures of the tiered benchmark suite (pytest-benchmark).

Not part of the default test run (``pytest`` only collects ``tests/``).  From
the repository root::

    .venv/bin/python -m pytest bench/ --benchmark-only

See bench/README.md for the options.  Everything a benchmark needs comes from
a fixture here: data sets are generated from fixed seeds, stores live in pytest
temporary directories, and each benchmark module collects the medians it
measured in a module-scoped dict that its final summary test turns into
ratios.  Shared constants and kernels are in benchutil.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest

# ``python -m pytest`` from the repository root finds the package already;
# a bare ``pytest bench/`` with tiered not installed needs the root on the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchutil import (
    GRANULARITY,
    HISTORY_FRACTION,
    VOLUME_SIZE,
    History,
    WriteBatch,
    build_history,
    compile_floor,
    dirty_offsets,
    make_write_batch,
)

import tiered


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "bench_summary: a summary test that reads the medians measured earlier in its "
        "module; it runs under --benchmark-only too",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-benchmark skips every test without the benchmark fixture under
    # --benchmark-only.  The summary tests time nothing themselves (a
    # benchmark fixture left unused only earns a warning), so they are let
    # through here: comparing in one run is the point of the suite.
    for item in items:
        if item.get_closest_marker("bench_summary") is None:
            continue
        item.own_markers[:] = [
            m
            for m in item.own_markers
            if not (m.name == "skip" and "--benchmark-only" in str(m.kwargs.get("reason", "")))
        ]


# -- data -------------------------------------------------------------------


@pytest.fixture(scope="session")
def write_batch() -> WriteBatch:
    """1,000,000 random 4 KiB writes (fixed seed) in every input form."""
    return make_write_batch()


@pytest.fixture(scope="session")
def dirty_sets() -> Callable[[float, int], np.ndarray]:
    """``dirty_sets(fraction, i)``: the i-th random dirty set of that fraction
    of the 1 TiB volume's chunks, as byte offsets of distinct chunks (a 4 KiB
    write at each dirties exactly those chunks).  Each made once."""
    made: dict[tuple[float, int], np.ndarray] = {}

    def get(fraction: float, i: int) -> np.ndarray:
        key = (fraction, i)
        if key not in made:
            made[key] = dirty_offsets(fraction, 7919 * (i + 1) + int(fraction * 1e6))
        return made[key]

    return get


@pytest.fixture(scope="session")
def floor_compiled() -> None:
    """Depend on this to have the numba floor kernels compiled before timing."""
    compile_floor()


# -- stores -----------------------------------------------------------------


@pytest.fixture
def open_store(tmp_path) -> Iterator[Callable[..., tiered.Store]]:
    """``open_store(name, sync=False)``: a store in this test's tmp dir; every
    store opened through it is closed at teardown."""
    opened: list = []

    def make(name: str = "store", *, sync: bool = False) -> tiered.Store:
        store = tiered.open(str(tmp_path / name), sync=sync)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


@pytest.fixture
def tracked_volume(open_store) -> Callable[..., tiered.Volume]:
    """``tracked_volume(mode, sync=False)``: a fresh 1 TiB / 64 KiB volume
    with one checkpoint ("base"), so that marks are tracked."""

    def make(mode: str, *, sync: bool = False) -> tiered.Volume:
        store = open_store(f"{mode}-sync{int(sync)}", sync=sync)
        vol = store.create_volume("vol", VOLUME_SIZE, GRANULARITY, strategy=tiered.Strategy(mode))
        vol.checkpoint("base")
        return vol

    return make


@pytest.fixture(scope="session")
def histories(tmp_path_factory, dirty_sets) -> Callable[[str, int], History]:
    """``histories(mode, length)``: a closed store whose volume has
    ``length`` checkpoints with a 1% random dirty set (``dirty_sets(0.01,
    i)``) written after checkpoint i.  Built once per session and shared:
    the query, history and union benchmarks read the same stores, and
    whatever changes one works on a copy."""
    built: dict[tuple[str, int], History] = {}

    def get(mode: str, length: int) -> History:
        key = (mode, length)
        if key not in built:
            path = str(tmp_path_factory.mktemp(f"history-{mode}-{length}") / "store")
            built[key] = build_history(path, mode, length, lambda i: dirty_sets(HISTORY_FRACTION, i))
        return built[key]

    return get


# -- results shared inside one module ---------------------------------------


@pytest.fixture(scope="module")
def medians() -> dict[str, dict]:
    """What the benchmarks of one module measured, by key: median, min, max,
    rounds and raw round times (seconds), plus their extra info.  The module's
    summary test reads it."""
    return {}


@pytest.fixture
def record(medians) -> Callable[..., None]:
    """``record(benchmark, key, **info)``: keep the stats of a finished
    benchmark under ``key`` for the summary, and add ``info`` to its
    extra_info (saved in the JSON)."""

    def keep(benchmark, key: str, **info) -> None:
        benchmark.extra_info.update(info)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is None:  # --benchmark-disable: nothing was measured
            return
        medians[key] = {
            "median": stats.median,
            "min": stats.min,
            "max": stats.max,
            "rounds": stats.rounds,
            "data": list(stats.data),
            **info,
        }

    return keep
