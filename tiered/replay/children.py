"""The child processes of a comparison: one per configuration, started and
warmed up early and side by side, measured one at a time.

Outside the measurements, most of a comparison's time goes to starting each
child (an interpreter, numpy, numba) and to its warm-up, which loads the
compiled kernels its configuration uses, or compiles them after a fresh
install.  Done one child after another, one core works while the other
idles.  Here the children start as soon as the configurations are known,
while the parent still records the writes, and warm up side by side, one
per core.  The measurements wait until every warm-up is done and then run
one at a time, so no measurement shares the CPU with another child.

On Linux, children are forked from a server process that has imported
numpy, numba and tiered and set numba up once (multiprocessing's
``forkserver``): each child is still a new process with its own memory, and
loads its own kernels, but imports nothing again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import forkserver, get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from types import TracebackType

from .compare import Config, Measurement, Recording, RunOptions, measure, warm_up
from ..errors import TieredError


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# What the fork server imports once for every child.
PRELOAD = ["tiered.replay.preload"]


def _context() -> BaseContext:
    # Linux only: elsewhere forking a process that has loaded LLVM (and the
    # system's frameworks) is less safe, and spawn is the default.
    if not sys.platform.startswith("linux") or "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    # Start the server now, so its imports overlap whatever the caller
    # does next (recording the writes).
    forkserver.ensure_running()
    return context


def _prepare(config: Config, root: str) -> None:
    """In a child: start and warm up.  An error is left for the measurement
    to meet again and report."""
    try:
        warm_up(config, root)
    except TieredError:
        pass


class Children:
    """One child process per configuration, warming up from construction.

    Warm-ups start in the order of ``configs``, at most ``parallel`` (default:
    the usable cores) at a time: after a fresh install the first ones compile
    the kernels that later ones share, which then load them.
    """

    def __init__(self, configs: Sequence[Config], workdir: str | None = None, parallel: int | None = None) -> None:
        self.configs = list(configs)
        self.roots = [tempfile.mkdtemp(prefix="tiered-compare-", dir=workdir) for _ in self.configs]
        context = _context()
        self._pools = [ProcessPoolExecutor(max_workers=1, mp_context=context) for _ in self.configs]
        self._lock = threading.Lock()
        self._started = self._finished = 0
        self._closed = False
        self._ready = threading.Event()
        if not self.configs:
            self._ready.set()
        # Starting a child waits for the fork server's imports: a thread
        # does it, so that the caller records the writes meanwhile.
        first = min(parallel or _cores(), len(self.configs))
        self._starter = threading.Thread(target=self._start_first, args=(first,), daemon=True)
        self._starter.start()

    def _start_first(self, count: int) -> None:
        for _ in range(count):
            self._start_next()

    def _start_next(self, finished: Future | None = None) -> None:
        """Start the next warm-up (after ``finished``, one that ended)."""
        with self._lock:
            if finished is not None:
                self._finished += 1
                if self._finished == len(self.configs):
                    self._ready.set()
            k = self._started
            if self._closed or k == len(self.configs):
                return
            self._started += 1
        try:
            future = self._pools[k].submit(_prepare, self.configs[k], self.roots[k])
        except Exception:  # shut down meanwhile, or no child: measure() meets the error again
            future = Future()
            future.set_result(None)
        future.add_done_callback(self._start_next)

    def measure(self, k: int, rec: Recording, options: RunOptions) -> Measurement:
        """Measure configuration ``k`` once every warm-up is done, then end its child."""
        self._ready.wait()
        try:
            return self._pools[k].submit(measure, self.configs[k], rec, self.roots[k], options).result()
        finally:
            self._pools[k].shutdown()
            shutil.rmtree(self.roots[k], ignore_errors=True)

    def close(self) -> None:
        """End every child, even mid warm-up, and remove their stores."""
        with self._lock:
            self._closed = True
        self._starter.join()
        for pool in self._pools:
            _stop(pool)
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting for the task it runs."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()
