"""Sync-mode marks: the single-mark shortcut (chunks remembered durable) and
the batch shortcut (nothing pending, nothing new) answer as the full probe."""

from __future__ import annotations

import numpy as np
import pytest

import tiered

G = 64 << 10


@pytest.fixture(params=["one-bit", "multi-bit", "hybrid"])
def vol(request, tmp_path):
    with tiered.open(str(tmp_path / "s"), sync=False) as store:
        v = store.create_volume("v", 1 << 30, G, strategy=request.param, durability="sync")
        v.checkpoint("c0")
        yield v


def test_single_mark_needs_a_sync_once_per_chunk_and_period(vol):
    token = vol.mark(5 * G, 4096)
    assert isinstance(token, int)
    assert vol.mark(5 * G + 8192, 4096) == token  # same chunk, still open
    vol.sync(token)
    assert vol.mark(5 * G, 4096) is None  # durable: remembered
    assert vol.mark(5 * G, 4096) is None  # from the remembered set
    assert vol.mark(5 * G + G - 1, 1) is None
    assert vol.stats()["sync_writes"] == 1
    vol.checkpoint("c1")  # a new period: nothing is durable in it yet
    token = vol.mark(5 * G, 4096)
    assert isinstance(token, int)
    vol.sync(token)
    assert vol.mark(5 * G, 4096) is None
    # a write across two chunks, one of them new
    token = vol.mark(6 * G - 4096, 8192)
    assert isinstance(token, int)
    vol.sync()
    assert [tuple(map(int, e)) for e in vol.changed_since("c1")] == [(5 * G, 2 * G)]


def test_batch_marks(vol):
    offs = np.arange(8, dtype=np.int64) * G
    lens = np.full(8, 4096, np.int64)
    token = vol.mark_many(offs, lens)
    assert isinstance(token, int)
    assert vol.mark_many(offs[:2], lens[:2]) == token  # in the open batch
    vol.sync(token)
    assert vol.mark_many(offs, lens) is None
    assert vol.mark_many(offs + G * 8, lens) is not None
    assert vol.stats()["sync_writes"] == 16
    vol.sync()
    assert vol.mark(9 * G, 1) is None
    vol.remove_checkpoint("c0")
    vol.checkpoint("c1")
    assert vol.mark(9 * G, 1) is not None


def test_convert_forgets_remembered_chunks(vol):
    vol.sync(vol.mark(3 * G, 1))
    assert vol.mark(3 * G, 1) is None
    vol.checkpoint("c1")
    vol.convert("multi-bit" if vol.strategy.mode != "multi-bit" else "one-bit")
    assert vol.mark(3 * G, 1) is not None


def test_concurrent_syncs_share_commits(tmp_path):
    import threading

    with tiered.open(str(tmp_path / "s"), sync=False) as store:
        vol = store.create_volume("v", 1 << 30, G, durability="sync")
        vol.checkpoint("c0")
        threads, per = 8, 20
        errors = []

        def work(t: int) -> None:
            try:
                for k in range(per):
                    token = vol.mark((k * threads + t) * G, 4096)
                    assert token is not None
                    vol.sync(token)
                    assert vol._sync.durable_seq >= token
            except BaseException as exc:  # reported below
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        assert not errors
        stats = vol.stats()
        assert stats["sync_commits"] <= stats["sync_waits"] <= threads * per  # a token may be durable before its sync
        assert stats["sync_writes"] == threads * per
        assert vol.changed_since("c0").total_bytes == threads * per * G
