"""Exporting checkpoints as qcow2 persistent bitmaps, checked with QEMU's tools.

What QEMU reads back is the judge: `qemu-nbd -B NAME` serves each exported
bitmap and `nbdinfo --map=qemu:dirty-bitmap:NAME` must print exactly the map
of `changed_since(NAME)`; `qemu-img info` must list the bitmaps as persistent,
enabled and not in use at the volume's granularity; `qemu-img check` must be
clean; the guest data must be untouched.  Skipped without the tools.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tiered
from tiered.cli.inspect import format_map_line, map_ranges
from tiered.qcow2 import exporter, import_bitmaps
from tiered.qcow2.exporter import export_bitmaps

TOOLS = ("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason="needs qemu-img, qemu-io, qemu-nbd and nbdinfo"
)

K = 1024
G = 64 * K


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done


def qemu_img(*args: str) -> str:
    return run("qemu-img", *args).stdout


def qemu_io(image: str, *commands: str, fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    out = run(*argv, image).stdout
    assert "failed" not in out, out


def info(image: str) -> dict:
    return json.loads(qemu_img("info", "--output=json", image))


def bitmaps(image: str) -> dict[str, dict]:
    data = info(image)["format-specific"]["data"]
    return {b["name"]: b for b in data.get("bitmaps", [])}


def served_map(image: str, name: str) -> str:
    """nbdinfo's map of bitmap ``name`` as qemu-nbd serves it (nbdinfo starts
    qemu-nbd on a socket of its own and stops it afterwards)."""
    return run("nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--",
               "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, image, "]").stdout


def expected_map(vol: tiered.Volume, name: str, size: int | None = None) -> str:
    return "".join(format_map_line(*r) for r in map_ranges(vol.changed_since(name), 0, size or vol.size))


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_qcow2(path: Path, size: int, *options: str) -> str:
    qemu_img("create", "-q", "-f", "qcow2", *options, str(path), str(size))
    return str(path)


GUEST = ["write -P 0x5a 0 4096", "write -P 0xa5 200000 70000", "write -P 0x11 1048576 65536"]


def guest_image(tmp_path: Path, size: int) -> tuple[str, str]:
    """A qcow2 with guest data, and an untouched copy to compare it with."""
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    qemu_io(image, *GUEST, f"write -P 0x77 {size - 1024} 1024")
    copy = tmp_path / "disk-before.qcow2"
    shutil.copyfile(image, copy)
    return image, str(copy)


def assert_same_guest_data(image: str, before: str) -> None:
    out = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", before, image)
    assert "identical" in out


def assert_check_clean(image: str) -> None:
    out = qemu_img("check", image)
    assert "No errors were found" in out


def random_volume(store: tiered.Store, strategy: str, granularity: int, size: int, seed: int) -> tiered.Volume:
    """Checkpoints cp0..cp3 with random writes between them (always one in
    the partial last chunk before cp2)."""
    rng = np.random.default_rng(seed)
    vol = store.create_volume("vda", size=size, granularity=granularity, strategy=strategy)
    for i in range(4):
        vol.checkpoint(f"cp{i}")
        n = int(rng.integers(5, 40))
        offsets = rng.integers(0, size, n)
        lengths = np.minimum(rng.integers(1, 6 * granularity, n), size - offsets)
        vol.mark_many(offsets, lengths)
        if i == 1:
            vol.mark(size - 10, 10)
    vol.checkpoint("empty")  # nothing written since: an all-clean bitmap
    return vol


@pytest.mark.parametrize("granularity", [G, 4 * K])
@pytest.mark.parametrize("strategy", ["one-bit", "multi-bit", "hybrid"])
def test_export_matches_changed_since(tmp_path: Path, strategy: str, granularity: int) -> None:
    size = 300 * granularity + 3 * 512  # not a multiple of the granularity
    image, before = guest_image(tmp_path, size)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = random_volume(store, strategy, granularity, size, seed=granularity + len(strategy))
        report = export_bitmaps(vol, image)
        names = [c.name for c in vol.checkpoints()]
        assert report["exported"] == names == ["cp0", "cp1", "cp2", "cp3", "empty"]
        assert report["image"] == image and report["granularity"] == granularity
        assert report["virtual_size"] == size and report["replaced"] == []
        json.dumps(report)
        found = bitmaps(image)
        assert sorted(found) == sorted(names)
        for name in names:
            assert found[name]["flags"] == ["auto"]  # enabled, persistent, not in use
            assert found[name]["granularity"] == granularity
            text = served_map(image, name)
            assert text == expected_map(vol, name)
        assert "dirty" not in served_map(image, "empty")
        assert served_map(image, "cp1").rstrip().endswith("dirty")  # the partial last chunk
        # and back: importing the exported image gives the same answers, exact
        with tiered.open(str(tmp_path / "back"), sync=False) as back:
            report = import_bitmaps(back, "vda", image)
            again = back.volume("vda")
            assert (again.size, again.granularity) == (size, granularity)
            assert [c.name for c in again.checkpoints()] == names
            for name in names:
                got = again.changed_since(name)
                assert list(got) == list(vol.changed_since(name)) and got.exact, name
    assert_same_guest_data(image, before)
    assert_check_clean(image)


def test_chosen_checkpoints_and_a_size_qcow2_rounds_up(tmp_path: Path) -> None:
    size = 20 * G + 1000  # qcow2 sizes are whole sectors: the image has 20 * G + 1024
    image, before = guest_image(tmp_path, size)
    assert info(image)["virtual-size"] == 20 * G + 1024
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G)
        vol.checkpoint("a")
        vol.mark(3 * G + 5, 10)
        vol.checkpoint("b")
        vol.mark(size - 1, 1)
        odd = "-b ü,x=1"  # an option to getopt, a QEMU option list's separators
        vol.checkpoint(odd)
        vol.mark(7 * G, 1)
        report = export_bitmaps(vol, image, checkpoints=["b", odd])
        assert report["exported"] == ["b", odd]
        assert sorted(bitmaps(image)) == [odd, "b"]
        # The last chunk reaches the image's end, 24 bytes past the volume's.
        assert served_map(image, "b") == expected_map(vol, "b").replace(
            format_map_line(20 * G, 1000, 1), format_map_line(20 * G, 1024, 1)
        )
        assert served_map(image, odd) == expected_map(vol, odd, size=20 * G + 1024)
    assert_same_guest_data(image, before)
    assert_check_clean(image)


@pytest.mark.parametrize(
    "granularity, size, marks",
    [
        (G, 3 << 30, [(100, (3 << 30) - 200)]),  # one extent of 3 GiB: qemu-io takes it in pieces
        (2 << 30, (5 << 30) + 512, [((2 << 30) + 5, 1), (5 << 30, 1)]),  # QEMU's largest granularity
    ],
)
def test_long_extents_and_the_largest_granularity(tmp_path: Path, granularity: int, size: int, marks) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=granularity)
        vol.checkpoint("a")
        for offset, length in marks:
            vol.mark(offset, length)
        assert max(n for _, n in vol.changed_since("a")) > exporter._PIECE or granularity > exporter._PIECE
        export_bitmaps(vol, image)
        assert bitmaps(image)["a"]["granularity"] == granularity
        assert served_map(image, "a") == expected_map(vol, "a")
    assert_check_clean(image)


def test_existing_name_is_refused_unless_replace(tmp_path: Path) -> None:
    size = 40 * G
    image, before = guest_image(tmp_path, size)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid")
        vol.checkpoint("a")
        vol.mark(0, G)
        vol.checkpoint("b")
        vol.mark(5 * G, 2 * G)
        # A bitmap QEMU made itself, at another granularity, with bits set.
        qemu_img("bitmap", "--add", "-g", "4096", image, "b")
        qemu_io(image, f"write -z {30 * G} 4096")
        kept = digest(image)
        with pytest.raises(tiered.AlreadyExistsError, match="'b'.*replace"):
            export_bitmaps(vol, image)
        assert digest(image) == kept
        assert "a" not in bitmaps(image)

        report = export_bitmaps(vol, image, replace=True)
        assert report["exported"] == ["a", "b"] and report["replaced"] == ["b"]
        found = bitmaps(image)
        assert found["b"]["granularity"] == G and found["b"]["flags"] == ["auto"]
        for name in "ab":
            assert served_map(image, name) == expected_map(vol, name)

        vol.mark(20 * G, 1)
        export_bitmaps(vol, image, ["a", "b"], replace=True)
        for name in "ab":
            assert served_map(image, name) == expected_map(vol, name)
    assert_same_guest_data(image, before)
    assert_check_clean(image)


def test_replace_repairs_a_bitmap_a_killed_writer_left_in_use(tmp_path: Path) -> None:
    size = 40 * G
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    qemu_img("bitmap", "--add", image, "a")
    # qemu-io opens the image for writing (flagging its bitmaps in use) and
    # waits for commands on stdin; SIGKILL leaves the flag behind.
    writer = subprocess.Popen(["qemu-io", "-f", "qcow2", image], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            shared = run("qemu-img", "info", "-U", "--output=json", image, check=False).stdout
            if '"in-use"' in shared:
                break
            try:
                writer.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
    finally:
        writer.kill()
        writer.wait(10)
    assert bitmaps(image)["a"]["flags"] == ["in-use", "auto"]
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G)
        vol.checkpoint("a")
        vol.mark(9 * G, 1)
        with pytest.raises(tiered.AlreadyExistsError):
            export_bitmaps(vol, image)
        assert export_bitmaps(vol, image, replace=True)["replaced"] == ["a"]
        assert bitmaps(image)["a"]["flags"] == ["auto"]
        assert served_map(image, "a") == expected_map(vol, "a")
    assert_check_clean(image)


def test_a_failure_midway_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 40 * G
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G)
        for name in ("a", "b", "c"):
            vol.checkpoint(name)
            vol.mark(len(name) * G, G)
        # "b" exists (disabled, with bits set); "c" is the step that fails.
        qemu_img("bitmap", "--add", "-g", "8192", image, "b")
        qemu_io(image, f"write -z {7 * G} 100")
        qemu_img("bitmap", "--disable", image, "b")
        old_map = served_map(image, "b")
        old_b = bitmaps(image)["b"]

        real = exporter._Tools.img

        def failing(self, argv, image=None):
            if argv[0] == "bitmap" and argv[-1] == "c" and "--merge" in argv and "-b" in argv:
                raise tiered.TieredError("qemu-img exited with 1: injected")
            return real(self, argv, image)

        monkeypatch.setattr(exporter._Tools, "img", failing)
        with pytest.raises(tiered.TieredError, match="injected"):
            export_bitmaps(vol, image, replace=True)
        monkeypatch.undo()
        # "a" is gone again, "b" has its old granularity, state and bits.
        assert bitmaps(image) == {"b": old_b}
        assert old_b["flags"] == [] and old_b["granularity"] == 8192
        assert served_map(image, "b") == old_map
        assert_check_clean(image)


def test_bad_requests_leave_the_image_alone(tmp_path: Path) -> None:
    size = 40 * G
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    qemu_io(image, "write -P 1 0 4096")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\1" * size)
    wrong_size = make_qcow2(tmp_path / "small.qcow2", size - G)
    old = make_qcow2(tmp_path / "v2.qcow2", size, "-o", "compat=0.10")
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G)
        vol.checkpoint("a")
        vol.mark(0, G)
        files = [image, str(raw), wrong_size, old]
        before = [digest(p) for p in files]
        with pytest.raises(tiered.CheckpointNotFoundError, match="'nope'"):
            export_bitmaps(vol, image, ["a", "nope"])
        vol.checkpoint("a\0b")
        with pytest.raises(tiered.InvalidArgumentError, match="NUL"):
            export_bitmaps(vol, image, ["a\0b"])
        with pytest.raises(tiered.InvalidArgumentError, match="NUL"):
            export_bitmaps(vol, image)
        vol.remove_checkpoint("a\0b")
        with pytest.raises(tiered.InvalidArgumentError, match="twice"):
            export_bitmaps(vol, image, ["a", "a"])
        with pytest.raises(tiered.InvalidArgumentError, match="list of names"):
            export_bitmaps(vol, image, "a")  # type: ignore[arg-type]
        with pytest.raises(tiered.InvalidArgumentError, match="raw image.*qcow2"):
            export_bitmaps(vol, str(raw))
        with pytest.raises(tiered.InvalidArgumentError, match=f"virtual size {size - G}.*{size}"):
            export_bitmaps(vol, wrong_size)
        with pytest.raises(tiered.InvalidArgumentError, match="compat=0.10"):
            export_bitmaps(vol, old)
        with pytest.raises(tiered.InvalidArgumentError, match="no image"):
            export_bitmaps(vol, str(tmp_path / "missing.qcow2"))
        assert [digest(p) for p in files] == before
        assert not (tmp_path / "missing.qcow2").exists()


def test_a_bitmap_qemu_cannot_store_is_refused(tmp_path: Path) -> None:
    size = 4 << 40  # at 512 bytes a chunk, the bitmap alone would be 1 GiB
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=512, strategy="one-bit")
        vol.checkpoint("a")
        kept = digest(image)
        with pytest.raises(tiered.InvalidArgumentError, match="larger granularity"):
            export_bitmaps(vol, image)
        assert digest(image) == kept


class Holder:
    """A writable qemu-nbd holding the image's lock, as a running VM would."""

    def __init__(self, image: str, sock: Path) -> None:
        self.process = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", str(sock), image],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if sock.exists():
                break
            try:
                self.process.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        assert sock.exists()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def test_an_image_in_use_is_refused(tmp_path: Path) -> None:
    size = 40 * G
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    holder = Holder(image, tmp_path / "sock")
    try:
        with tiered.open(str(tmp_path / "store"), sync=False) as store:
            vol = store.create_volume("vda", size=size, granularity=G)
            vol.checkpoint("a")
            with pytest.raises(tiered.TieredError, match=r"in use \(locked by a running QEMU\?\).*qemu-img"):
                export_bitmaps(vol, image)
    finally:
        holder.stop()
    assert bitmaps(image) == {}


def test_an_image_taken_after_the_checks_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 40 * G
    image = make_qcow2(tmp_path / "disk.qcow2", size)
    holders = []
    real = exporter._save_replaced

    def then_taken(*args):
        saved = real(*args)
        holders.append(Holder(image, tmp_path / "sock"))  # just before the first change
        return saved

    monkeypatch.setattr(exporter, "_save_replaced", then_taken)
    try:
        with tiered.open(str(tmp_path / "store"), sync=False) as store:
            vol = store.create_volume("vda", size=size, granularity=G)
            vol.checkpoint("a")
            with pytest.raises(tiered.TieredError, match=r"in use") as caught:
                export_bitmaps(vol, image)
            assert "rolling back" not in str(caught.value)
    finally:
        for holder in holders:
            holder.stop()
    assert len(holders) == 1
    assert bitmaps(image) == {}
    assert_check_clean(image)


def test_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_qcow2(tmp_path / "disk.qcow2", 40 * G)
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=40 * G, granularity=G)
        vol.checkpoint("a")
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(tiered.TieredError, match="qemu-img is not installed"):
            export_bitmaps(vol, image)


def test_raw_disk_through_a_qcow2_wrapper(tmp_path: Path) -> None:
    """The procedure of docs/qcow2.md: a qcow2 created against a placeholder
    data file, then pointed at the raw disk with `qemu-img amend`."""
    size = 48 * G
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
    qemu_io(str(raw), "write -P 0x3c 0 8192", f"write -P 0xc3 {17 * G} {3 * G}", fmt="raw")
    raw_before = digest(str(raw))

    wrapper = str(tmp_path / "disk.qcow2")
    placeholder = tmp_path / "placeholder.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={placeholder},data_file_raw=on", wrapper, str(size))
    qemu_img("amend", "-f", "qcow2", "-o", f"data_file={raw},data_file_raw=on", wrapper)
    placeholder.unlink()
    assert digest(str(raw)) == raw_before  # the raw disk was not zeroed
    data = info(wrapper)["format-specific"]["data"]
    assert data["data-file"] == str(raw) and data["data-file-raw"] is True

    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G)
        vol.checkpoint("full")
        vol.mark(17 * G, 3 * G)
        vol.checkpoint("incr")
        vol.mark(40 * G + 3, 5)
        export_bitmaps(vol, wrapper)
        for name in ("full", "incr"):
            assert served_map(wrapper, name) == expected_map(vol, name)
    assert digest(str(raw)) == raw_before
    assert_check_clean(wrapper)
    # qemu-nbd serves the raw disk's bytes through the wrapper.
    out = run("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x3c 0 8192",
              "-c", f"read -P 0xc3 {17 * G} {3 * G}", "-c", f"read -P 0 {20 * G} {G}", wrapper).stdout
    assert "failed" not in out
    if shutil.which("nbdcopy"):
        copy = tmp_path / "served.raw"
        run("nbdcopy", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", "incr", wrapper, "]", str(copy))
        assert digest(str(copy)) == raw_before
