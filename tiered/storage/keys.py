"""Keys of the stored values: fixed-width big-endian integers, so that LMDB's
byte order is numeric order and one volume's keys are one contiguous range.
"""

from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_CKPT = struct.Struct(">QQ")
_PAGE = struct.Struct(">QcQQ")


def volume_key(vol_id: int) -> bytes:
    return _U64.pack(vol_id)


def checkpoint_key(vol_id: int, gen: int) -> bytes:
    return _CKPT.pack(vol_id, gen)


def checkpoint_key_gen(key: bytes) -> int:
    return _CKPT.unpack(key)[1]


def page_key(vol_id: int, tag: bytes, gen: int, page: int) -> bytes:
    return _PAGE.pack(vol_id, tag, gen, page)


def parse_page_key(key: bytes) -> tuple[bytes, int, int]:
    _, tag, gen, page = _PAGE.unpack(key)
    return tag, gen, page
