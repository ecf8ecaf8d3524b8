"""Group commit of sync-mode volumes: how many syncs share one LMDB commit.

N threads each mark a new chunk and sync it, in a loop, for a while; the
volume counts syncs that needed a commit (``sync_waits``) and commits made
(``sync_commits``).  Run on an otherwise idle machine:

    PYTHONPATH=. .venv/bin/python bench/group_commit.py [threads] [seconds]

Rows: a store that fsyncs each commit, and one that does not but whose
commits are made to take 5 ms (a slow disk).  Not a pytest test: its ratio
depends on timing, so nothing asserts it.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time

import tiered

GRAN = 512


def run(threads: int, seconds: float, fsync: bool, commit_ms: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, tiered.open(tmp + "/s", sync=fsync) as store:
        vol = store.create_volume("v", size=1 << 40, granularity=GRAN, durability="sync")
        vol.checkpoint("a")
        vol.sync(vol.mark(0, 1))  # loads the kernels
        if commit_ms:
            store._storage.commit_hook = lambda: time.sleep(commit_ms / 1000)
        before = vol.stats()
        chunks = iter(range(1, 1 << 40))
        lock = threading.Lock()
        done = [0]
        stop = time.time() + seconds

        def worker() -> None:
            while time.time() < stop:
                with lock:
                    c = next(chunks)
                vol.sync(vol.mark(3 * c * GRAN, GRAN))
                with lock:
                    done[0] += 1

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.time()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.time() - t0
        after = vol.stats()
        store._storage.commit_hook = None
        commits = after["sync_commits"] - before["sync_commits"]
        waits = after["sync_waits"] - before["sync_waits"]
        label = "fsync" if fsync else f"no fsync, commits take {commit_ms:g} ms"
        print(
            f"{threads:3d} threads, {label:28s}: {done[0] / elapsed:8.0f} syncs/s, "
            f"{commits:6d} commits, {waits / max(commits, 1):5.1f} syncs per commit"
        )


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    run(1, secs, True, 0)
    run(n, secs, True, 0)
    run(n, secs, False, 5)
