"""`tiered compare` stopped by a real signal, in a real process: it removes
its temporary files, ends its child processes, and keeps the rows that
finished.  Every wait is bounded; nothing here measures time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Bounds on waiting for something that should happen, not expectations of speed.
WAIT_SECONDS = 600
# Eight configurations: after the first row, several are still to run.
CACHES = "1M,2M,3M,4M,5M,6M,7M,8M"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find child processes")


class Running:
    """A `tiered compare` process with its output read as it comes."""

    def __init__(self, tmp_path: Path, *argv: str, session: bool = False) -> None:
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(self.tmpdir)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiered", "compare", "--size", "1G", "--no-sync", "--repeat", "1", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
            start_new_session=session,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            assert self.proc.poll() is None, f"ended before {what}: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS} s"
            time.sleep(0.1)

    def children(self) -> list[int]:
        return [pid for pid, ppid, _ in processes() if ppid == self.proc.pid]

    def measuring_child(self) -> bool:
        return any(ppid == self.proc.pid and "spawn_main" in cmd and "resource_tracker" not in cmd
                   for _, ppid, cmd in processes())

    def finish(self) -> int:
        code = self.proc.wait(WAIT_SECONDS)
        for reader in self._readers:
            reader.join(WAIT_SECONDS)
        return code


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process we can see."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(b")") + 2:].split()
        out.append((int(entry), int(fields[1]), cmd))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"


def assert_cleaned_up(run: Running, children: list[int]) -> None:
    assert [p.name for p in run.tmpdir.iterdir() if p.name.startswith("tiered-compare-")] == []
    deadline = time.monotonic() + WAIT_SECONDS
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == []


def first_row(run: Running) -> bool:
    return any(line.startswith("one-bit 64K cache 1M ") for line in run.out)


@pytest.mark.parametrize(
    "signum, group",
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGTERM, True)],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGTERM-to-the-group"],
)
def test_a_stop_signal_keeps_finished_rows_and_leaves_nothing(tmp_path, signum, group):
    run = Running(tmp_path, "--writes", "200k", "--mode", "one-bit", "--cache", CACHES, session=group)
    try:
        run.wait_for(lambda: first_row(run), "first row printed while the others run")
        run.wait_for(run.measuring_child, "child process measuring the next configuration")
        children = run.children()
        if group:  # as `timeout` and a closed terminal do
            os.killpg(run.proc.pid, signum)
        else:
            os.kill(run.proc.pid, signum)
        code = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    name = signal.Signals(signum).name
    assert code == 128 + signum, "".join(run.err)
    assert_cleaned_up(run, children)
    out = "".join(run.out)
    assert out.startswith("replaying the zipf workload") and "CONFIGURATION" in out and first_row(run)
    assert "Recommended" not in out
    assert f"stopped by {name}" in "".join(run.err) and "Traceback" not in "".join(run.err)


def test_a_stopped_json_run_writes_the_finished_rows(tmp_path):
    run = Running(tmp_path, "--writes", "200k", "--mode", "one-bit", "--cache", CACHES, "--json")
    try:
        run.wait_for(lambda: any("measured 1/8: one-bit 64K cache 1M" in line for line in run.err),
                     "first configuration reported on stderr")
        run.wait_for(run.measuring_child, "child process measuring the next configuration")
        children = run.children()
        os.kill(run.proc.pid, signal.SIGTERM)
        code = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 128 + signal.SIGTERM, "".join(run.err)
    assert_cleaned_up(run, children)
    doc = json.loads("".join(run.out))
    assert doc["stopped_by"] == "SIGTERM" and doc["configurations"] == 8 and doc["recommendation"] is None
    assert 1 <= len(doc["results"]) < 8 and doc["results"][0]["label"] == "one-bit 64K cache 1M"
    assert doc["results"][0]["writes"] == 200_000


def test_a_stop_while_recording_leaves_nothing(tmp_path):
    run = Running(tmp_path, "--writes", "20M", "--mode", "one-bit")

    def recording() -> bool:
        return any(p.stat().st_size for p in run.tmpdir.glob("tiered-compare-*/writes.bin"))

    try:
        run.wait_for(recording, "recording")
        os.kill(run.proc.pid, signal.SIGTERM)
        code = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 128 + signal.SIGTERM, "".join(run.err)
    assert_cleaned_up(run, [])
    assert "".join(run.out) == ""
    assert "stopped by SIGTERM: 0 of 1 configurations measured" in "".join(run.err)
