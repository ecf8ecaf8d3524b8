"""The file a user hands to dump or load: a path or a binary file object.

A dump written to a path goes to a temporary file in the same directory
that is fsynced and renamed over the path once the stream is complete, so a
failed dump leaves no partial file and an older dump of that name intact.
A file object is written as it is (the caller owns it; nothing is closed).

An I/O error of the user's file, a path or a file object, is raised as
:class:`~tiered.errors.StorageError` naming the file, with the original
errno; ``BrokenPipeError`` (a reader such as ``head`` went away) is raised
as it is.  Anything that is neither a path nor a binary file object is an
:class:`~tiered.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, BinaryIO, Iterator

from ..errors import InvalidArgumentError, StorageError


def _describe(file: Any) -> str:
    name = getattr(file, "name", None)
    return repr(name) if isinstance(name, (str, bytes)) else f"the {type(file).__name__} given"


def _path(file: Any) -> str | None:
    """The path ``file`` names, or None for a file object."""
    if isinstance(file, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(file))
        if not path:
            raise InvalidArgumentError("dump file path must not be empty")
        return path
    return None


def _check_binary(file: Any, method: str) -> None:
    if isinstance(file, io.TextIOBase) or not callable(getattr(file, method, None)):
        raise InvalidArgumentError(
            f"expected a path or a binary file object with {method}(), got {type(file).__name__}"
            + (" (a text stream: pass its .buffer)" if isinstance(file, io.TextIOBase) else "")
        )


def io_error(exc: OSError, doing: str, what: str) -> BaseException:
    if isinstance(exc, BrokenPipeError):
        return exc
    failed = StorageError(f"cannot {doing} dump file {what}: {exc.strerror or exc}")
    failed.errno = exc.errno
    failed.filename = getattr(exc, "filename", None)
    return failed


class Output:
    """A binary writer that reports I/O errors as StorageError."""

    def __init__(self, raw: BinaryIO, what: str) -> None:
        self._raw = raw
        self.what = what

    def write(self, data: bytes) -> None:
        try:
            self._raw.write(data)
        except OSError as exc:
            raise io_error(exc, "write", self.what) from None

    def flush(self) -> None:
        flush = getattr(self._raw, "flush", None)  # write() is all a file object needs
        if flush is None:
            return
        try:
            flush()
        except OSError as exc:
            raise io_error(exc, "write", self.what) from None


@contextlib.contextmanager
def open_output(file: Any) -> Iterator[Output]:
    """A writer for ``file``; for a path, the file appears only if the
    block inside completes."""
    path = _path(file)
    if path is None:
        _check_binary(file, "write")
        out = Output(file, _describe(file))
        yield out
        out.flush()
        return
    what = repr(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise io_error(exc, "create", what) from None
    try:
        with os.fdopen(fd, "wb") as raw:
            out = Output(raw, what)
            yield out
            try:
                raw.flush()
                os.fsync(raw.fileno())
            except OSError as exc:
                raise io_error(exc, "write", what) from None
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise io_error(exc, "create", what) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Source:
    """A binary reader that can start again from its first byte.

    A load runs in one LMDB write transaction, which is run again from
    scratch if the map must grow, so the stream must be readable twice.  A
    seekable file is rewound; anything else (a pipe, stdin) is copied into
    an unnamed temporary file as it is read, and read back from there.
    """

    def __init__(self, raw: BinaryIO, what: str) -> None:
        self._raw = raw
        self.what = what
        self._start: int | None = None
        try:
            if raw.seekable():
                self._start = raw.tell()
        except (OSError, AttributeError, ValueError):
            self._start = None
        self._spool: BinaryIO | None = None
        self._spooled = 0  # bytes in the spool
        self._pos = 0  # position of the reader in the stream

    def rewind(self) -> None:
        try:
            if self._start is not None:
                self._raw.seek(self._start)
            elif self._spool is not None:
                self._spool.seek(0)
        except OSError as exc:
            raise io_error(exc, "read", self.what) from None
        self._pos = 0

    def read(self, n: int) -> bytes:
        try:
            if self._start is not None:
                return self._raw.read(n)
            if self._spool is None:
                self._spool = tempfile.TemporaryFile()
            if self._pos < self._spooled:
                data = self._spool.read(min(n, self._spooled - self._pos))
            else:
                data = self._raw.read(n)
                if data:
                    self._spool.write(data)
                    self._spooled += len(data)
            self._pos += len(data or b"")
            return data or b""
        except OSError as exc:
            raise io_error(exc, "read", self.what) from None

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


@contextlib.contextmanager
def open_input(file: Any) -> Iterator[Source]:
    """A rewindable reader of ``file`` (a path or a binary file object)."""
    path = _path(file)
    if path is None:
        _check_binary(file, "read")
        source = Source(file, _describe(file))
        try:
            yield source
        finally:
            source.close()
        return
    try:
        raw = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise io_error(exc, "open", repr(path)) from None
    with raw:
        source = Source(raw, repr(path))
        try:
            yield source
        finally:
            source.close()
