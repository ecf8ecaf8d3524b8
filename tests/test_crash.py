"""Crash safety: a process that dies must never make an answer miss a chunk.

Each test runs the writer in a child process that ends with ``os._exit`` (no
close, no flush) or is killed with SIGKILL, then reopens the store here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from naive import ReferenceVolume, covers

import tiered

MODES = ["one-bit", "multi-bit", "hybrid"]
SIZE = 1 << 30
GRAN = 64 << 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(body: str, path: str, mode: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, tiered
        store = tiered.open({path!r})
        if "v" in store.volumes():
            vol = store.volume("v")
        else:
            vol = store.create_volume("v", size={SIZE}, granularity={GRAN}, strategy={mode!r})
        """
    ) + textwrap.dedent(body) + "\nos._exit(0)\n"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)


@pytest.mark.parametrize("mode", MODES)
def test_unflushed_marks_make_every_checkpoint_report_everything(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        vol.mark(1 << 20, 4096)
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert vol.unclean_shutdown
        for name in ("a", "b"):
            ext = vol.changed_since(name)
            assert list(ext) == [(0, SIZE)] and not ext.exact
        # tracking resumes exactly from the next checkpoint on
        vol.checkpoint("c")
        vol.mark(5 << 20, 1)
        assert list(vol.changed_since("c")) == [(5 << 20, GRAN)]
        assert vol.changed_since("c").exact
        vol.remove_checkpoint("a")
        vol.remove_checkpoint("b")
        assert not vol.unclean_shutdown
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert not vol.unclean_shutdown
        assert list(vol.changed_since("c")) == [(5 << 20, GRAN)]


@pytest.mark.parametrize("mode", MODES)
def test_flush_then_crash_loses_nothing(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        vol.mark(1 << 20, 4096)
        vol.flush()
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert not vol.unclean_shutdown
        assert list(vol.changed_since("a")) == [(0, GRAN), (1 << 20, GRAN)]
        assert list(vol.changed_since("b")) == [(1 << 20, GRAN)]


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_survives_a_crash(tmp_path, mode):
    path = str(tmp_path / "s")
    run_child(
        """
        vol.checkpoint("a")
        vol.mark(0, 4096)
        vol.checkpoint("b")
        """,
        path,
        mode,
    )
    with tiered.open(path) as store:
        vol = store.volume("v")
        assert [c.name for c in vol.checkpoints()] == ["a", "b"]
        got = vol.changed_since("a")
        if mode == "multi-bit":
            # a multi-bit checkpoint is O(1): it does not persist the array
            assert vol.unclean_shutdown and list(got) == [(0, SIZE)]
        else:
            # sealing a one-bit writeset persists everything marked so far
            assert not vol.unclean_shutdown and list(got) == [(0, GRAN)]


KILL_WRITER = """
import json, os, sys
import numpy as np
rng = np.random.default_rng(int(sys.argv[1]))
log = open(sys.argv[2], "a", buffering=1)
i = 0
while True:
    i += 1
    if rng.random() < 0.2:
        vol.checkpoint(f"c{i}")
        log.write(json.dumps(["checkpoint", f"c{i}"]) + "\\n")
    elif rng.random() < 0.05 and len(vol.checkpoints()) > 3:
        name = vol.checkpoints()[int(rng.integers(0, 3))].name
        vol.remove_checkpoint(name)
        log.write(json.dumps(["remove", name]) + "\\n")
    elif rng.random() < 0.05:
        vol.flush()
    else:
        offs = (rng.integers(0, {size} // 4096, 50) * 4096).tolist()
        vol.mark_many(offs, [4096] * len(offs))
        # logged once marked: the model may lack the write in flight, never
        # hold one the volume was not told about
        log.write(json.dumps(["mark", offs]) + "\\n")
"""


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_never_loses_a_change(tmp_path, mode):
    path = str(tmp_path / "s")
    log_path = str(tmp_path / "log")
    setup = f"import tiered\nstore = tiered.open({path!r})\n"
    setup += f"vol = store.create_volume('v', size={SIZE}, granularity={GRAN}, strategy={mode!r})\n"
    setup += KILL_WRITER.replace("{size}", str(SIZE))
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", setup, "7", log_path], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        if os.path.exists(log_path) and sum(1 for _ in open(log_path)) > 400:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    model = ReferenceVolume(SIZE, GRAN)
    with open(log_path) as log:
        for line in log:
            try:
                op, arg = json.loads(line)
            except json.JSONDecodeError:
                break  # the last line may be torn
            if op == "checkpoint":
                model.checkpoint(arg)
            elif op == "remove":
                model.remove(arg)
            else:
                for off in arg:
                    model.mark(off, 4096)
    with tiered.open(path) as store:
        vol = store.volume("v")
        live = [c.name for c in vol.checkpoints()]
        # a removal in flight may have committed without being logged
        assert len(set(model.names()) - set(live)) <= 1
        checked = 0
        for name in live:
            if name not in model.checkpoints:
                continue  # a checkpoint in flight that committed
            got = list(vol.changed_since(name))
            assert covers(got, model.changed_since(name)), f"checkpoint {name}: a change was lost"
            checked += 1
        assert checked > 3
