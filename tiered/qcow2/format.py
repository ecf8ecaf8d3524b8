"""A read-only reader of the persistent dirty bitmaps of a qcow2 image.

It follows QEMU's docs/interop/qcow2.rst: the header (versions 2 and 3),
the header extensions, the Bitmaps extension (type ``0x23852875``), the
bitmap directory, the bitmap tables and the bitmap data clusters.  Nothing
else of the image is read (no L1/L2 table, refcount or snapshot), and
nothing is ever written.

Every size read from the file is checked against the file's size and the
image's virtual size before anything is allocated from it, so a damaged or
hostile image gives a :class:`~tiered.errors.Qcow2FormatError` naming the
structure and the problem, never another exception.  Where the
specification leaves a limit to the implementation, QEMU's is used (it is
named in the message).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Iterator

import numpy as np

from ..errors import Qcow2FormatError

MAGIC = b"QFI\xfb"
EXT_END = 0x00000000
EXT_BITMAPS = 0x23852875

#: Header feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_KNOWN = (1 << 5) - 1  # dirty, corrupt, external data file, compression type, extended L2
AUTOCLEAR_BITMAPS = 1 << 0

#: Bitmap directory entry flags.
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
FLAGS_RESERVED = 0xFFFFFFFF & ~0b111
TYPE_DIRTY_TRACKING = 1

#: Bitmap table entry fields.
TABLE_ALL_ONES = 1
TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
TABLE_RESERVED_MASK = 0xFF000000000001FE

# Limits the specification leaves to the implementation: QEMU's.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21  # QEMU opens no image with clusters above 2 MiB
MAX_BITMAPS = 65535
MAX_DIRECTORY_SIZE = 1024 * MAX_BITMAPS
MAX_TABLE_SIZE = 0x8000000
MAX_BITMAP_BYTES = 0x20000000  # the clusters of one bitmap's data

V2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
V3_FIELDS = struct.Struct(">QQQII")  # bytes 72-103
EXT_HEADER = struct.Struct(">II")
BITMAPS_EXT = struct.Struct(">IIQQ")
DIR_ENTRY = struct.Struct(">QIIBBHI")  # 24 bytes, then extra data, name, padding


def _round8(n: int) -> int:
    return (n + 7) & ~7


@dataclasses.dataclass(frozen=True)
class Bitmap:
    """One entry of the bitmap directory."""

    name: str
    granularity: int
    """Bytes of the virtual disk per bit (``1 << granularity_bits``)."""
    flags: int
    """The raw flags field."""
    type: int
    table_offset: int
    table_size: int
    extra_data_size: int
    inconsistent: bool
    """Its content is unknown: flagged ``in_use``, or the image's bitmaps
    extension is flagged inconsistent (autoclear bit 0 clear)."""
    unusable: str | None
    """Why the specification forbids using it (an unknown type, extra data
    not flagged compatible), or None."""
    table: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    """The bitmap table (uint64 entries), read and checked; None for a
    bitmap that is inconsistent or unusable."""

    @property
    def in_use(self) -> bool:
        return bool(self.flags & FLAG_IN_USE)

    @property
    def auto(self) -> bool:
        """The ``auto`` flag: the bitmap is enabled (it records writes)."""
        return bool(self.flags & FLAG_AUTO)

    enabled = auto

    @property
    def extra_data_compatible(self) -> bool:
        return bool(self.flags & FLAG_EXTRA_DATA_COMPATIBLE)


@dataclasses.dataclass(frozen=True)
class Qcow2Image:
    """What the reader found in a qcow2 image's header and bitmaps extension."""

    path: str
    file_size: int
    version: int
    cluster_size: int
    virtual_size: int
    incompatible_features: int
    autoclear_features: int
    bitmaps_consistent: bool
    """False when the Bitmaps extension is present but autoclear bit 0 is
    clear: a program without bitmap support wrote the image, and the
    specification says the bitmaps must be considered inconsistent."""
    bitmaps: list[Bitmap]
    """The directory's entries, in directory order (QEMU appends new
    bitmaps, so this is usually creation order)."""
    notes: list[str] = dataclasses.field(default_factory=list)

    def bitmap(self, name: str) -> Bitmap:
        for bm in self.bitmaps:
            if bm.name == name:
                return bm
        raise Qcow2FormatError(f"qcow2 image {self.path!r} has no bitmap {name!r}")

    def bit_count(self, bitmap: Bitmap) -> int:
        """Bits of the bitmap: one per ``granularity`` bytes of the virtual disk."""
        return -(-self.virtual_size // bitmap.granularity)

    def blocks(self, bitmap: Bitmap) -> Iterator[tuple[int, int, np.ndarray | bool]]:
        """The bitmap, one table entry at a time: ``(first_bit, end_bit,
        bits)`` where ``bits`` is a bool array of ``end_bit - first_bit``
        bits, or True / False for a cluster that reads as all ones / zeros.
        Raises Qcow2FormatError (also for an I/O error of the image)."""
        if bitmap.table is None:
            raise Qcow2FormatError(
                f"bitmap {bitmap.name!r} of {self.path!r} cannot be read: "
                + (bitmap.unusable or "its content is inconsistent")
            )
        n_bits = self.bit_count(bitmap)
        per_cluster = self.cluster_size * 8
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise Qcow2FormatError(f"cannot open qcow2 image {self.path!r}: {exc.strerror or exc}") from None
        try:
            for i, entry in enumerate(bitmap.table.tolist()):
                first = i * per_cluster
                end = min(first + per_cluster, n_bits)
                offset = entry & TABLE_OFFSET_MASK
                if offset == 0:
                    yield first, end, bool(entry & TABLE_ALL_ONES)
                    continue
                data = _pread(fd, self.path, offset, min(self.cluster_size, max(self.file_size - offset, 0)),
                              f"data cluster {i} of bitmap {bitmap.name!r}")
                if len(data) < self.cluster_size:
                    data += bytes(self.cluster_size - len(data))
                bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little").view(np.bool_)
                if bits[end - first :].any():
                    raise Qcow2FormatError(
                        f"image {self.path!r}: bitmap {bitmap.name!r} has bits set past the end "
                        f"of the virtual disk in its last data cluster (at byte {offset}); they must be zero"
                    )
                yield first, end, bits[: end - first]
        finally:
            os.close(fd)

    def bits(self, bitmap: Bitmap | str) -> np.ndarray:
        """The whole bitmap as a bool array, one element per bit."""
        bm = self.bitmap(bitmap) if isinstance(bitmap, str) else bitmap
        out = np.zeros(self.bit_count(bm), bool)
        for first, end, bits in self.blocks(bm):
            out[first:end] = bits
        return out

    def extents(self, bitmap: Bitmap | str) -> list[tuple[int, int]]:
        """The bitmap's dirty byte ranges ``(offset, length)``, coalesced,
        the last one clipped to the virtual size."""
        bm = self.bitmap(bitmap) if isinstance(bitmap, str) else bitmap
        g = bm.granularity
        runs: list[tuple[int, int]] = []
        for first, end, bits in self.blocks(bm):
            if bits is True:
                starts, ends = [first], [end]
            elif bits is False:
                continue
            else:
                starts, ends = bit_runs(bits)
                starts, ends = (starts + first).tolist(), (ends + first).tolist()
            for s, e in zip(starts, ends):
                if runs and runs[-1][1] == s:
                    runs[-1] = (runs[-1][0], e)
                else:
                    runs.append((s, e))
        return [(s * g, min(e * g, self.virtual_size) - s * g) for s, e in runs]


def bit_runs(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of set bits of a bool array, ends
    exclusive, as int64 indices into ``bits``."""
    edges = np.diff(bits.astype(np.int8), prepend=0, append=0)
    return np.flatnonzero(edges == 1).astype(np.int64), np.flatnonzero(edges == -1).astype(np.int64)


def _pread(fd: int, path: str, offset: int, size: int, what: str) -> bytes:
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise Qcow2FormatError(f"cannot read {what} of qcow2 image {path!r}: {exc.strerror or exc}") from None
    if len(data) != size:
        raise Qcow2FormatError(
            f"image {path!r}: truncated: {what} at byte {offset} needs {size} bytes, "
            f"the file has {len(data)} there"
        )
    return data


class _Reader:
    def __init__(self, path: str, fd: int, file_size: int) -> None:
        self.path = path
        self.fd = fd
        self.file_size = file_size
        self.cluster_size = 0
        #: Metadata regions seen so far, (start, end, what): none may overlap.
        self.regions: list[tuple[int, int, str]] = []

    def error(self, message: str) -> Qcow2FormatError:
        return Qcow2FormatError(f"image {self.path!r}: {message}")

    def read(self, offset: int, size: int, what: str) -> bytes:
        return _pread(self.fd, self.path, offset, size, what)

    def region(self, offset: int, size: int, what: str) -> None:
        """Check that ``what`` lies in the file, aligned, past the header cluster."""
        if offset % self.cluster_size:
            raise self.error(f"{what} at byte {offset} is not aligned to the cluster size {self.cluster_size}")
        if offset < self.cluster_size:
            raise self.error(f"{what} at byte {offset} overlaps the image header (the first cluster)")
        if offset + size > self.file_size:
            raise self.error(
                f"{what} at byte {offset} ({size} bytes) lies past the end of the file ({self.file_size} bytes)"
            )
        self.regions.append((offset, offset + size, what))

    def check_overlaps(self) -> None:
        regions = sorted(self.regions)
        for (s0, e0, w0), (s1, e1, w1) in zip(regions, regions[1:]):
            if s1 < e0:
                raise self.error(f"{w1} (bytes {s1}-{e1 - 1}) overlaps {w0} (bytes {s0}-{e0 - 1})")


def read_bitmaps(path: str | os.PathLike) -> Qcow2Image:
    """Read and check the header and bitmap metadata of the qcow2 image at
    ``path`` (bitmap data is read later, by :meth:`Qcow2Image.blocks`).

    Raises Qcow2FormatError: not a qcow2 image, an unsupported version or
    incompatible feature, a truncated file, or bitmap metadata that breaks
    the specification (the message names it)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise Qcow2FormatError(f"cannot open qcow2 image {path!r}: {exc.strerror or exc}") from None
    try:
        try:
            file_size = os.fstat(fd).st_size
        except OSError as exc:
            raise Qcow2FormatError(f"cannot read qcow2 image {path!r}: {exc.strerror or exc}") from None
        return _read(_Reader(path, fd, file_size))
    finally:
        os.close(fd)


def _read(r: _Reader) -> Qcow2Image:
    try:
        head = os.pread(r.fd, 4096, 0)
    except OSError as exc:
        raise r.error(f"cannot be read: {exc.strerror or exc}") from None
    if head[:4] != MAGIC:
        raise r.error("not a qcow2 image (no QFI\\xfb magic at byte 0)")
    if len(head) < V2_HEADER.size:
        raise r.error(f"truncated: {r.file_size} bytes, shorter than the {V2_HEADER.size}-byte qcow2 header")
    (_, version, _backing_off, _backing_size, cluster_bits, virtual_size, _crypt, l1_size, l1_offset,
     refcount_offset, refcount_clusters, _nb_snapshots, _snapshots_offset) = V2_HEADER.unpack_from(head)
    if version not in (2, 3):
        raise r.error(f"qcow2 version {version}; this reader knows versions 2 and 3")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise r.error(
            f"cluster_bits {cluster_bits}, outside [{MIN_CLUSTER_BITS}, {MAX_CLUSTER_BITS}] "
            "(512 bytes to QEMU's limit of 2 MiB)"
        )
    cluster_size = 1 << cluster_bits
    r.cluster_size = cluster_size
    incompatible = autoclear = 0
    header_length = V2_HEADER.size
    if version == 3:
        if len(head) < V2_HEADER.size + V3_FIELDS.size:
            raise r.error(f"truncated: {r.file_size} bytes, shorter than a version 3 header")
        incompatible, _compatible, autoclear, _refcount_order, header_length = V3_FIELDS.unpack_from(head, 72)
        if header_length < 104 or header_length % 8 or header_length > cluster_size:
            raise r.error(
                f"header_length {header_length}; version 3 needs a multiple of 8 from 104 to the "
                f"cluster size {cluster_size}"
            )
        unknown = incompatible & ~INCOMPAT_KNOWN
        if unknown:
            raise r.error(f"unknown incompatible feature bits {unknown:#x}: the image must not be opened")
        if incompatible & INCOMPAT_CORRUPT:
            raise r.error("flagged corrupt (incompatible feature bit 1); repair it with 'qemu-img check -r all'")
    if r.file_size < cluster_size:
        raise r.error(f"truncated: {r.file_size} bytes, shorter than its first cluster ({cluster_size} bytes)")
    first = r.read(0, cluster_size, "the header cluster")
    r.regions.append((0, cluster_size, "the image header"))
    # The L1 and refcount tables, where they are sane, are metadata that no
    # bitmap structure may overlap.
    if l1_size and l1_offset and l1_offset % cluster_size == 0 and l1_offset + 8 * l1_size <= r.file_size:
        r.regions.append((l1_offset, l1_offset + 8 * l1_size, "the L1 table"))
    rt_bytes = refcount_clusters * cluster_size
    if refcount_clusters and refcount_offset and refcount_offset % cluster_size == 0 \
            and refcount_offset + rt_bytes <= r.file_size:
        r.regions.append((refcount_offset, refcount_offset + rt_bytes, "the refcount table"))

    # Header extensions: from the end of the header to the end of the first cluster.
    ext = None
    pos = header_length
    while pos + EXT_HEADER.size <= cluster_size:
        ext_type, length = EXT_HEADER.unpack_from(first, pos)
        if ext_type == EXT_END:
            break
        if pos + EXT_HEADER.size + length > cluster_size:
            raise r.error(
                f"header extension {ext_type:#010x} at byte {pos} has length {length}, past the end of "
                "the first cluster"
            )
        if ext_type == EXT_BITMAPS:
            if ext is not None:
                raise r.error("two Bitmaps header extensions")
            if length != BITMAPS_EXT.size:
                raise r.error(f"Bitmaps header extension has length {length}, not {BITMAPS_EXT.size}")
            ext = BITMAPS_EXT.unpack_from(first, pos + EXT_HEADER.size)
        pos += EXT_HEADER.size + _round8(length)

    notes: list[str] = []
    consistent = bool(autoclear & AUTOCLEAR_BITMAPS)
    if ext is None:
        if consistent:
            notes.append("autoclear bit 0 (bitmaps) is set but the image has no Bitmaps extension")
        r.check_overlaps()
        return Qcow2Image(r.path, r.file_size, version, cluster_size, virtual_size, incompatible, autoclear,
                          True, [], notes)
    if not consistent:
        notes.append(
            "the Bitmaps extension is present but autoclear bit 0 is clear (a program without bitmap "
            "support wrote the image): every bitmap is inconsistent"
        )
    nb_bitmaps, reserved, dir_size, dir_offset = ext
    if reserved:
        raise r.error("Bitmaps extension has a non-zero reserved field")
    if not 1 <= nb_bitmaps <= MAX_BITMAPS:
        raise r.error(f"Bitmaps extension has nb_bitmaps {nb_bitmaps}, outside [1, {MAX_BITMAPS}]")
    if not 24 * nb_bitmaps <= dir_size <= MAX_DIRECTORY_SIZE:
        raise r.error(
            f"bitmap directory size {dir_size} cannot hold {nb_bitmaps} entries of 24 bytes or more "
            f"(or exceeds QEMU's limit of {MAX_DIRECTORY_SIZE})"
        )
    r.region(dir_offset, dir_size, "the bitmap directory")
    directory = r.read(dir_offset, dir_size, "the bitmap directory")
    bitmaps = _directory(r, directory, nb_bitmaps, virtual_size, consistent)
    r.check_overlaps()
    return Qcow2Image(r.path, r.file_size, version, cluster_size, virtual_size, incompatible, autoclear,
                      consistent, bitmaps, notes)


def _directory(r: _Reader, directory: bytes, nb_bitmaps: int, virtual_size: int, consistent: bool) -> list[Bitmap]:
    cluster_size = r.cluster_size
    bitmaps: list[Bitmap] = []
    names: set[str] = set()
    pos = 0
    while pos < len(directory):
        index = len(bitmaps)
        if index == nb_bitmaps:
            raise r.error(f"the bitmap directory holds more entries than nb_bitmaps ({nb_bitmaps})")
        if pos + DIR_ENTRY.size > len(directory):
            raise r.error(f"bitmap directory entry {index} at byte {pos} runs past the end of the directory")
        table_offset, table_size, flags, bm_type, gran_bits, name_size, extra_size = DIR_ENTRY.unpack_from(
            directory, pos
        )
        entry_size = _round8(DIR_ENTRY.size + extra_size + name_size)
        if pos + entry_size > len(directory):
            raise r.error(
                f"bitmap directory entry {index} ({entry_size} bytes with its name and extra data) runs "
                "past the end of the directory"
            )
        raw_name = directory[pos + DIR_ENTRY.size + extra_size : pos + DIR_ENTRY.size + extra_size + name_size]
        padding = directory[pos + DIR_ENTRY.size + extra_size + name_size : pos + entry_size]
        pos += entry_size
        label = f"bitmap directory entry {index}"
        if name_size == 0:
            raise r.error(f"{label} has an empty name")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise r.error(f"{label} has a name that is not UTF-8: {raw_name[:64]!r}") from None
        label = f"bitmap {name!r}"
        if any(padding):
            raise r.error(f"{label}: the padding of its directory entry is not zero")
        if name in names:
            raise r.error(f"two bitmaps are named {name!r}")
        names.add(name)
        if flags & FLAGS_RESERVED:
            raise r.error(f"{label} has reserved flag bits set ({flags & FLAGS_RESERVED:#x})")
        if gran_bits > 63:
            raise r.error(f"{label} has granularity_bits {gran_bits}, outside [0, 63]")
        if table_size == 0:
            raise r.error(f"{label} has an empty bitmap table")
        if table_size > MAX_TABLE_SIZE or table_size * cluster_size > MAX_BITMAP_BYTES:
            raise r.error(
                f"{label} has a bitmap table of {table_size} entries, over QEMU's limits "
                f"({MAX_TABLE_SIZE} entries, {MAX_BITMAP_BYTES} bytes of data)"
            )
        r.region(table_offset, table_size * 8, f"the bitmap table of {label}")
        granularity = 1 << gran_bits
        unusable = None
        if bm_type != TYPE_DIRTY_TRACKING:
            unusable = f"its type {bm_type} is reserved (only 1, dirty tracking, is defined)"
        elif extra_size and not flags & FLAG_EXTRA_DATA_COMPATIBLE:
            unusable = f"it has {extra_size} bytes of extra data not flagged extra_data_compatible"
        inconsistent = bool(flags & FLAG_IN_USE) or not consistent
        if unusable is None and not inconsistent:
            needed = _ceil_div(_ceil_div(_ceil_div(virtual_size, granularity), 8), cluster_size)
            if table_size != needed:
                raise r.error(
                    f"{label} has a bitmap table of {table_size} entries; a bitmap of granularity "
                    f"{granularity} over the virtual size {virtual_size} needs {needed}"
                )
        bitmaps.append(Bitmap(name, granularity, flags, bm_type, table_offset, table_size, extra_size,
                              inconsistent, unusable))
    if len(bitmaps) != nb_bitmaps:
        raise r.error(f"the bitmap directory holds {len(bitmaps)} entries, nb_bitmaps says {nb_bitmaps}")
    # Tables are read once no metadata region overlaps another.
    r.check_overlaps()
    data: list[tuple[np.ndarray, str]] = []
    for i, bm in enumerate(bitmaps):
        if bm.unusable is None and not bm.inconsistent:
            label = f"bitmap {bm.name!r}"
            table = np.frombuffer(r.read(bm.table_offset, bm.table_size * 8, f"the bitmap table of {label}"), ">u8")
            table = table.astype(np.uint64)
            n_bytes = _ceil_div(_ceil_div(virtual_size, bm.granularity), 8)
            data.append((_check_table(r, table, label, n_bytes), label))
            bitmaps[i] = dataclasses.replace(bm, table=table)
    _distinct_data(r, data)
    return bitmaps


def _distinct_data(r: _Reader, data: list[tuple[np.ndarray, str]]) -> None:
    """No cluster may hold the data of two bitmaps, or twice the data of one
    (clusters are aligned, so an overlap is an equal offset)."""
    if not data:
        return
    offsets = np.concatenate([o for o, _ in data])
    owners = np.concatenate([np.full(len(o), k) for k, (o, _) in enumerate(data)])
    order = np.argsort(offsets, kind="stable")
    ordered = offsets[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    if same.size:
        k = int(same[0])
        first, second = data[int(owners[order[k]])][1], data[int(owners[order[k + 1]])][1]
        raise r.error(f"{second}: its data cluster at byte {int(ordered[k])} also holds data of {first}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_table(r: _Reader, table: np.ndarray, label: str, n_bytes: int) -> np.ndarray:
    """Check a bitmap's table entries; ``n_bytes``: the size of its data.
    Returns the offsets of its data clusters."""
    reserved = np.flatnonzero(table & np.uint64(TABLE_RESERVED_MASK))
    if reserved.size:
        i = int(reserved[0])
        raise r.error(f"{label}: bitmap table entry {i} ({int(table[i]):#018x}) has reserved bits set")
    offsets = table & np.uint64(TABLE_OFFSET_MASK)
    both = np.flatnonzero((offsets != 0) & ((table & np.uint64(TABLE_ALL_ONES)) != 0))
    if both.size:
        i = int(both[0])
        raise r.error(f"{label}: bitmap table entry {i} has both a data offset and the all-ones bit")
    cs = r.cluster_size
    unaligned = np.flatnonzero(offsets % np.uint64(cs))
    if unaligned.size:
        i = int(unaligned[0])
        raise r.error(f"{label}: bitmap table entry {i} points at byte {int(offsets[i])}, not cluster-aligned")
    used = offsets != 0
    if used.any():
        low = int(offsets[used].min())
        if low < cs:
            raise r.error(f"{label}: a data cluster at byte {low} overlaps the image header (the first cluster)")
        _data_overlaps(r, offsets[used], label)
        # The bytes of the bitmap each cluster holds must be in the file (the
        # rest of a last cluster may lie past the end, and reads as zeros).
        needed = np.full(len(table), cs, np.uint64)
        needed[-1] = n_bytes - (len(table) - 1) * cs
        past = np.flatnonzero(used & (offsets + needed > np.uint64(r.file_size)))
        if past.size:
            i = int(past[0])
            raise r.error(
                f"{label}: its data cluster {i} at byte {int(offsets[i])} lies past the end of the file "
                f"({r.file_size} bytes)"
            )
    return offsets[used]


def _data_overlaps(r: _Reader, offsets: np.ndarray, label: str) -> None:
    """No data cluster may overlap the header, a table or the directory."""
    regions = sorted(r.regions)
    starts = np.array([s for s, _, _ in regions], np.uint64)
    ends = np.array([e for _, e, _ in regions], np.uint64)
    # Regions do not overlap each other, so the one starting last before a
    # cluster's end is the only one that can overlap it.
    i = np.searchsorted(starts, offsets + np.uint64(r.cluster_size), side="left") - 1
    hit = (i >= 0) & (ends[np.maximum(i, 0)] > offsets)
    if hit.any():
        k = int(np.flatnonzero(hit)[0])
        s, e, what = regions[int(i[k])]
        raise r.error(f"{label}: its data cluster at byte {int(offsets[k])} overlaps {what} (bytes {s}-{e - 1})")
