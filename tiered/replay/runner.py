"""The child processes of a comparison: one per configuration, started and
warmed up early and side by side, measured one at a time, reporting their
progress, and leaving nothing behind however the comparison stops.

Outside the measurements, most of a comparison's time goes to starting each
child (an interpreter, numpy, numba) and to its warm-up, which loads the
compiled kernels its configuration uses, or compiles them after a fresh
install.  Done one child after another, one core works while the other
idles.  So the children start as soon as the configurations are known, while
the parent still records the writes, and warm up at most one per core at a
time (the first ones compile the kernels later ones then load).  The
measurements wait until every warm-up is done and then run one at a time, so
no measurement shares the CPU with another child.

Each child is a plain ``multiprocessing`` process (spawned, so it starts
without the parent's memory) talking through one pipe: ("warm",) once warmed
up; then, after the parent's ("go", recording, options), ("progress",
writes) messages while it replays and ("result", Measurement).  The parent
waits on the pipe and on the process itself, so a child that dies is noticed
at once.  Whatever ends a comparison (results, an exception, a signal turned
into one) every child is terminated and its temporary store removed; on
Linux a child also asks the kernel to end it if the parent dies first.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any

from ..errors import InvalidArgumentError
from .compare import (
    Config, Measurement, Recording, RunOptions, _empty_measurement, check_volume_size, default_batch, measure, relate_to_lazy,
    warm_up,
)
from .progress import Progress

# Signals that stop a comparison (see tiered.cli.stopping).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Seconds a terminated child gets before it is killed.
TERMINATE_SECONDS = 5.0
# Seconds between two checks of a quiet child (and two status lines due).
POLL_SECONDS = 1.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _child(conn: Connection, config: Config, root: str) -> None:
    """A child's whole life: warm up, wait for the recording, measure, exit."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent decides what
    # happens to this child, so the child ignores it rather than print a
    # traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if os.getppid() == 1:  # the parent is already gone
        return
    try:
        conn.recv()  # ("warm up",): a turn to use a core
        try:
            warm_up(config, root)
        except Exception:  # the measurement meets it again, and reports it in its row
            pass
        conn.send(("warm",))
        _, rec, options = conn.recv()
    except (EOFError, OSError):  # the comparison ended before this configuration's turn
        return
    try:
        result = measure(config, rec, root, options, lambda n: conn.send(("progress", n)))
    except Exception as exc:  # reported in its row, like a store's refusal
        result = _empty_measurement(config)
        result.error = f"{type(exc).__name__}: {exc}"
    conn.send(("result", result))
    conn.close()


def stop(process: Any) -> None:
    """End a child for sure: SIGTERM, then SIGKILL if it lingers."""
    if process.is_alive():
        process.terminate()
        process.join(TERMINATE_SECONDS)
    if process.is_alive():
        process.kill()
    if process.pid is not None:
        process.join()


class Children:
    """One child process per configuration, warming up from construction.

    Warm-ups start in the order of ``configs``, at most ``parallel`` (default:
    the usable cores) at a time.  :meth:`measure` runs one configuration once
    every warm-up is done; :meth:`close` ends every child, even mid warm-up,
    and removes their stores.  Use as a context manager.
    """

    def __init__(self, configs: Sequence[Config], workdir: str | None = None, parallel: int | None = None) -> None:
        self.configs = list(configs)
        self.roots: list[str] = []
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        self._closed = False
        self._ready = threading.Event()
        self._pacer: threading.Thread | None = None
        self._context = get_context("spawn")
        try:
            for _ in self.configs:
                self.roots.append(tempfile.mkdtemp(prefix="tiered-compare-", dir=workdir))
        except BaseException:
            self._remove_roots()
            raise
        try:
            # The children are started here, by the caller's thread: Linux
            # ends a child whose starting thread ends (PR_SET_PDEATHSIG).
            # Their imports then run while the caller records the writes; a
            # thread paces their warm-ups.
            for k in range(len(self.configs)):
                self._start(k)
        except BaseException:
            self.close()
            raise
        self._pacer = threading.Thread(target=self._pace, args=(parallel or _cores(),), daemon=True)
        self._pacer.start()

    def _start(self, k: int) -> None:
        receiver, sender = self._context.Pipe()
        process = self._context.Process(target=_child, args=(sender, self.configs[k], self.roots[k]), daemon=True)
        # Signals wait while a child starts, so that none is left half
        # started and unknown to the caller's cleanup.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        sender.close()
        self._processes.append(process)
        self._conns.append(receiver)

    def _pace(self, parallel: int) -> None:
        """Let the children warm up, at most ``parallel`` at once; set
        ``_ready`` once every one has warmed up (or died)."""
        try:
            warming: dict[Any, int] = {}  # a warming child's pipe and sentinel -> its index
            started = 0
            n = len(self.configs)
            while started < n or warming:
                while started < n and len(set(warming.values())) < parallel:
                    if self._closed:
                        return
                    self._conns[started].send(("warm up",))
                    warming[self._conns[started]] = started
                    warming[self._processes[started].sentinel] = started
                    started += 1
                for ready in wait(list(warming), POLL_SECONDS):
                    k = warming.get(ready)
                    if k is None:
                        continue
                    conn = self._conns[k]
                    if ready is conn:
                        try:
                            conn.recv()  # ("warm",)
                        except (EOFError, OSError):
                            pass
                    warming.pop(conn, None)
                    warming.pop(self._processes[k].sentinel, None)
                if self._closed:
                    return
        except OSError:  # a child died, or close() closed the pipes: measure() meets it
            return
        finally:
            self._ready.set()

    def measure(self, k: int, rec: Recording, options: RunOptions, progress: Progress, done_writes: int) -> Measurement:
        """Measure configuration ``k`` once every warm-up is done, then end
        its child and remove its store."""
        while not self._ready.wait(POLL_SECONDS):
            progress.tick()
        result: Measurement | None = None
        process = self._processes[k] if k < len(self._processes) else None
        try:
            if process is not None:
                conn = self._conns[k]
                try:
                    conn.send(("go", rec, options))
                except OSError:  # the child died during its warm-up
                    pass
                while result is None:
                    ready = wait([conn, process.sentinel], POLL_SECONDS)
                    if conn in ready:
                        try:
                            message = conn.recv()
                        except (EOFError, OSError):
                            break
                        if message[0] == "progress":
                            progress.set(done_writes + message[1])
                        elif message[0] == "result":
                            result = message[1]
                    elif process.sentinel in ready:
                        break
                    else:
                        progress.tick()
        finally:
            if process is not None:
                stop(process)
            shutil.rmtree(self.roots[k], ignore_errors=True)
        if result is None:
            result = _empty_measurement(config=self.configs[k])
            code = None if process is None else process.exitcode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
            result.error = f"the measuring process {how} before reporting"
        return result

    def close(self) -> None:
        """End every child, even mid warm-up, and remove their stores."""
        self._closed = True
        if self._pacer is not None:
            self._pacer.join()
        for process in self._processes:
            stop(process)
        for conn in self._conns:
            conn.close()
        self._remove_roots()

    def _remove_roots(self) -> None:
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def run_each(
    rec: Recording,
    configs: Sequence[Config],
    *,
    workdir: str | None = None,
    sync: bool = True,
    repeat: int = 3,
    progress: Progress | None = None,
    children: Children | None = None,
    batch: int | None = None,
) -> Iterator[Measurement]:
    """Measure the configurations one after another, yielding each result
    as it is done.  ``children``: a :class:`Children` of these
    configurations, started earlier (default: started here).  Closing the
    generator (or an exception while it waits) ends the children and
    removes their stores."""
    if not configs:
        raise InvalidArgumentError("nothing to compare: no configuration given")
    check_volume_size(rec.size, configs)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise InvalidArgumentError(f"repeat must be a positive int, got {repeat!r}")
    if children is not None and children.configs != list(configs):
        raise InvalidArgumentError("the children were started for other configurations")
    if batch is None:
        batch = default_batch(configs)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgumentError(f"batch must be a positive int, got {batch!r}")
    options = RunOptions(sync, repeat, batch)
    progress = Progress(False) if progress is None else progress
    own = children is None
    if own:
        children = Children(configs, workdir)
    try:
        progress.stage("replaying", rec.writes * len(configs), "writes")
        done: list[Measurement] = []
        for i, config in enumerate(configs):
            progress.describe(f"{i + 1}/{len(configs)} {config.label}")
            result = children.measure(i, rec, options, progress, i * rec.writes)
            relate_to_lazy(result, done)
            done.append(result)
            progress.set((i + 1) * rec.writes)
            yield result
    finally:
        if own:
            children.close()
