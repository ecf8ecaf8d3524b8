"""The NBD wire format: constants and struct codecs, no I/O.

Numbers follow the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md) and
QEMU's docs/interop/nbd.rst for the ``qemu:dirty-bitmap:`` contexts.
Every integer on the wire is big-endian.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# -- handshake ----------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
CLIENT_FIXED_NEWSTYLE = 1 << 0  # client flags
CLIENT_NO_ZEROES = 1 << 1

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

# option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

# NBD_REP_INFO types
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# -- transmission ---------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
COMMAND_NAMES = {
    CMD_READ: "read", CMD_WRITE: "write", CMD_DISC: "disc", CMD_FLUSH: "flush", CMD_TRIM: "trim",
    CMD_CACHE: "cache", CMD_WRITE_ZEROES: "write_zeroes", CMD_BLOCK_STATUS: "block_status",
}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4
CMD_FLAGS_KNOWN = (1 << 5) - 1

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# errors of the transmission phase (the NBD values, equal to Linux errno)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

# block status flags
STATE_HOLE = 1 << 0  # base:allocation
STATE_ZERO = 1 << 1
STATE_DIRTY = 1 << 0  # qemu:dirty-bitmap:NAME

BASE_ALLOCATION = "base:allocation"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"

# limits
MAX_PAYLOAD = 32 << 20  # largest READ or WRITE accepted (and announced as the maximum block size)
MAX_EXTENTS = 1 << 20  # descriptors per BLOCK_STATUS chunk
MAX_OPTION_LENGTH = 64 << 10  # option data the handshake reads before refusing
MAX_NAME_LENGTH = 4096
PREFERRED_BLOCK = 4096

# -- codecs ---------------------------------------------------------------------
_HANDSHAKE = struct.Struct(">QQH")
_OPTION_HEADER = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")

OPTION_HEADER_SIZE = _OPTION_HEADER.size
REQUEST_SIZE = REQUEST.size


class Request(NamedTuple):
    flags: int
    type: int
    cookie: int
    offset: int
    length: int


def handshake() -> bytes:
    return _HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def parse_option_header(data: bytes) -> tuple[int, int, int]:
    """(magic, option, length) of an option header."""
    return _OPTION_HEADER.unpack(data)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def export_name_reply(size: int, flags: int, no_zeroes: bool) -> bytes:
    return _EXPORT_NAME_REPLY.pack(size, flags) + (b"" if no_zeroes else bytes(124))


def rep_server(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw


def info_export(size: int, flags: int) -> bytes:
    return struct.pack(">HQH", INFO_EXPORT, size, flags)


def info_name(name: str) -> bytes:
    return struct.pack(">H", INFO_NAME) + name.encode()


def info_description(text: str) -> bytes:
    return struct.pack(">H", INFO_DESCRIPTION) + text.encode()[:4096]


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def meta_context(context_id: int, name: str) -> bytes:
    return struct.pack(">I", context_id) + name.encode()


class MalformedOption(ValueError):
    """Option data that does not parse: answered with NBD_REP_ERR_INVALID."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedOption("option data is shorter than its fields say")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> str:
        length = self.u32()
        if length > MAX_NAME_LENGTH:
            raise MalformedOption(f"string of {length} bytes is too long")
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            raise MalformedOption("string is not UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise MalformedOption("option data is longer than its fields say")


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """(export name, info types requested) of NBD_OPT_INFO and NBD_OPT_GO."""
    r = _Reader(data)
    name = r.string()
    count = r.u16()
    infos = [r.u16() for _ in range(count)]
    r.end()
    return name, infos


def parse_meta_context_request(data: bytes) -> tuple[str, list[str]]:
    """(export name, queries) of NBD_OPT_LIST_META_CONTEXT and _SET_."""
    r = _Reader(data)
    name = r.string()
    count = r.u32()
    queries = [r.string() for _ in range(count)]
    r.end()
    return name, queries


def parse_request(data: bytes) -> tuple[int, Request]:
    magic, flags, kind, cookie, offset, length = REQUEST.unpack(data)
    return magic, Request(flags, kind, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(flags: int, kind: int, cookie: int, length: int) -> bytes:
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, kind, cookie, length)


def offset_data_header(cookie: int, offset: int, length: int, done: bool = True) -> bytes:
    """Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk; ``length`` bytes of data follow."""
    return chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_OFFSET_DATA, cookie, 8 + length) + struct.pack(
        ">Q", offset
    )


def offset_hole_chunk(cookie: int, offset: int, length: int, done: bool) -> bytes:
    """An NBD_REPLY_TYPE_OFFSET_HOLE chunk: ``length`` bytes at ``offset`` read as zeros."""
    return chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_OFFSET_HOLE, cookie, 12) + struct.pack(
        ">QI", offset, length
    )


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    raw = message.encode()[:4096]
    payload = struct.pack(">IH", error, len(raw)) + raw
    return chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, len(payload)) + payload


def block_status_chunk(cookie: int, context_id: int, descriptors: bytes, done: bool) -> bytes:
    """An NBD_REPLY_TYPE_BLOCK_STATUS chunk; ``descriptors`` is packed (u32 length, u32 flags) pairs."""
    return (
        chunk_header(REPLY_FLAG_DONE if done else 0, REPLY_TYPE_BLOCK_STATUS, cookie, 4 + len(descriptors))
        + struct.pack(">I", context_id)
        + descriptors
    )
