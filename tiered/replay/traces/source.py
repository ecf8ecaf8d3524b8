"""The bytes of a block trace: a file, a pipe or stdin, plain or compressed.

:func:`open_input` returns a :class:`TraceInput` whose ``text`` is the
trace's text, decompressed if need be, read as a stream in constant memory.
Compression is told from the first bytes (magic numbers), not the file name,
so a compressed pipe is read like a compressed file:

=========  ==================  =============================================
gzip       ``1f 8b``           :mod:`gzip` (RFC 1952; several members too)
xz         ``fd 37 7a 58 5a``  :mod:`lzma` (the .xz container)
zstd       ``28 b5 2f fd``     the ``zstandard`` package (RFC 8878; several
                               frames too)
=========  ==================  =============================================

The MSR Cambridge traces, for one, are published as ``.csv.gz``.

Looking at the start of a stream (for the magic number, then for the first
lines that tell the trace format) must not lose it: a pipe cannot be read
twice.  So what is looked at is kept and given back before the rest of the
stream: :meth:`TraceInput.peek_lines` reads ahead, and ``text`` then starts
from the first byte again.

A decompressor's complaint (a corrupt block, a stream cut short) becomes
:class:`CorruptInput`; the trace reader adds the file name and line.  The
end of a compressed stream is checked: a truncated file is an error, not a
silently shorter trace.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import zlib
from collections.abc import Callable

STDIN = "-"
STDIN_NAME = "<stdin>"
CHUNK = 1 << 16
# How far peek_lines may read ahead looking for a line that tells the format.
PEEK_LIMIT = 1 << 20

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_MAGIC_LEN = max(len(m) for m, _ in _MAGIC)


class CorruptInput(Exception):
    """Compressed data that does not decompress; the reader names file and line."""

    line = 0  # set when the fault is met while looking ahead


class _Source(io.RawIOBase):
    """A raw stream over ``read(n)`` (up to ``n`` bytes, ``b""`` at the end)
    that can look ahead: what :meth:`peek` read comes out first, then the
    rest, so looking loses nothing."""

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None]) -> None:
        super().__init__()
        self._read = read
        self._close = close
        self._head = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def peek(self, grow: Callable[[bytes], bool], limit: int) -> bytes:
        """Read ahead until ``grow(ahead)`` is False, the end, or ``limit``
        bytes; return what was read ahead, which is read again afterwards."""
        ahead = self._head
        while len(ahead) < limit and grow(ahead):
            data = self._read(min(CHUNK, limit - len(ahead)))
            if not data:
                break
            ahead += data
        self._head = ahead
        return ahead

    def close(self) -> None:
        if not self.closed:
            self._close()
        super().close()


class _Zstd:
    """zstd frames decompressed chunk by chunk, checking the last one ends.

    The ``zstandard`` package's ``stream_reader`` returns a truncated frame's
    bytes without complaint; ``decompressobj`` tells whether a frame ended.
    Compressed bytes go in by small pieces, so that what one piece inflates
    to stays small.
    """

    PIECE = 1 << 13

    def __init__(self, source: _Source) -> None:
        import zstandard

        self._source = source
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._frame = self._new()
        self._started = False  # bytes of the current frame have been fed
        self._out = memoryview(b"")

    def read(self, n: int) -> bytes:
        while not self._out:
            data = self._source.read(self.PIECE)
            if not data:
                if self._started:
                    raise EOFError("the stream ends inside a zstd frame")
                return b""
            out = b""
            while data:
                self._started = True
                out += self._frame.decompress(data)
                if not self._frame.eof:
                    break
                # A frame ended: the next one (concatenated frames) starts
                # with the bytes this one did not use.
                data = self._frame.unused_data
                self._frame, self._started = self._new(), False
            self._out = memoryview(out)
        out, self._out = self._out[:n], self._out[n:]
        return bytes(out)


def _decompressor(kind: str, source: _Source) -> tuple[Callable[[int], bytes], tuple[type[BaseException], ...]]:
    """(read function, the exceptions meaning corrupt data) for ``kind``."""
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=source, mode="rb").read, (gzip.BadGzipFile, EOFError, zlib.error)
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(source).read, (lzma.LZMAError, EOFError)
    import zstandard

    return _Zstd(source).read, (zstandard.ZstdError, EOFError)


class TraceInput:
    """One opened trace: ``name`` for messages, ``compression`` (None,
    ``"gzip"``, ``"xz"`` or ``"zstd"``), ``rereadable`` (a regular file,
    which can be opened again; a pipe or terminal cannot) and ``text``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path == STDIN:
            self.name = STDIN_NAME
            raw = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
        else:
            self.name = self.path
            raw = open(self.path, "rb", buffering=0)
        try:
            # stdin is never opened again by name, even when it is a file.
            self.rereadable = self.path != STDIN and stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
            source = _Source(raw.read, raw.close)
            magic = source.peek(lambda ahead: len(ahead) < _MAGIC_LEN, _MAGIC_LEN)
            self.compression = next((kind for m, kind in _MAGIC if magic.startswith(m)), None)
            if self.compression is not None:
                read, errors = _decompressor(self.compression, source)
                source = _Source(self._checked(read, errors), source.close)
        except BaseException:
            raw.close()
            raise
        self._raw = raw
        self._source = source
        self._text: io.TextIOWrapper | None = None

    @property
    def text(self) -> io.TextIOWrapper:
        """The trace's text, from its first byte, decoded as UTF-8 (an
        undecodable byte becomes U+FFFD, a leading byte order mark is
        dropped), with universal newlines."""
        if self._text is None:
            if self.rereadable and self.compression is None:
                # A plain file: read it directly from the start, what was
                # looked at included, without the copy through _Source.
                self._raw.seek(0)
                stream: io.RawIOBase = self._raw
            else:
                stream = self._source
            self._text = io.TextIOWrapper(
                io.BufferedReader(stream, buffer_size=CHUNK), encoding="utf-8-sig", errors="replace"
            )
        return self._text

    def _checked(
        self, read: Callable[[int], bytes], errors: tuple[type[BaseException], ...]
    ) -> Callable[[int], bytes]:
        what = self.compression

        def checked(n: int) -> bytes:
            try:
                return read(n)
            except errors as exc:
                raise CorruptInput(f"the {what} data is truncated or corrupt ({exc})") from None

        return checked

    def peek_lines(self, enough: Callable[[list[str]], bool]) -> list[str]:
        """The first lines, read ahead until ``enough(lines)`` holds (or the
        end, or :data:`PEEK_LIMIT` bytes), without consuming them: ``text``
        still starts at the first byte.  The last line may be cut short."""

        seen = b""

        def grow(ahead: bytes) -> bool:
            nonlocal seen
            seen = ahead
            return not enough(_lines(ahead))

        try:
            return _lines(self._source.peek(grow, PEEK_LIMIT))
        except CorruptInput as exc:
            exc.line = seen.count(b"\n") + 1
            raise

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        self._source.close()

    def __enter__(self) -> TraceInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(data: bytes) -> list[str]:
    return data.decode("utf-8-sig", errors="replace").splitlines(keepends=True)


def open_input(path: str | os.PathLike[str]) -> TraceInput:
    """Open ``path`` (``"-"``: stdin) for reading as text, decompressing it
    when its first bytes are a gzip, xz or zstd magic number."""
    return TraceInput(path)
