"""Run each configuration's measurement in a child process of its own,
report its progress, hand back its result as soon as it is done, and leave
nothing behind when stopped.

The child is a plain ``multiprocessing`` process (spawned, so it starts
without the parent's memory) talking through one pipe: ("progress", writes)
messages while it replays, then ("result", Measurement).  The parent waits
on the pipe and on the process itself, so a child that dies is noticed at
once; whatever ends the loop (a result, an exception, a signal turned into
one) the child is terminated and its temporary store removed.  On Linux the
child also asks the kernel to end it if the parent dies without cleaning up.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import InvalidArgumentError
from .compare import Config, Measurement, Recording, RunOptions, _empty_measurement, check_volume_size, measure
from .progress import Progress

# Signals that stop a comparison: blocked while a child starts, so that a
# child is never left half-started and unknown to the parent.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Seconds a terminated child gets before it is killed.
TERMINATE_SECONDS = 5.0
# Seconds between two checks of a quiet child (and two status lines due).
POLL_SECONDS = 1.0


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _child(conn: Connection, config: Config, rec: Recording, root: str, options: RunOptions) -> None:
    """The child's whole life: measure, send the result, exit."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent decides what
    # happens to this child, so the child ignores it rather than print a
    # traceback.  The start-up mask (see run_each) is lifted.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if os.getppid() == 1:  # the parent is already gone
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


def _measure_in_child(
    config: Config, rec: Recording, root: str, options: RunOptions, progress: Progress, done_writes: int
) -> Measurement:
    context = get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, config, rec, root, options), daemon=True)
    result: Measurement | None = None
    try:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        sender.close()
        while result is None:
            ready = wait([receiver, process.sentinel], POLL_SECONDS)
            if receiver in ready:
                try:
                    kind, value = receiver.recv()
                except EOFError:
                    break
                if kind == "progress":
                    progress.set(done_writes + value)
                else:
                    result = value
            elif process.sentinel in ready:
                break
            else:
                progress.tick()
    finally:
        stop(process)
        receiver.close()
    if result is None:
        result = _empty_measurement(config)
        code = process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        result.error = f"the measuring process {how} before reporting"
    return result


def run_each(
    rec: Recording,
    configs: Sequence[Config],
    *,
    workdir: str | None = None,
    sync: bool = True,
    repeat: int = 3,
    progress: Progress | None = None,
) -> Iterator[Measurement]:
    """Measure the configurations one after another, yielding each result
    as it is done.  Closing the generator (or an exception while it waits)
    ends the running child and removes its store."""
    if not configs:
        raise InvalidArgumentError("nothing to compare: no configuration given")
    check_volume_size(rec.size, configs)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise InvalidArgumentError(f"repeat must be a positive int, got {repeat!r}")
    options = RunOptions(sync, repeat)
    progress = Progress(False) if progress is None else progress
    progress.stage("replaying", rec.writes * len(configs), "writes")
    for i, config in enumerate(configs):
        progress.describe(f"{i + 1}/{len(configs)} {config.label}")
        root = tempfile.mkdtemp(prefix="tiered-compare-", dir=workdir)
        try:
            result = _measure_in_child(config, rec, root, options, progress, i * rec.writes)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        progress.set((i + 1) * rec.writes)
        yield result
