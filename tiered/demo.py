"""A small demonstration: one built-in workload through every strategy.

Replays the same seeded workload (random 4 KiB writes with a hot set, a
checkpoint every batch) into a 1 TiB volume per strategy, in a temporary
store, checks that all strategies give the same answers, and prints what
each one cost.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from .config import Strategy
from .store import open as open_store

VOLUME_SIZE = 1 << 40
GRANULARITY = 64 << 10
WRITE_SIZE = 4096


@dataclass
class Result:
    mode: str
    writes_per_s: float
    checkpoint_ms: float
    newest_ms: float
    oldest_ms: float
    ram_bytes: int
    disk_bytes: int
    answer: list


def workload(seed: int, checkpoints: int, writes_per_checkpoint: int) -> list[np.ndarray]:
    """Batches of write offsets: 80% of writes go to a 5% hot set."""
    rng = np.random.default_rng(seed)
    blocks = VOLUME_SIZE // WRITE_SIZE
    hot = rng.integers(0, blocks, blocks // 20, dtype=np.int64)
    batches = []
    for _ in range(checkpoints):
        is_hot = rng.random(writes_per_checkpoint) < 0.8
        cold = rng.integers(0, blocks, writes_per_checkpoint, dtype=np.int64)
        picks = np.where(is_hot, hot[rng.integers(0, len(hot), writes_per_checkpoint)], cold)
        batches.append(picks * WRITE_SIZE)
    return batches


def replay(path: str, mode: str, batches: list[np.ndarray]) -> Result:
    with open_store(path, sync=False) as store:
        vol = store.create_volume("demo", size=VOLUME_SIZE, granularity=GRANULARITY, strategy=Strategy(mode))
        lengths = np.full(len(batches[0]), WRITE_SIZE, np.int64)
        vol.checkpoint("c0")
        mark_s = ckpt_s = 0.0
        for i, offsets in enumerate(batches, start=1):
            t = time.perf_counter()
            vol.mark_many(offsets, lengths)
            mark_s += time.perf_counter() - t
            t = time.perf_counter()
            vol.checkpoint(f"c{i}")
            ckpt_s += time.perf_counter() - t
        vol.mark_many(batches[0][:1000], lengths[:1000])
        ram = vol.stats()["ram_bytes"]
    # Query from a fresh open, so nothing is cached: the cold cost.
    with open_store(path, sync=False) as store:
        vol = store.volume("demo")
        disk = vol.stats()["disk_bytes"]  # after close: multi-bit persists its array then
        t = time.perf_counter()
        vol.changed_since(f"c{len(batches)}")
        newest = time.perf_counter() - t
        t = time.perf_counter()
        answer = vol.changed_since("c0")
        oldest = time.perf_counter() - t
    return Result(
        mode=mode,
        writes_per_s=sum(len(b) for b in batches) / mark_s,
        checkpoint_ms=ckpt_s / len(batches) * 1e3,
        newest_ms=newest * 1e3,
        oldest_ms=oldest * 1e3,
        ram_bytes=ram,
        disk_bytes=disk,
        answer=list(answer),
    )


def run(out: TextIO, checkpoints: int = 30, writes_per_checkpoint: int = 100_000, seed: int = 1) -> int:
    batches = workload(seed, checkpoints, writes_per_checkpoint)
    out.write(
        f"workload: 1 TiB volume, 64 KiB chunks, {checkpoints} checkpoints x "
        f"{writes_per_checkpoint:,} random 4 KiB writes (80% to a 5% hot set)\n\n"
    )
    root = tempfile.mkdtemp(prefix="tiered-demo-")
    modes = ("one-bit", "multi-bit", "hybrid")
    try:
        # Compile or load every kernel first (enough checkpoints for a hybrid
        # fold), so that no strategy's numbers include that.
        tiny = workload(seed, 20, 1000)
        for mode in modes:
            replay(f"{root}/warm-{mode}", mode, tiny)
        results = [replay(f"{root}/{mode}", mode, batches) for mode in modes]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    header = f"{'strategy':<10} {'writes/s':>12} {'checkpoint':>11} {'newest q':>9} {'oldest q':>9} {'RAM':>10} {'disk':>10}\n"
    out.write(header)
    for r in results:
        out.write(
            f"{r.mode:<10} {r.writes_per_s:>12,.0f} {r.checkpoint_ms:>9.2f}ms {r.newest_ms:>7.1f}ms "
            f"{r.oldest_ms:>7.1f}ms {r.ram_bytes / 2**20:>8.2f}MiB {r.disk_bytes / 2**20:>8.2f}MiB\n"
        )
    same = all(r.answer == results[0].answer for r in results)
    changed = sum(n for _, n in results[0].answer)
    out.write(
        f"\nchanged since the oldest checkpoint: {changed / 2**30:.2f} GiB in {len(results[0].answer):,} extents; "
        f"all strategies agree: {'yes' if same else 'NO'}\n"
        "(query times are cold: the store is reopened with an empty cache)\n"
    )
    return 0 if same else 1
