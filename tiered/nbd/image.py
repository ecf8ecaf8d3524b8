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
from typing import TYPE_CHECKING

import numpy as np

from . import protocol as p

if TYPE_CHECKING:
    from ..volume import Volume

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate [offset, offset + length) keeping the size; False where unsupported."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


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
    """The image file of an export and the volume that tracks it."""

    def __init__(self, path: str, volume: "Volume", readonly: bool) -> None:
        self.path = path
        self.volume = volume
        self.readonly = readonly
        self.size = volume.size
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            actual = os.fstat(self.fd).st_size
            if actual != self.size:
                from ..errors import InvalidArgumentError

                raise InvalidArgumentError(
                    f"image {path!r} holds {actual} bytes but volume {volume.name!r} tracks {self.size}"
                )
        except BaseException:
            os.close(self.fd)
            raise

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

    # -- commands -----------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))
            data += more
        return data

    def write(self, offset: int, data: bytes, fua: bool) -> None:
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

    def trim(self, offset: int, length: int, fua: bool) -> None:
        self._mark(offset, length)
        _punch_hole(self.fd, offset, length)  # advisory: where unsupported the data stays
        if fua:
            os.fdatasync(self.fd)

    def write_zeroes(self, offset: int, length: int, may_trim: bool, fua: bool) -> None:
        self._mark(offset, length)
        if not (may_trim and _punch_hole(self.fd, offset, length)):
            zeros = bytes(min(length, 1 << 20))
            done = 0
            while done < length:
                done += os.pwrite(self.fd, zeros[: length - done], offset + done)
        if fua:
            os.fdatasync(self.fd)

    # -- block status -------------------------------------------------------------

    def allocation(self, offset: int, length: int, limit: int) -> bytes:
        """base:allocation of [offset, offset + length): data (flags 0) and holes (hole|zero)."""
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
            pairs.append((hole - pos, 0))
            pos = hole
        return descriptors(np.array(pairs, dtype=np.int64).reshape(-1, 2))

    def dirty(self, checkpoint: str, offset: int, length: int, limit: int) -> bytes:
        """qemu:dirty-bitmap:CHECKPOINT of [offset, offset + length)."""
        extents = self.volume.changed_since(checkpoint, offset, length)
        return descriptors(dirty_pairs(extents.offsets, extents.lengths, offset, offset + length, limit))
