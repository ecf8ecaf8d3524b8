"""The exported device: one image file and the volume that tracks its writes.

Blocking calls, made from the server's thread pool.  Every write marks the
volume first; on a ``durability="sync"`` volume the data is written only
after ``vol.sync(token)`` returned, so the tracking never misses a write that
reached the image.  Concurrent syncs of all connections share one group
commit (see docs/api.md, Durability).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from . import protocol as p
from .gate import WriteGate

if TYPE_CHECKING:
    from ..volume import Checkpoint, Volume

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
PUNCH_HOLE = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
ZERO_RANGE = _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV)
_libc = None


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate(2) with ``mode``; False where the file system or device
    does not support it (nothing changed), OSError for a real failure."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def probe_fallocate(directory: str) -> set[int] | None:
    """The fallocate modes (PUNCH_HOLE, ZERO_RANGE) a scratch file in
    ``directory`` supports: what the image's file system can do fast,
    learnt without touching the image.  None where no scratch file can be made."""
    try:
        fd, path = tempfile.mkstemp(prefix=".tiered-probe-", dir=directory)
    except OSError:
        return None
    try:
        os.unlink(path)
        os.pwrite(fd, bytes(16384), 0)
        return {mode for mode in (PUNCH_HOLE, ZERO_RANGE) if fallocate(fd, mode, 4096, 8192)}
    except OSError:
        return None
    finally:
        os.close(fd)


def descriptors(pairs: np.ndarray) -> bytes:
    """(length, flags) pairs as the wire's big-endian u32 pairs."""
    return np.ascontiguousarray(pairs, dtype=">u4").tobytes()


def dirty_pairs(offsets: np.ndarray, lengths: np.ndarray, lo: int, hi: int, limit: int) -> np.ndarray:
    """(length, flags) pairs covering [lo, hi) exactly: the dirty extents
    (flag 1) and the clean runs between them (flag 0), at most ``limit``."""
    offs = offsets.astype(np.int64)
    ends = offs + lengths.astype(np.int64)
    gap_starts = np.concatenate(([lo], ends))
    gap_ends = np.concatenate((offs, [hi]))
    n = len(offs)
    pairs = np.zeros((2 * n + 1, 2), dtype=np.int64)
    pairs[0::2, 0] = gap_ends - gap_starts
    pairs[1::2, 0] = lengths
    pairs[1::2, 1] = p.STATE_DIRTY
    pairs = pairs[pairs[:, 0] > 0]
    return pairs[:limit]


class Image:
    """The image file (or block device) of an export and the volume that tracks it."""

    def __init__(self, path: str, volume: "Volume", readonly: bool) -> None:
        from ..errors import InvalidArgumentError

        self.path = path
        self.volume = volume
        self.readonly = readonly
        self.size = volume.size
        self.gate = WriteGate()
        self._map: DirtyMap | None = None  # see dirty()
        self._too_large: set[str] = set()  # checkpoints whose whole-volume map is not kept
        try:
            self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot open image {path!r}: {exc.strerror}") from None
        try:
            st = os.fstat(self.fd)
            self.regular = stat.S_ISREG(st.st_mode)
            actual = st.st_size if self.regular else os.lseek(self.fd, 0, os.SEEK_END)
            if actual != self.size:
                raise InvalidArgumentError(
                    f"image {path!r} holds {actual} bytes but volume {volume.name!r} tracks {self.size}"
                )
        except BaseException:
            os.close(self.fd)
            raise
        # What zeroing can do fast is learnt up front (a FAST_ZERO request
        # must fail at once, before it marks, where zeroing means writing),
        # beside the file itself (a symlink may lead to another file system).
        # A block device is not probed: its fast zeroing is never promised.
        probed = None if readonly or not self.regular else probe_fallocate(os.path.dirname(os.path.realpath(path)))
        #: fallocate modes promised fast (FAST_ZERO is served with them)
        self.fast_modes: set[int] = probed or set()
        #: fallocate modes known to fail here: not tried again
        self.unsupported_modes: set[int] = set() if probed is None else {PUNCH_HOLE, ZERO_RANGE} - probed

    def close(self) -> None:
        if self.fd >= 0:
            if not self.readonly:
                os.fdatasync(self.fd)
            os.close(self.fd)
            self.fd = -1

    # -- tracking --------------------------------------------------------------

    def _mark(self, offset: int, length: int) -> None:
        token = self.volume.mark(offset, length)
        if token is not None:
            self.volume.sync(token)  # the data may reach the image only now

    def checkpoint(self, name: str) -> "Checkpoint":
        """``volume.checkpoint(name)`` as a consistency point: it waits for
        the writes already marked to reach the image and holds new ones
        until it is sealed (see :mod:`.gate`)."""
        with self.gate.exclusive():
            return self.volume.checkpoint(name)

    # -- commands -----------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))
            data += more
        return data

    def read_pieces(self, offset: int, length: int, limit: int) -> list[tuple[int, int, bytes | None]]:
        """[offset, offset + length) as at most ``limit`` (offset, length,
        data) pieces in order, ``data`` None for a hole (reads as zeros).
        Past the limit the last piece is data covering the rest, so
        ``limit=1`` gives one hole only where the whole range is one."""
        runs = self._allocation(offset, length, limit)
        pieces: list[tuple[int, int, bytes | None]] = []
        if sum(run for run, _ in runs) < length:
            runs[-1] = (length - sum(run for run, _ in runs[:-1]), 0)  # the rest, read as data
        pos = offset
        for run, flags in runs:
            pieces.append((pos, run, None if flags & p.STATE_HOLE else self.read(pos, run)))
            pos += run
        return pieces

    def write(self, offset: int, data: bytes, fua: bool) -> None:
        with self.gate.write():
            self._mark(offset, len(data))
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        if fua:
            os.fdatasync(self.fd)

    def flush(self) -> None:
        os.fdatasync(self.fd)
        self.volume.sync()

    def cache(self, offset: int, length: int) -> None:
        """NBD_CMD_CACHE: ask the kernel to read the range ahead."""
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    def trim(self, offset: int, length: int, fua: bool) -> None:
        with self.gate.write():
            self._mark(offset, length)
            self._fallocate(PUNCH_HOLE, offset, length)  # advisory: where unsupported the data stays
        if fua:
            os.fdatasync(self.fd)

    def can_zero_fast(self, may_trim: bool) -> bool:
        """Whether WRITE_ZEROES of this kind is faster than writing zeros
        (NBD_CMD_FLAG_FAST_ZERO): a hole punch, or with NO_HOLE a zero range."""
        return ZERO_RANGE in self.fast_modes or (may_trim and PUNCH_HOLE in self.fast_modes)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool, fast: bool = False) -> None:
        """Zero [offset, offset + length): a hole where allowed, else an
        allocated zero range, else written zeros.  ``fast``: raise
        :class:`NotFast` rather than write zeros (marked, data unchanged)."""
        with self.gate.write():
            self._mark(offset, length)
            if may_trim and self._fallocate(PUNCH_HOLE, offset, length):
                pass
            elif self._fallocate(ZERO_RANGE, offset, length):
                pass
            elif fast:
                raise NotFast(f"zeroing [{offset}, +{length}) would write zeros")
            else:
                zeros = bytes(min(length, 1 << 20))
                done = 0
                while done < length:
                    done += os.pwrite(self.fd, zeros[: length - done], offset + done)
        if fua:
            os.fdatasync(self.fd)

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        if mode in self.unsupported_modes:
            return False
        if fallocate(self.fd, mode, offset, length):
            return True
        self.fast_modes.discard(mode)
        self.unsupported_modes.add(mode)
        return False

    # -- block status -------------------------------------------------------------

    def _allocation(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        """(length, flags) runs of [offset, offset + length): data (0) and
        holes (hole|zero), from SEEK_DATA/SEEK_HOLE; at most ``limit``."""
        hi = offset + length
        pairs: list[tuple[int, int]] = []
        pos = offset
        while pos < hi and len(pairs) < limit:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                data = hi  # only a hole up to the end of the file
            if data > pos:
                end = min(data, hi)
                pairs.append((end - pos, p.STATE_HOLE | p.STATE_ZERO))
                pos = end
                continue
            hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), hi)
            if hole > pos:  # else a hole was punched since SEEK_DATA: look again
                pairs.append((hole - pos, 0))
                pos = hole
        return pairs

    def allocation(self, offset: int, length: int, limit: int) -> bytes:
        """base:allocation of [offset, offset + length) as wire descriptors."""
        return descriptors(np.array(self._allocation(offset, length, limit), dtype=np.int64).reshape(-1, 2))

    def dirty(self, checkpoint: str, offset: int, length: int, limit: int) -> bytes:
        """qemu:dirty-bitmap:CHECKPOINT of [offset, offset + length), as wire
        descriptors.  The first window of a map scan (offset 0, at least
        MAP_SCAN bytes: nbdinfo and qemu-img map read window after window of
        up to 4 GiB) is answered from one ``changed_since`` of the whole
        volume, kept for the next windows while the volume's ``version``
        stays the same (:meth:`dirty_cached`).  Every other window, and every
        window of a checkpoint whose map was once too large to keep, is a
        windowed ``changed_since``: at most one whole-volume answer per scan."""
        if not offset and length >= MAP_SCAN and checkpoint not in self._too_large:
            version = self.volume.version  # read before the answer: a later change makes it stale
            whole = self.volume.changed_since(checkpoint)
            if 32 * len(whole.offsets) <= MAP_CACHE_BYTES:
                offsets = whole.offsets.astype(np.int64)
                entry = DirtyMap(checkpoint, version, offsets, offsets + whole.lengths.astype(np.int64), self.size)
                self._map = entry
                return entry.window(offset, length, limit)
            self._too_large.add(checkpoint)
        extents = self.volume.changed_since(checkpoint, offset, length)
        return descriptors(dirty_pairs(extents.offsets, extents.lengths, offset, offset + length, limit))

    def dirty_cached(self, checkpoint: str, offset: int, length: int, limit: int) -> bytes | None:
        """:meth:`dirty` from the map kept by the last scan of ``checkpoint``
        if no change happened since, else None.  Cheap enough for the event loop."""
        entry = self._map
        if entry is None or entry.checkpoint != checkpoint or entry.version != self.volume.version:
            return None
        return entry.window(offset, length, limit)


MAP_SCAN = 1 << 30  # bytes: a block status window at least this long starts a map scan
MAP_CACHE_BYTES = 64 << 20  # the largest whole-volume map kept between windows


class DirtyMap:
    """The dirty extents of a whole volume since one checkpoint, at one
    version, kept as the (length, flags) runs that tile the volume (dirty
    extents and the clean runs between them), so that a window is a slice
    whose two end runs are clipped."""

    __slots__ = ("checkpoint", "version", "starts", "runs")

    def __init__(self, checkpoint: str, version: int, offsets: np.ndarray, ends: np.ndarray, size: int) -> None:
        self.checkpoint, self.version = checkpoint, version
        self.runs = dirty_pairs(offsets, ends - offsets, 0, size, len(offsets) * 2 + 1)  # int64 (n, 2)
        self.starts = np.concatenate(([0], np.cumsum(self.runs[:-1, 0])))

    def window(self, offset: int, length: int, limit: int) -> bytes:
        hi = offset + length
        first = int(np.searchsorted(self.starts, offset, side="right")) - 1
        last = min(int(np.searchsorted(self.starts, hi, side="left")), first + limit)
        runs = self.runs[first:last].copy()
        # Every run but the two ends lies inside the window (under 2^32 bytes).
        runs[0, 0] = min(self.starts[first] + runs[0, 0], hi) - offset
        if last - first > 1 and self.starts[last - 1] + runs[-1, 0] > hi:
            runs[-1, 0] = hi - self.starts[last - 1]
        return descriptors(runs)


class NotFast(Exception):
    """A FAST_ZERO request that only writing zeros could serve."""
