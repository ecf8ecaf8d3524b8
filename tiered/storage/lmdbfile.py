"""A look at an LMDB data file with plain reads, before LMDB maps it.

LMDB maps ``data.mdb`` into memory and trusts its meta pages: if the file is
shorter than the pages they claim (a truncated copy, a full disk during a
copy), touching the missing pages kills the process with SIGBUS, which no
``try`` can catch.  So the two meta pages are read and checked here first.

A meta page is a page header (16 bytes: page number, pad, flags, ...)
followed by ``MDB_meta``: magic, version, address, map size, the free-list
and main ``MDB_db`` records (48 bytes each; the free-list record's first
field holds the page size), the last used page number and the transaction
id.  LMDB uses the meta page with the higher transaction id.
"""

from __future__ import annotations

import os
import struct
import time

from ..errors import CorruptionError, StorageError

DATA_FILE = "data.mdb"
MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_META = 0x08
# Offsets inside a meta page (64-bit LMDB 0.9 layout).
_FLAGS = struct.Struct("<H")  # at 10
_HEAD = struct.Struct("<II")  # magic, version at 16
_PSIZE = struct.Struct("<I")  # free-list md_pad at 40
_TAIL = struct.Struct("<QQ")  # last page number, txnid at 136
# An MDB_db record: md_pad, md_flags, md_depth, then branch, leaf and
# overflow page counts, entries and the root page number.
_DB = struct.Struct("<IHHQQQQQ")
_FREE_DB, _MAIN_DB = 40, 88  # offsets of the free-list and main records
MDB_INTEGERKEY = 0x08
P_INVALID = (1 << 64) - 1
META_BYTES = 152
MIN_PSIZE, MAX_PSIZE = 512, 1 << 16


def _meta(block: bytes, where: str) -> tuple[int, int, int]:
    """(page size, last page number, txnid) of one meta page, or CorruptionError."""
    magic, version = _HEAD.unpack_from(block, 16)
    (flags,) = _FLAGS.unpack_from(block, 10)
    if magic != MAGIC or not flags & P_META:
        raise CorruptionError(f"{where} is not an LMDB meta page")
    if version != DATA_VERSION:
        raise CorruptionError(f"{where} has LMDB data version {version}, this LMDB reads {DATA_VERSION}")
    (psize,) = _PSIZE.unpack_from(block, 40)
    last, txnid = _TAIL.unpack_from(block, 136)
    # LMDB trusts the flags of its two core databases: a free list that
    # claims MDB_DUPSORT fails an assertion inside LMDB (the process aborts)
    # at the first write.  LMDB always writes the free list as
    # MDB_INTEGERKEY, and tiered's main database (the names of its four
    # databases) has no flags; a root page is a used page, or none.
    for name, offset, flags in (("free-list", _FREE_DB, MDB_INTEGERKEY), ("main", _MAIN_DB, 0)):
        _, got, _, _, _, _, _, root = _DB.unpack_from(block, offset)
        if got != flags:
            raise CorruptionError(f"{where} gives the {name} database flags {got:#x}, not {flags:#x}")
        if root != P_INVALID and root > last:
            raise CorruptionError(f"{where} puts the {name} database's root at page {root}, past its last page {last}")
    return psize, last, txnid


def check_data_file(path: str, attempts: int = 3) -> bool:
    """Check the LMDB data file in directory ``path`` against its meta pages.

    Returns False if there is no data file (nothing to check), True if it
    is whole.  Raises CorruptionError if it is shorter than its meta pages
    say or its meta pages are damaged, StorageError if it cannot be read.

    A writer may commit while this reads (a reader opening beside a
    running writer): a meta page caught mid-write looks damaged for an
    instant, so a failed check is read again, and only damage that stays
    is reported.
    """
    for attempt in range(attempts):
        try:
            return _check_once(path)
        except CorruptionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def _check_once(path: str) -> bool:
    file = os.path.join(path, DATA_FILE)
    try:
        with open(file, "rb") as f:
            first = f.read(META_BYTES)
            if len(first) < META_BYTES:
                raise CorruptionError(
                    f"{file!r} is {os.fstat(f.fileno()).st_size} bytes, too short for LMDB's meta pages: "
                    "the file is truncated"
                )
            psize, _, _ = _meta(first, f"{file!r} page 0")
            if not MIN_PSIZE <= psize <= MAX_PSIZE or psize & (psize - 1):
                raise CorruptionError(f"{file!r} claims a page size of {psize} bytes")
            f.seek(psize)
            second = f.read(META_BYTES)
            if len(second) < META_BYTES:
                raise CorruptionError(
                    f"{file!r} is {os.fstat(f.fileno()).st_size} bytes, too short for LMDB's second meta "
                    "page: the file is truncated"
                )
            # After the meta pages: a writer writes a commit's pages before
            # its meta page, so the size seen now covers any meta read above.
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot read {file!r}: {exc.strerror or exc}") from None
    metas = [_meta(first, f"{file!r} page 0"), _meta(second, f"{file!r} page 1")]
    _, last, _ = max(metas, key=lambda m: m[2])
    need = (last + 1) * psize
    if size < need:
        raise CorruptionError(
            f"{file!r} is {size} bytes but its last committed page ends at byte {need}: "
            "the file is truncated (restore it from a copy)"
        )
    return True
