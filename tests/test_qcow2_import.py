"""Importing QEMU's persistent dirty bitmaps (tiered.qcow2, docs/qcow2.md).

The images are made by QEMU itself (qemu-img bitmap, writes with qemu-io),
and the expected answer of every checkpoint is what QEMU's own NBD server
reports for the bitmap (qemu-nbd -B NAME, read with nbdinfo --map).  Damaged
images are edited copies of real ones.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import time

import pytest

import tiered
from tiered.cli import main
from tiered.errors import Qcow2FormatError, Qcow2InconsistentError, TieredError
from tiered.qcow2 import import_bitmaps, plan_import, read_bitmaps

TOOLS = ("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo")
needs_qemu = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason="needs " + ", ".join(TOOLS)
)

MiB = 1 << 20


# -- QEMU helpers ----------------------------------------------------------


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(image: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in commands:
        argv += ["-c", c]
    subprocess.run([*argv, image], check=True, capture_output=True)


def create(path, size: int, cluster_size: int = 64 << 10) -> str:
    path = str(path)
    qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", path, str(size))
    return path


def add(image: str, name: str, granularity: int | None = None, disabled: bool = False) -> None:
    args = ["bitmap", "--add"]
    if granularity is not None:
        args += ["-g", str(granularity)]
    if disabled:
        args.append("--disable")
    qemu_img(*args, image, name)


def nbd_map(image: str, name: str) -> list[tuple[int, int]]:
    """The dirty ranges of bitmap ``name`` as QEMU's NBD server reports them."""
    out = subprocess.run(
        ["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{name}", "--",
         "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, image, "]"],
        check=True, capture_output=True, text=True,
    ).stdout
    return coalesce((e["offset"], e["length"]) for e in json.loads(out) if e["type"] & 1)


def coalesce(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, n in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            end = max(out[-1][0] + out[-1][1], off + n)
            out[-1] = (out[-1][0], end - out[-1][0])
        elif n:
            out.append((off, n))
    return out


def writes(image: str, rng: random.Random, size: int, count: int, max_len: int = 256 << 10) -> None:
    cmds = []
    for _ in range(count):
        length = rng.randrange(1, max_len) // 512 * 512 or 512
        offset = rng.randrange(0, size - length) // 512 * 512
        cmds.append(f"write -P {rng.randrange(1, 255)} {offset} {length}")
    qemu_io(image, *cmds)


# -- byte-level edits of real images ----------------------------------------------


def layout(image: str) -> dict:
    """Where the header extension and the directory entries are, read with
    struct straight from the specification (independently of the reader)."""
    with open(image, "rb") as f:
        data = f.read()
    cluster_bits = struct.unpack_from(">I", data, 20)[0]
    header_length = struct.unpack_from(">I", data, 100)[0]
    pos = header_length
    while True:
        ext_type, length = struct.unpack_from(">II", data, pos)
        if ext_type == 0x23852875:
            ext = pos
            break
        assert ext_type != 0
        pos += 8 + (length + 7) // 8 * 8
    nb, _, dir_size, dir_offset = struct.unpack_from(">IIQQ", data, ext + 8)
    entries = []
    pos = dir_offset
    for _ in range(nb):
        table_offset, table_size, flags, _, _, name_size, extra = struct.unpack_from(">QIIBBHI", data, pos)
        name = data[pos + 24 + extra : pos + 24 + extra + name_size].decode()
        entries.append({"at": pos, "name": name, "table_offset": table_offset, "table_size": table_size})
        pos += (24 + extra + name_size + 7) // 8 * 8
    return {"cluster_size": 1 << cluster_bits, "ext": ext, "dir_offset": dir_offset, "dir_size": dir_size,
            "entries": entries, "size": len(data)}


def edited(src: str, dst, edits: dict[int, bytes] | None = None, truncate: int | None = None) -> str:
    dst = str(dst)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for offset, value in (edits or {}).items():
            f.seek(offset)
            f.write(value)
        if truncate is not None:
            f.truncate(truncate)
    return dst


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_image(tmp_path_factory) -> str:
    """A libvirt-like chain: every bitmap stays enabled, so each newer one
    lies inside every older one (docs: kbase/internals/incremental-backup)."""
    image = create(tmp_path_factory.mktemp("chain") / "vda.qcow2", 64 * MiB)
    rng = random.Random(7)
    for name in ("chk-a", "chk-b", "chk-c"):
        add(image, name)
        writes(image, rng, 64 * MiB, 12)
    return image


def volume_after(tmp_path, image: str, **kw):
    store = tiered.open(str(tmp_path / "store"))
    report = import_bitmaps(store, "vda", image, **kw)
    return store, store.volume("vda"), report


# -- imports checked against QEMU -----------------------------------------------------


@needs_qemu
def test_chain_imports_exactly(tmp_path, chain_image):
    store, vol, report = volume_after(tmp_path, chain_image)
    with store:
        assert report.checkpoints == ["chk-a", "chk-b", "chk-c"]
        assert report.chain and report.order == "directory" and report.exact == [True] * 3
        assert report.warnings == [] and report.granularity == 64 << 10
        assert vol.size == 64 * MiB and vol.granularity == 64 << 10
        for name in report.checkpoints:
            answer = vol.changed_since(name)
            assert list(answer) == nbd_map(chain_image, name) and answer.exact
        # The volume tracks on from there like any other.
        vol.mark(0, 1)
        assert list(vol.changed_since("chk-c"))[0] == (0, 64 << 10)


@needs_qemu
def test_selection_order_changes_nothing(tmp_path, chain_image):
    # Listing the bitmaps newest first changes nothing: the image decides.
    store, vol, report = volume_after(tmp_path, chain_image, bitmaps=["chk-c", "chk-a"])
    with store:
        assert report.checkpoints == ["chk-a", "chk-c"] and report.exact == [True, True]
        assert report.skipped == ["chk-b"]
        for name in report.checkpoints:
            assert list(vol.changed_since(name)) == nbd_map(chain_image, name)


@needs_qemu
def test_order_by_inclusion_when_every_bitmap_is_enabled(tmp_path):
    # "old-copy" is made last (a merge of "old"), so the directory lists it
    # after "new"; all stay enabled, so inclusion gives the creation order.
    image = create(tmp_path / "e.qcow2", 16 * MiB)
    rng = random.Random(5)
    add(image, "old")
    writes(image, rng, 16 * MiB, 4)
    add(image, "new")
    writes(image, rng, 16 * MiB, 4)
    add(image, "old-copy")
    qemu_img("bitmap", "--merge", "old", image, "old-copy")
    qemu_img("bitmap", "--remove", image, "old")
    writes(image, rng, 16 * MiB, 3)
    assert [bm.name for bm in read_bitmaps(image).bitmaps] == ["new", "old-copy"]
    store, vol, report = volume_after(tmp_path, image)
    with store:
        assert report.order == "inclusion" and report.checkpoints == ["old-copy", "new"] and report.chain
        assert any("by inclusion" in w for w in report.warnings)
        for name in report.checkpoints:
            answer = vol.changed_since(name)
            assert list(answer) == nbd_map(image, name) and answer.exact


@needs_qemu
def test_a_period_holding_an_older_period_by_chance_keeps_the_directory_order(tmp_path):
    # p1 records one period; p2, the next, rewrites p1's chunk and more, so
    # p2 holds p1: inferring the order from inclusion would put p2 first, and
    # changed_since(p1) would miss the write at 50M made after p1's period.
    image = create(tmp_path / "r.qcow2", 100 * MiB)
    add(image, "p1")
    qemu_io(image, "write 1M 64K")
    qemu_img("bitmap", "--disable", image, "p1")
    add(image, "p2")
    qemu_io(image, "write 1M 64K", "write 50M 64K")
    store, vol, report = volume_after(tmp_path, image)
    with store:
        assert report.order == "directory" and report.checkpoints == ["p1", "p2"]
        assert list(vol.changed_since("p1")) == [(1 * MiB, 64 << 10), (50 * MiB, 64 << 10)]
        assert list(vol.changed_since("p2")) == nbd_map(image, "p2")


@needs_qemu
def test_given_order_against_the_chain_is_flagged(tmp_path, chain_image):
    store, vol, report = volume_after(tmp_path, chain_image, order=["chk-c", "chk-b", "chk-a"])
    with store:
        assert report.order == "given" and not report.chain
        # Newest first: each answer is the union of all three, a superset of
        # the first two; the last one is chk-a itself.
        assert report.exact == [False, False, True]
        union = nbd_map(chain_image, "chk-a")
        for name in report.checkpoints:
            answer = vol.changed_since(name)
            assert list(answer) == union and answer.exact == (name == "chk-a")
        assert any("chk-c" in w and "superset" in w for w in report.warnings)


@needs_qemu
def test_disabled_merged_and_cleared_bitmaps(tmp_path):
    image = create(tmp_path / "d.qcow2", 32 * MiB)
    rng = random.Random(11)
    add(image, "full")
    writes(image, rng, 32 * MiB, 5)
    add(image, "period")  # records one period, then stops
    writes(image, rng, 32 * MiB, 5)
    qemu_img("bitmap", "--disable", image, "period")
    writes(image, rng, 32 * MiB, 5)
    add(image, "copy", disabled=True)
    qemu_img("bitmap", "--merge", "period", image, "copy")
    add(image, "empty")
    writes(image, rng, 32 * MiB, 3)
    qemu_img("bitmap", "--clear", image, "empty")
    info = {bm.name: bm for bm in read_bitmaps(image).bitmaps}
    assert info["full"].auto and not info["period"].auto and not info["copy"].auto
    store, vol, report = volume_after(tmp_path, image)
    with store:
        # full ⊇ period = copy ⊇ empty: a chain (equal bitmaps are fine).
        assert report.chain and report.checkpoints[0] == "full" and report.checkpoints[-1] == "empty"
        assert set(report.checkpoints[1:3]) == {"period", "copy"}
        for name in report.checkpoints:
            answer = vol.changed_since(name)
            assert list(answer) == nbd_map(image, name) and answer.exact
        assert list(vol.changed_since("empty")) == []


@needs_qemu
def test_disjoint_periods_are_supersets_in_directory_order(tmp_path):
    # Each bitmap records one period (disabled when the next one starts):
    # no order nests them.
    image = create(tmp_path / "p.qcow2", 16 * MiB)
    rng = random.Random(3)
    for name in ("p1", "p2", "p3"):
        add(image, name)
        writes(image, rng, 16 * MiB, 4)
        qemu_img("bitmap", "--disable", image, name)
    maps = {n: nbd_map(image, n) for n in ("p1", "p2", "p3")}
    store, vol, report = volume_after(tmp_path, image)
    with store:
        assert report.order == "directory" and not report.chain
        assert report.checkpoints == ["p1", "p2", "p3"] and report.exact == [False, False, True]
        assert "do not form a chain" in report.warnings[0]
        for i, name in enumerate(report.checkpoints):
            answer = vol.changed_since(name)
            later = coalesce(r for n in report.checkpoints[i:] for r in maps[n])
            assert list(answer) == later and answer.exact == (name == "p3")
            assert set(maps[name]) <= set(answer) or coalesce(list(answer) + maps[name]) == list(answer)


GRANULARITIES = [512, 4096, 16 << 10, 64 << 10, 256 << 10, 1 << 20]


@needs_qemu
@pytest.mark.parametrize("seed", range(6))
def test_randomised_against_qemu(tmp_path, seed):
    rng = random.Random(1000 + seed)
    size = rng.randrange(4 * MiB, 48 * MiB) // 512 * 512 + rng.choice([0, 512, 4096 + 512])
    cluster = rng.choice([4096, 64 << 10, 256 << 10])
    image = create(tmp_path / "r.qcow2", size, cluster)
    names = [f"b{i}" for i in range(rng.randrange(2, 5))]
    for name in names:
        add(image, name, rng.choice(GRANULARITIES))
        writes(image, rng, size, rng.randrange(1, 25), max_len=rng.choice([4096, 64 << 10, 1 << 20]))
    maps = {n: nbd_map(image, n) for n in names}
    grans = {bm.name: bm.granularity for bm in read_bitmaps(image).bitmaps}
    store, vol, report = volume_after(tmp_path, image)
    with store:
        assert report.granularity == max(min(grans.values()), 512) and vol.size == size
        for i, name in enumerate(report.checkpoints):
            answer = vol.changed_since(name)
            # Always: the union of this bitmap and every newer one, which is
            # the bitmap itself where the answer says exact.
            assert list(answer) == coalesce(r for n in report.checkpoints[i:] for r in maps[n])
            if answer.exact:
                assert list(answer) == maps[name]
            assert answer.exact == report.exact[i]
        # Every bitmap stayed enabled: nested as byte sets, so a coarser
        # bitmap is the only reason for a superset.
        coarse = [n for n in names if grans[n] > report.granularity]
        assert report.chain or coarse


@needs_qemu
@pytest.mark.parametrize("volume_granularity", [512, 4096, 1 << 20])
def test_volume_granularity_given(tmp_path, chain_image, volume_granularity):
    store, vol, report = volume_after(tmp_path, chain_image, granularity=volume_granularity)
    g = volume_granularity
    with store:
        for name, exact in zip(report.checkpoints, report.exact):
            answer = vol.changed_since(name)
            rounded = coalesce((o // g * g, -(-(o + n) // g) * g - o // g * g) for o, n in nbd_map(chain_image, name))
            assert list(answer) == rounded
            # Finer volume: each 64K bit covers 16 chunks (exact=False);
            # coarser volume: a chunk is marked when any of its bits is.
            assert answer.exact == exact == (g > 64 << 10)


@needs_qemu
def test_partial_last_chunk(tmp_path):
    image = create(tmp_path / "t.qcow2", 10 * MiB + 512)
    add(image, "b", 64 << 10)
    qemu_io(image, "write 10485760 512", "write 0 1")
    store, vol, report = volume_after(tmp_path, image)
    with store:
        assert list(vol.changed_since("b")) == nbd_map(image, "b") == [(0, 65536), (10 * MiB, 512)]


# -- inconsistent bitmaps ------------------------------------------------------------


@needs_qemu
def test_in_use_is_refused_then_accepted(tmp_path, chain_image):
    lay = layout(chain_image)
    entry = next(e for e in lay["entries"] if e["name"] == "chk-b")
    image = edited(chain_image, tmp_path / "inuse.qcow2", {entry["at"] + 12: struct.pack(">I", 3)})
    with tiered.open(str(tmp_path / "store")) as store:
        with pytest.raises(Qcow2InconsistentError, match=r"'chk-b' is in use") as err:
            import_bitmaps(store, "vda", image)
        assert "accept-inconsistent" in str(err.value) and store.volumes() == []
        # Leaving it out imports the rest exactly.
        report = import_bitmaps(store, "other", image, bitmaps=["chk-a", "chk-c"])
        assert report.exact == [True, True]
        clean = store.volume("other").generation_id
        report = import_bitmaps(store, "vda", image, accept_inconsistent=True)
        vol = store.volume("vda")
        # Unknown content reads as everything: it sorts oldest and answers
        # the whole volume, exact=False; the others stay exact.
        assert report.checkpoints == ["chk-b", "chk-a", "chk-c"] and report.exact == [False, True, True]
        answer = vol.changed_since("chk-b")
        assert list(answer) == [(0, vol.size)] and not answer.exact
        for name in ("chk-a", "chk-c"):
            answer = vol.changed_since(name)
            assert list(answer) == nbd_map(chain_image, name) and answer.exact
        # In a given order, it and every older checkpoint answer everything.
        report = import_bitmaps(store, "vdc", image, accept_inconsistent=True, order=["chk-a", "chk-b", "chk-c"])
        assert report.exact == [False, False, True]
        assert list(store.volume("vdc").changed_since("chk-a")) == [(0, vol.size)]
        assert vol.generation_id != clean and answer.generation_id == vol.generation_id
        assert vol.unclean_shutdown and not store.volume("other").unclean_shutdown
        assert any("unknown content" in w for w in report.warnings)


@needs_qemu
def test_in_use_left_by_a_killed_qemu(tmp_path):
    image = create(tmp_path / "k.qcow2", 8 * MiB)
    add(image, "live")
    # qemu-io marks the bitmap in use when it opens the image (and would
    # clear the flag when it closes it); kill -9 leaves the flag set.
    proc = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", "-c", "write 0 4096", "-c", "sleep 60000", image],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(400):
            if read_bitmaps(image).bitmaps[0].in_use:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert read_bitmaps(image).bitmaps[0].in_use
    with tiered.open(str(tmp_path / "store")) as store:
        with pytest.raises(Qcow2InconsistentError, match="'live' is in use"):
            import_bitmaps(store, "vda", image)
        report = import_bitmaps(store, "vda", image, accept_inconsistent=True)
        answer = store.volume("vda").changed_since("live")
        assert report.exact == [False] and list(answer) == [(0, 8 * MiB)] and not answer.exact


@needs_qemu
def test_cleared_autoclear_bit_makes_every_bitmap_inconsistent(tmp_path, chain_image):
    image = edited(chain_image, tmp_path / "ac.qcow2", {88: bytes(8)})
    parsed = read_bitmaps(image)
    assert not parsed.bitmaps_consistent and all(bm.inconsistent for bm in parsed.bitmaps)
    with pytest.raises(Qcow2InconsistentError, match="autoclear"):
        plan_import(image)


# -- directory flags, extra data, unknown types ---------------------------------------------


@needs_qemu
def test_unusable_bitmaps_are_skipped_or_refused(tmp_path, chain_image):
    lay = layout(chain_image)
    entry = next(e for e in lay["entries"] if e["name"] == "chk-b")
    image = edited(chain_image, tmp_path / "type.qcow2", {entry["at"] + 16: b"\x02"})
    plan = plan_import(image)
    assert plan.names == ["chk-a", "chk-c"] and plan.skipped == ["chk-b"]
    assert any("type 2 is reserved" in w for w in plan.warnings)
    with pytest.raises(TieredError, match="'chk-b'.*cannot be used"):
        plan_import(image, bitmaps=["chk-b"])
    with pytest.raises(TieredError, match="has no bitmap 'nope'"):
        plan_import(chain_image, bitmaps=["nope"])


# -- bad images --------------------------------------------------------------------


def _bad_cases(src: str, tmp_path) -> dict[str, tuple[str, str]]:
    lay = layout(src)
    cs, ext, e0 = lay["cluster_size"], lay["ext"], lay["entries"][0]
    size = lay["size"]
    far = (size + cs) // cs * cs
    u32, u64 = (lambda v: struct.pack(">I", v)), (lambda v: struct.pack(">Q", v))
    with open(src, "rb") as f:
        f.seek(e0["table_offset"])
        first_entry = f.read(8)
    assert struct.unpack(">Q", first_entry)[0] >> 9, "the first bitmap's first table entry has a data cluster"
    cases = {
        "empty": ({}, 0, "not a qcow2 image"),
        "not qcow2": ({0: b"\x7fELF"}, None, "not a qcow2 image"),
        "short header": ({}, 50, "truncated"),
        "no first cluster": ({}, 3000, "truncated"),
        "version 4": ({4: u32(4)}, None, "version 4"),
        "unknown incompatible": ({72: u64(1 << 40)}, None, "incompatible feature"),
        "corrupt": ({72: u64(2)}, None, "corrupt"),
        "huge clusters": ({20: u32(30)}, None, "cluster_bits 30"),
        "directory past end": ({ext + 24: u64(far)}, None, "past the end of the file"),
        "directory size past end": ({ext + 16: u64(1 << 40)}, None, "bitmap directory size"),
        "directory in header": ({ext + 24: u64(0)}, None, "overlaps the image header"),
        "nb_bitmaps absurd": ({ext + 8: u32(0xFFFFFFFF)}, None, "nb_bitmaps"),
        "nb_bitmaps zero": ({ext + 8: u32(0)}, None, "nb_bitmaps"),
        "nb_bitmaps too few": ({ext + 8: u32(1)}, None, "more entries than nb_bitmaps"),
        "table past end": ({e0["at"]: u64(far)}, None, "past the end of the file"),
        "table overlaps header": ({e0["at"]: u64(0)}, None, "overlaps the image header"),
        "table overlaps directory": ({e0["at"]: u64(lay["dir_offset"])}, None, "overlaps"),
        "table unaligned": ({e0["at"]: u64(e0["table_offset"] + 8)}, None, "not aligned"),
        "table size absurd": ({e0["at"] + 8: u32(0xFFFFFFFF)}, None, "over QEMU's limits"),
        "table size wrong": ({e0["at"] + 8: u32(2)}, None, "needs 1"),
        "virtual size absurd": ({24: u64((1 << 63) - 1)}, None, "needs"),
        "reserved flags": ({e0["at"] + 12: u32(1 << 9)}, None, "reserved flag bits"),
        "name too long": ({e0["at"] + 18: struct.pack(">H", 0xFFFF)}, None, "past the end of the directory"),
        "extra data absurd": ({e0["at"] + 20: u32(0xFFFFFFFF)}, None, "past the end of the directory"),
        "truncated table": ({}, e0["table_offset"] + 4, "past the end of the file"),
        "table entry reserved": ({e0["table_offset"]: u64(2)}, None, "reserved bits"),
        "data in header": ({e0["table_offset"]: u64(1 << 9)}, None, "not cluster-aligned"),
        "data on the directory": ({e0["table_offset"]: u64(lay["dir_offset"])}, None, "overlaps the bitmap directory"),
        "data past end": ({e0["table_offset"]: u64(far)}, None, "past the end of the file"),
        "data and all-ones": ({e0["table_offset"]: u64(far | 1)}, None, "all-ones"),
        "data shared by two bitmaps": ({lay["entries"][1]["table_offset"]: first_entry}, None, "also holds data of"),
    }
    out = {}
    for label, (edits, cut, message) in cases.items():
        out[label] = (edited(src, tmp_path / f"bad-{len(out)}.qcow2", edits, cut), message)
    return out


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> str:
    image = create(tmp_path_factory.mktemp("small") / "s.qcow2", 8 * MiB)
    rng = random.Random(5)
    for name, g in (("one", 4096), ("two", 64 << 10), ("three", 4096)):
        add(image, name, g)
        writes(image, rng, 8 * MiB, 6)
    return image


@needs_qemu
def test_bad_images_name_the_problem_and_change_nothing(tmp_path, small_image):
    cases = _bad_cases(small_image, tmp_path)
    store_path = tmp_path / "store"
    with tiered.open(str(store_path)) as store:
        for label, (image, message) in cases.items():
            with pytest.raises(Qcow2FormatError) as err:
                import_bitmaps(store, "vda", image)
            assert message in str(err.value), (label, str(err.value))
            assert store.volumes() == [], label
    # The command line reads the image before it opens the store: a bad
    # image does not even create one.
    image, _ = cases["directory past end"]
    assert main(["qcow2", "import", image, str(tmp_path / "never"), "vda"]) == 1
    assert not (tmp_path / "never").exists()


@needs_qemu
def test_fuzzed_metadata_fails_cleanly_or_imports(tmp_path, small_image):
    lay = layout(small_image)
    with open(small_image, "rb") as f:
        original = f.read()
    regions = [(0, 112), (lay["ext"], lay["ext"] + 32), (lay["dir_offset"], lay["dir_offset"] + lay["dir_size"])]
    regions += [(e["table_offset"], e["table_offset"] + 8 * e["table_size"]) for e in lay["entries"]]
    rng = random.Random(2024)
    path = str(tmp_path / "fuzz.qcow2")
    outcomes = {"imported": 0, "refused": 0}
    with tiered.open(str(tmp_path / "store")) as store:
        for case in range(300):
            data = bytearray(original)
            for _ in range(rng.randrange(1, 4)):
                lo, hi = rng.choice(regions)
                at = rng.randrange(lo, hi)
                if rng.random() < 0.5:
                    data[at] ^= 1 << rng.randrange(8)
                else:
                    data[at] = rng.randrange(256)
            if rng.random() < 0.1:
                data = data[: rng.randrange(len(data))]
            with open(path, "wb") as f:
                f.write(data)
            before = store.volumes()
            try:
                report = import_bitmaps(store, f"v{case}", path, accept_inconsistent=rng.random() < 0.5)
            except TieredError as exc:
                assert str(exc) and store.volumes() == before, case
                outcomes["refused"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"case {case}: {type(exc).__name__}: {exc}")
            outcomes["imported"] += 1
            vol = store.volume(f"v{case}")
            assert [c.name for c in vol.checkpoints()] == report.checkpoints
            for name, exact in zip(report.checkpoints, report.exact):
                assert vol.changed_since(name).exact == exact
            store.remove_volume(f"v{case}")
    assert outcomes["imported"] and outcomes["refused"]


# -- the command line -----------------------------------------------------------------


@needs_qemu
def test_cli_import(tmp_path, chain_image, capsys):
    store = str(tmp_path / "store")
    assert main(["qcow2", "import", chain_image, store, "vda"]) == 0
    out = capsys.readouterr().out
    assert "imported 3 bitmaps" in out and "chk-a  exact" in out
    assert main(["qcow2", "import", chain_image, store, "vdb", "--bitmaps", "chk-a,chk-b",
                 "--granularity", "1M", "--strategy", "multi-bit", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["checkpoints"] == ["chk-a", "chk-b"] and document["granularity"] == 1 << 20
    assert main(["changed", store, "vda", "chk-c", "--json"]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert [(e["offset"], e["length"]) for e in changed["extents"]] == nbd_map(chain_image, "chk-c")
    # Errors: a name taken, an unknown bitmap, an order that is not the set.
    assert main(["qcow2", "import", chain_image, store, "vda"]) == 1
    assert "already has a volume 'vda'" in capsys.readouterr().err
    assert main(["qcow2", "import", chain_image, store, "x", "--bitmaps", "zz"]) == 1
    assert "no bitmap 'zz'" in capsys.readouterr().err
    assert main(["qcow2", "import", chain_image, store, "x", "--bitmaps", "chk-a", "--order", "chk-b"]) == 2
    capsys.readouterr()


@needs_qemu
def test_cli_in_use_message(tmp_path, chain_image, capsys):
    lay = layout(chain_image)
    image = edited(chain_image, tmp_path / "i.qcow2", {lay["entries"][0]["at"] + 12: struct.pack(">I", 3)})
    store = str(tmp_path / "store")
    assert main(["qcow2", "import", image, store, "vda"]) == 1
    err = capsys.readouterr().err
    assert "'chk-a' is in use" in err and "--accept-inconsistent" in err
    assert not os.path.exists(store)
    assert main(["qcow2", "import", image, store, "vda", "--accept-inconsistent"]) == 0
    captured = capsys.readouterr()
    assert "unknown content" in captured.err and "chk-a  superset" in captured.out


def test_cli_bad_volume_name_leaves_no_store(tmp_path, chain_image, capsys):
    store = str(tmp_path / "store")
    assert main(["qcow2", "import", chain_image, store, ""]) == 1
    assert "name" in capsys.readouterr().err
    assert not os.path.exists(store)


def test_cli_export_is_registered():
    from tiered.cli import build_parser

    args = build_parser().parse_args(["qcow2", "export", "s", "v", "i.qcow2", "--checkpoints", "a,b", "--replace"])
    assert args.checkpoints == ["a", "b"] and args.replace and args.image == "i.qcow2"


# -- the volume's superset flag (no QEMU needed) ------------------------------------------


def _flagged(tmp_path, strategy="hybrid"):
    store = tiered.open(str(tmp_path / "s"), sync=False)
    vol = store.create_volume("v", size=1 << 20, granularity=4096, strategy=strategy)
    for name in ("a", "b", "c"):
        vol.checkpoint(name)
        vol.mark(0, 4096)
    vol._flag_imported(None, "b", "test")
    return store, vol


def _exact(vol) -> dict[str, bool]:
    return {c.name: vol.changed_since(c.name).exact for c in vol.checkpoints()}


def test_superset_generation_flags_older_answers(tmp_path):
    store, vol = _flagged(tmp_path)
    gid = vol.generation_id
    assert _exact(vol) == {"a": False, "b": False, "c": True}
    assert list(vol.changed_since("a")) == [(0, 4096)]  # the spans as stored
    assert not vol.changed_between("b", "c").exact
    assert vol.generation_id == gid and not vol.unclean_shutdown
    store.close()
    with tiered.open(str(tmp_path / "s")) as store:
        vol = store.volume("v")
        assert _exact(vol) == {"a": False, "b": False, "c": True} and not vol.unclean_shutdown
        vol.remove_checkpoint("a")
        assert _exact(vol) == {"b": False, "c": True}
        vol.remove_checkpoint("b")
        assert _exact(vol) == {"c": True} and "superset_generation" not in vol._record


def test_superset_generation_survives_convert_dump_and_load(tmp_path):
    store, vol = _flagged(tmp_path, "one-bit")
    with store:
        vol.convert("multi-bit")
        assert _exact(vol) == {"a": False, "b": False, "c": True}
        vol.dump(str(tmp_path / "d"))
        loaded = store.load(str(tmp_path / "d"), "w")
        assert _exact(loaded) == {"a": False, "b": False, "c": True}


def test_superset_generation_follows_renumbering(tmp_path):
    store, vol = _flagged(tmp_path, tiered.Strategy("multi-bit", width=8))
    with store:
        for i in range(260):  # past the 8-bit generations: renumbered
            vol.checkpoint(f"x{i}")
            vol.remove_checkpoint(f"x{i}")
        vol.checkpoint("d")
        assert vol.checkpoints()[-1].generation < 255
        assert _exact(vol) == {"a": False, "b": False, "c": True, "d": True}
        assert list(vol.changed_since("b")) == [(0, 4096)]


@needs_qemu
@pytest.mark.parametrize("strategy,durability", [("one-bit", "lazy"), ("multi-bit", "sync"), ("hybrid", "sync")])
def test_every_strategy_and_durability(tmp_path, chain_image, strategy, durability):
    store, vol, report = volume_after(tmp_path, chain_image, strategy=strategy, durability=durability,
                                      order=["chk-b", "chk-a", "chk-c"])
    with store:
        assert vol.strategy.mode == strategy and vol.durability == durability
        assert report.exact == [False, True, True]
        for name in report.checkpoints:
            answer = vol.changed_since(name)
            assert answer.exact == (name != "chk-b")
            assert list(answer) == nbd_map(chain_image, "chk-a" if name == "chk-b" else name)
        assert store.check().clean
    with tiered.open(str(tmp_path / "store"), readonly=True) as store:
        vol = store.volume("vda")
        assert [vol.changed_since(n).exact for n in report.checkpoints] == [False, True, True]


@needs_qemu
@pytest.mark.parametrize("entry,expected", [(1, "ones"), (0, "zeros")])
def test_all_ones_and_all_zeros_table_entries(tmp_path, small_image, entry, expected):
    lay = layout(small_image)
    e0 = lay["entries"][0]
    image = edited(small_image, tmp_path / "e.qcow2", {e0["table_offset"]: struct.pack(">Q", entry)})
    assert read_bitmaps(image).bitmaps[0].table[0] == entry
    want = [(0, 8 * MiB)] if expected == "ones" else []
    assert nbd_map(image, e0["name"]) == want  # QEMU reads it so too
    store, vol, report = volume_after(tmp_path, image, bitmaps=[e0["name"]])
    with store:
        assert list(vol.changed_since(e0["name"])) == want and report.exact == [True]
