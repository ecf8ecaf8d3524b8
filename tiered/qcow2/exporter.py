"""Export checkpoints into a qcow2 image as QEMU persistent dirty bitmaps.

Every change to the image goes through QEMU's own tools, so the bitmaps are
exactly what QEMU writes itself:

1. ``qemu-img info`` reads the image (format, virtual size, existing
   bitmaps); every argument is checked before anything is written.
2. A scratch qcow2 of the image's virtual size gets, for each checkpoint in
   turn, an enabled bitmap at the volume's granularity; one ``qemu-io``
   process reads ``write -z OFFSET LENGTH`` commands from its stdin, one per
   dirty extent, and the bitmap is disabled before the next one is added.
   Zero writes on an image without data touch only metadata, and QEMU marks
   enabled bitmaps dirty for them like for any write.
3. Only then is the image changed: one ``qemu-img bitmap --add --merge`` per
   checkpoint copies the scratch bitmap into it (``--remove`` first when
   replacing).  QEMU takes the image's lock for that, so an image a running
   VM holds is refused.

A failure in step 3 removes the bitmaps this call added and puts back the
ones it replaced (their contents were copied to the scratch image first).
What can remain after a crash of this process is described in docs/qcow2.md.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import (
    AlreadyExistsError,
    CheckpointNotFoundError,
    InvalidArgumentError,
    TieredError,
)

if TYPE_CHECKING:
    from ..extents import Extents
    from ..volume import Volume

# QEMU's limits on persistent bitmaps in qcow2 (block/qcow2-bitmap.c).
QEMU_MIN_GRANULARITY = 1 << 9
QEMU_MAX_GRANULARITY = 1 << 31
QEMU_MAX_BITMAP_BYTES = 1 << 29  # the bitmap's own size: ceil(size / granularity / 8)
QEMU_MAX_NAME_BYTES = 1023
SECTOR = 512  # qcow2 rounds a virtual size up to whole sectors

# qemu-io refuses a single request above 2 GiB - 512; longer extents go in
# pieces (each piece marks the chunks it overlaps, so the union is the same).
_PIECE = 1 << 30
# Scratch images use the largest cluster size: their L2 tables, the only
# thing zero writes allocate, are then 32 times smaller than with 64 KiB.
_SCRATCH_CLUSTER = "2M"


@dataclass
class _Existing:
    name: str
    granularity: int
    flags: list[str]

    @property
    def consistent(self) -> bool:
        # "in-use" in a closed image means a writer died holding it: QEMU
        # treats such a bitmap as inconsistent and will not read it.
        return "in-use" not in self.flags


def export_bitmaps(
    vol: "Volume",
    image_path: str,
    checkpoints: list[str] | None = None,
    replace: bool = False,
) -> dict:
    """Write ``vol.changed_since(name)`` for each checkpoint into the qcow2
    image ``image_path`` as a persistent, enabled bitmap called ``name`` at the
    volume's granularity.

    ``checkpoints=None`` exports every live checkpoint.  The image must be a
    qcow2 (version 3) whose virtual size is the volume's size (rounded up to
    512 bytes, as qcow2 stores it) and that no process has open.  A bitmap of
    the same name already in the image is refused unless ``replace``.  Guest
    data is never written.

    Returns a JSON-able report: ``image``, ``volume``, ``virtual_size``,
    ``granularity``, ``exported`` (names, in order), ``replaced`` (those that
    overwrote a bitmap), ``bitmaps`` (per name: extents, dirty bytes, exact)
    and ``seconds``.
    """
    started = time.monotonic()
    if not isinstance(image_path, (str, os.PathLike)):
        raise InvalidArgumentError(f"image path must be a str, got {type(image_path).__name__}")
    image_arg = os.fspath(image_path)
    # An absolute path: QEMU would read "name:rest" as a protocol prefix.
    image = os.path.abspath(image_arg)
    granularity = vol.granularity
    tools = _Tools()

    # -- validate everything before the image is touched ------------------
    names = _checkpoint_names(vol, checkpoints)
    info = _image_info(tools, image)
    vsize = _check_image(info, image, vol.size)
    _check_granularity(granularity, vsize)
    existing = _existing_bitmaps(info)
    taken = [name for name in names if name in existing]
    if taken and not replace:
        raise AlreadyExistsError(
            f"image {image_arg} already has bitmap(s) {', '.join(map(repr, taken))}; pass replace=True to overwrite"
        )
    answers = {name: vol.changed_since(name) for name in names}

    with tempfile.TemporaryDirectory(prefix="tiered-qcow2-") as scratch_dir:
        # -- fill every scratch bitmap ------------------------------------
        # One scratch image for all of them: the L2 tables the zero writes
        # allocate are shared, so the scratch stays small with many checkpoints.
        scratch = os.path.join(scratch_dir, "scratch.qcow2")
        _create_scratch(tools, scratch, vsize)
        filled = {name: f"new{i}" for i, name in enumerate(names)}
        for name in names:
            _fill(tools, scratch, filled[name], granularity, answers[name])
        saved = _save_replaced(tools, image, scratch, [existing[n] for n in taken])

        # -- change the image ---------------------------------------------
        done: list[str] = []
        try:
            for name in names:
                argv = ["bitmap"]
                if name in existing:
                    argv.append("--remove")
                argv += ["--add", "-g", str(granularity), "--merge", filled[name],
                         "-b", scratch, "-F", "qcow2", "-f", "qcow2", "--", image, name]
                # Counted before it runs: a failed --merge still stores the
                # bitmap --add created (empty, claiming nothing changed).
                done.append(name)
                try:
                    tools.img(argv, image=image)
                except _ImageInUse:
                    done.pop()  # refused at open: this step changed nothing
                    raise
        except BaseException as exc:
            problems = _roll_back(tools, image, scratch, done, existing, saved)
            if problems:
                note = (
                    "rolling back also failed: a bitmap of "
                    + ", ".join(repr(n) for n in done)
                    + " left in the image may be empty or stale, and must not be used for an incremental "
                    + f"backup (remove it with qemu-img bitmap --remove): {'; '.join(problems)}"
                )
                if isinstance(exc, TieredError):
                    raise TieredError(f"{exc}; {note}") from exc
                exc.add_note(note)
            raise

    return {
        "image": image_arg,
        "volume": vol.name,
        "virtual_size": vsize,
        "granularity": granularity,
        "exported": names,
        "replaced": taken,
        "bitmaps": [
            {
                "name": name,
                "extents": len(answers[name]),
                "dirty_bytes": answers[name].total_bytes,
                "exact": answers[name].exact,
            }
            for name in names
        ],
        "seconds": round(time.monotonic() - started, 3),
    }


# -- arguments and the image ------------------------------------------------


def _checkpoint_names(vol: "Volume", checkpoints: Sequence[str] | None) -> list[str]:
    live = [c.name for c in vol.checkpoints()]
    if checkpoints is None:
        return _check_bitmap_names(live)
    if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Sequence):
        raise InvalidArgumentError(
            f"checkpoints must be a list of names or None, got {type(checkpoints).__name__}"
        )
    names: list[str] = []
    for name in checkpoints:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"checkpoint name must be a str, got {type(name).__name__}")
        if name in names:
            raise InvalidArgumentError(f"checkpoint {name!r} is listed twice")
        names.append(name)
    known = set(live)
    for name in names:
        if name not in known:
            raise CheckpointNotFoundError(f"volume {vol.name!r} has no checkpoint {name!r}")
    return _check_bitmap_names(names)


def _check_bitmap_names(names: list[str]) -> list[str]:
    for name in names:
        if "\0" in name:
            raise InvalidArgumentError(f"checkpoint name {name!r} holds a NUL byte, which a command line cannot pass")
        if len(name.encode("utf-8")) > QEMU_MAX_NAME_BYTES:
            raise InvalidArgumentError(
                f"checkpoint name {name!r} is longer than the {QEMU_MAX_NAME_BYTES} bytes a qcow2 bitmap name may have"
            )
    return names


def _image_info(tools: "_Tools", image: str) -> dict[str, Any]:
    if not os.path.exists(image):
        raise InvalidArgumentError(f"no image at {image}")
    out = tools.img(["info", "--output=json", "--", image], image=image)
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise TieredError(f"qemu-img info printed no JSON for {image}: {exc}") from None
    if not isinstance(info, dict):
        raise TieredError(f"qemu-img info printed unexpected JSON for {image}")
    return info


def _check_image(info: dict[str, Any], image: str, size: int) -> int:
    fmt = info.get("format")
    if fmt != "qcow2":
        raise InvalidArgumentError(
            f"{image} is a {fmt} image; persistent bitmaps need qcow2 "
            "(a raw disk can get a qcow2 wrapper with an external data file, see docs/qcow2.md)"
        )
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("compat") == "0.10":
        raise InvalidArgumentError(
            f"{image} is a version 2 qcow2 (compat=0.10), which cannot hold bitmaps; "
            "upgrade it with `qemu-img amend -f qcow2 -o compat=1.1`"
        )
    if data.get("corrupt"):
        raise InvalidArgumentError(f"{image} is marked corrupt; repair it with `qemu-img check -r all` first")
    vsize = int(info.get("virtual-size", -1))
    want = -(-size // SECTOR) * SECTOR
    if vsize != want:
        rounded = f" (qcow2 rounds {size} up to {want})" if want != size else ""
        raise InvalidArgumentError(
            f"{image} has virtual size {vsize}; the volume's size is {size}{rounded}"
        )
    return vsize


def _check_granularity(granularity: int, vsize: int) -> None:
    if not QEMU_MIN_GRANULARITY <= granularity <= QEMU_MAX_GRANULARITY or granularity & (granularity - 1):
        raise InvalidArgumentError(
            f"granularity {granularity}: QEMU bitmaps need a power of two from "
            f"{QEMU_MIN_GRANULARITY} to {QEMU_MAX_GRANULARITY}"
        )
    chunks = -(-vsize // granularity)
    bitmap_bytes = -(-chunks // 8)
    if bitmap_bytes > QEMU_MAX_BITMAP_BYTES:
        raise InvalidArgumentError(
            f"a bitmap of {vsize} bytes at granularity {granularity} needs {bitmap_bytes} bytes; "
            f"QEMU stores at most {QEMU_MAX_BITMAP_BYTES} (use a volume with a larger granularity)"
        )


def _existing_bitmaps(info: dict[str, Any]) -> dict[str, _Existing]:
    data = (info.get("format-specific") or {}).get("data") or {}
    found = {}
    for entry in data.get("bitmaps") or []:
        found[entry["name"]] = _Existing(entry["name"], int(entry["granularity"]), list(entry.get("flags") or []))
    return found


# -- the scratch images -------------------------------------------------------


def _create_scratch(tools: "_Tools", path: str, vsize: int) -> None:
    tools.img(["create", "-q", "-f", "qcow2", "-o", f"cluster_size={_SCRATCH_CLUSTER}", "--", path, str(vsize)])


def _fill(tools: "_Tools", scratch: str, bitmap: str, granularity: int, extents: "Extents") -> None:
    """Add ``bitmap`` to the scratch image holding exactly ``extents``, and
    leave it disabled so that the next one's writes do not reach it."""
    if not extents:
        tools.img(["bitmap", "--add", "-g", str(granularity), "--disable", "-f", "qcow2", "--", scratch, bitmap])
        return
    tools.img(["bitmap", "--add", "-g", str(granularity), "-f", "qcow2", "--", scratch, bitmap])
    # Write-back cache: the default (writethrough) flushes after every
    # command, which makes 170k commands take minutes instead of seconds.
    tools.io(["-t", "writeback", "-f", "qcow2", scratch], _zero_writes(extents))
    tools.img(["bitmap", "--disable", "-f", "qcow2", "--", scratch, bitmap])


def _zero_writes(extents: "Extents") -> bytes:
    """One ``write -q -z OFFSET LENGTH`` line per extent (per piece of a long
    one); ``-q`` spares qemu-io two lines of statistics per command."""
    offsets, lengths = extents.offsets.tolist(), extents.lengths.tolist()
    if any(n > _PIECE for n in lengths):
        pieces = [(o + k, min(_PIECE, n - k)) for o, n in zip(offsets, lengths) for k in range(0, n, _PIECE)]
        offsets, lengths = [o for o, _ in pieces], [n for _, n in pieces]
    return "".join(map("write -q -z {} {}\n".format, offsets, lengths)).encode()


def _save_replaced(tools: "_Tools", image: str, scratch: str, replaced: list[_Existing]) -> dict[str, str]:
    """Copy the bitmaps about to be replaced into the scratch image so that a
    rollback can put them back; returns {name: scratch bitmap} for those
    saved (an inconsistent bitmap holds nothing worth saving)."""
    saved: dict[str, str] = {}
    for i, old in enumerate(b for b in replaced if b.consistent):
        copy = f"old{i}"
        tools.img(["bitmap", "--add", "-g", str(old.granularity), "--disable", "--merge", old.name,
                   "-b", image, "-F", "qcow2", "-f", "qcow2", "--", scratch, copy], image=image)
        saved[old.name] = copy
    return saved


def _roll_back(
    tools: "_Tools", image: str, scratch: str, done: list[str], existing: dict[str, _Existing], saved: dict[str, str]
) -> list[str]:
    """Undo the names in ``done``; returns what could not be undone."""
    problems: list[str] = []
    if not done:
        return problems
    present = _present(tools, image, problems)
    for name in reversed(done):
        argv = ["bitmap"]
        if present is None or name in present:
            argv.append("--remove")
        if name in saved:
            old = existing[name]
            argv += ["--add", "-g", str(old.granularity), "--merge", saved[name], "-b", scratch, "-F", "qcow2"]
            if "auto" not in old.flags:
                argv.append("--disable")
        if len(argv) == 1:
            continue
        try:
            tools.img([*argv, "-f", "qcow2", "--", image, name], image=image)
        except TieredError as exc:
            problems.append(f"bitmap {name!r}: {exc}")
    return problems


def _present(tools: "_Tools", image: str, problems: list[str]) -> set[str] | None:
    try:
        return set(_existing_bitmaps(_image_info(tools, image)))
    except TieredError as exc:
        problems.append(str(exc))
        return None


# -- running QEMU's tools ------------------------------------------------------


class _ImageInUse(TieredError):
    """QEMU could not take the image's lock: it opened nothing."""


class _Tools:
    """qemu-img and qemu-io, found on PATH when first needed."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}

    def _path(self, tool: str) -> str:
        path = self._paths.get(tool) or shutil.which(tool)
        if path is None:
            raise TieredError(f"{tool} is not installed (or not on PATH); exporting bitmaps needs QEMU's tools")
        self._paths[tool] = path
        return path

    def img(self, argv: list[str], image: str | None = None) -> str:
        return self._run("qemu-img", argv, None, image)

    def io(self, argv: list[str], commands: bytes) -> str:
        return self._run("qemu-io", argv, commands, None)

    def _run(self, tool: str, argv: list[str], stdin: bytes | None, image: str | None) -> str:
        path = self._path(tool)
        # qemu-io prints a prompt per command (and, without -q, two lines of
        # statistics); only failures matter.
        with tempfile.TemporaryFile() as out:
            try:
                done = subprocess.run(
                    [path, *argv],
                    input=stdin,
                    stdin=None if stdin is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "LC_ALL": "C"},
                )
            except OSError as exc:
                raise TieredError(f"{tool} could not be run: {exc}") from None
            out.seek(0)
            if done.returncode == 0:
                return out.read().decode(errors="replace")
            stderr = done.stderr.decode(errors="replace").strip()
            if tool == "qemu-io":
                # qemu-io reports a failed command on stdout, among the others.
                failed = [line for line in out.read().decode(errors="replace").splitlines()
                          if "failed" in line or "cannot" in line or "error" in line.lower()]
                stderr = "\n".join(filter(None, [stderr, *failed[:5]]))
        if image is not None and "lock" in stderr and "Failed to get" in stderr:
            raise _ImageInUse(
                f"the image {image} is in use (locked by a running QEMU?): "
                f"{tool} exited with {done.returncode}: {stderr}"
            )
        raise TieredError(f"{tool} {_quote(argv)} exited with {done.returncode}: {stderr or '(no message)'}")


def _quote(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv[:12]) + (" ..." if len(argv) > 12 else "")
