"""Keys of the stored values: fixed-width big-endian integers, so that LMDB's
byte order is numeric order and one volume's keys are one contiguous range.

Keys carry meaning (volume id, generation, tag, page) but no checksum of
their own: format 2 folds the key into the CRC of its value
(:mod:`tiered.storage.codec`), so a key read back with a flipped bit fails
its value's check.  Each database's keys have their own length (8, 16, 25
bytes; ``meta`` keys are names), so a key also names its database.  A key
whose bit flips moves its value out of reach rather than into a wrong
place, so the volume record also holds what its keys must be: the number
of its checkpoints and a digest of its page keys (:func:`key_digest`),
checked when the volume opens.  The parsers here check the length and the
volume id of every key they are handed, and raise ``CorruptionError``
rather than ``struct.error``.
"""

from __future__ import annotations

import hashlib
import struct

from ..errors import CorruptionError

_U64 = struct.Struct(">Q")
_CKPT = struct.Struct(">QQ")
_PAGE = struct.Struct(">QcQQ")

VOLUME_KEY_SIZE = _U64.size
CHECKPOINT_KEY_SIZE = _CKPT.size
PAGE_KEY_SIZE = _PAGE.size


def volume_key(vol_id: int) -> bytes:
    return _U64.pack(vol_id)


def parse_volume_key(key: bytes) -> int:
    """The volume id of a ``volumes`` key."""
    if len(key) != VOLUME_KEY_SIZE:
        raise CorruptionError(f"volume key {bytes(key).hex()} is {len(key)} bytes, not {VOLUME_KEY_SIZE}")
    return _U64.unpack(key)[0]


def checkpoint_key(vol_id: int, gen: int) -> bytes:
    return _CKPT.pack(vol_id, gen)


def checkpoint_key_gen(key: bytes, vol_id: int) -> int:
    """The generation of a ``checkpoints`` key of volume ``vol_id``."""
    if len(key) != CHECKPOINT_KEY_SIZE:
        raise CorruptionError(
            f"volume {vol_id}: checkpoint key {bytes(key).hex()} is {len(key)} bytes, not {CHECKPOINT_KEY_SIZE}"
        )
    owner, gen = _CKPT.unpack(key)
    if owner != vol_id:
        raise CorruptionError(f"volume {vol_id}: checkpoint key {bytes(key).hex()} names volume {owner}")
    return gen


def page_key(vol_id: int, tag: bytes, gen: int, page: int) -> bytes:
    return _PAGE.pack(vol_id, tag, gen, page)


def parse_page_key(key: bytes, vol_id: int) -> tuple[bytes, int, int]:
    """(tag, generation, page) of a ``pages`` key of volume ``vol_id``."""
    if len(key) != PAGE_KEY_SIZE:
        raise CorruptionError(
            f"volume {vol_id}: page key {bytes(key).hex()} is {len(key)} bytes, not {PAGE_KEY_SIZE}"
        )
    owner, tag, gen, page = _PAGE.unpack(key)
    if owner != vol_id:
        raise CorruptionError(f"volume {vol_id}: page key {bytes(key).hex()} names volume {owner}")
    return tag, gen, page


def key_digest(key: bytes) -> int:
    """A 64-bit hash of one key; XORed over a set of keys it gives a digest
    that a write updates per key added or removed (XOR is its own inverse)
    and that any changed, missing or extra key alters."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
