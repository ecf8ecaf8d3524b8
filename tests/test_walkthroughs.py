"""The walkthroughs that need real tools (QEMU's, libnbd's) and a server
run here as the shell scripts a reader pastes: the README's "Serve a disk
over NBD, back it up incrementally" and docs/qcow2.md's takeover of a QEMU
disk's backup chain.  Their blocks are marked "not run" for
tests/test_docs.py, which runs no servers."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"
)


def sh_block(document: str, after: str) -> str:
    """The first ```sh block after the line containing ``after``."""
    text = (ROOT / document).read_text()
    start = text.index(after)
    m = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, start)
    assert m, f"no sh block after {after!r} in {document}"
    return m.group(1)


def environment() -> dict[str, str]:
    """The reader's shell: the `tiered` of this interpreter first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_script(script: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_readme_serve_and_back_up_incrementally(tmp_path: Path) -> None:
    # The README's paths under /tmp, moved into this test's directory.
    first = sh_block("README.md", "### Serve a disk over NBD").replace("/tmp/", f"{tmp_path}/")
    second = sh_block("README.md", "and in a second one:").replace("/tmp/", f"{tmp_path}/")
    server = subprocess.Popen(["bash", "-e", "-c", f"exec {first.strip()}"], cwd=tmp_path, env=environment(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == f"nbd+unix:///vda?socket={tmp_path}/vda.sock", server.stderr.read()
        out = run_script(second, tmp_path)
        assert "1048576       65536    1  dirty" in out and "Images are identical." in out
        server.send_signal(signal.SIGINT)  # "Stop the server with Ctrl-C"
        assert server.wait(60) == 0, server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert not os.path.exists(tmp_path / "vda.sock")


def test_qcow2_takeover_walkthrough(tmp_path: Path) -> None:
    script = sh_block("docs/qcow2.md", "## Walkthrough: a QEMU disk's backup chain")
    out = run_script(script, tmp_path)
    assert "  full  exact" in out
    # what QEMU recorded, as `tiered changed` prints it, then the copy equals the disk
    assert "   1048576       65536    1  dirty" in out and " 734003200       65536    1  dirty" in out
    assert out.rstrip().endswith("Images are identical."), out
