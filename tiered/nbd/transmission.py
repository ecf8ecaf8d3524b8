"""The transmission phase of one connection: read requests, run them, reply.

Requests run concurrently (NBD allows replies in any order): the reader
loop reads each request with its payload and hands it to a task, so the
syncs of the in-flight writes of every connection can share one group
commit.  Each reply is written whole between two awaits, so replies never
interleave.  A request the server cannot honour gets an NBD error and the
connection goes on; only a broken framing (wrong request magic) or a
client's NBD_CMD_DISC ends it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from . import protocol as p
from .image import Image, NotFast
from .negotiation import Session

log = logging.getLogger("tiered.nbd")

MAX_IN_FLIGHT = 16  # requests of one connection running at once
MAX_READ_CHUNKS = 64  # data and hole chunks of one READ reply, when it may fragment
_DISCARD_PIECE = 1 << 20


class RequestError(Exception):
    """A request the server refuses: ``code`` is the NBD error sent back."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def nbd_error(exc: BaseException) -> int:
    """The NBD error for an exception raised while serving a request."""
    from ..errors import InvalidArgumentError, NotFoundError, ReadOnlyError, StoreFullError

    if isinstance(exc, RequestError):
        return exc.code
    if isinstance(exc, NotFast):
        return p.ENOTSUP
    if isinstance(exc, (InvalidArgumentError, NotFoundError)):
        return p.EINVAL
    if isinstance(exc, ReadOnlyError):
        return p.EPERM
    if isinstance(exc, StoreFullError):
        return p.ENOSPC
    if isinstance(exc, OSError):
        return {errno.ENOSPC: p.ENOSPC, errno.EDQUOT: p.ENOSPC, errno.EPERM: p.EPERM}.get(exc.errno or 0, p.EIO)
    return p.EIO


class Transmission:
    """Serve one negotiated connection until DISC, EOF, broken framing or :meth:`stop`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        image: Image,
        executor: Executor,
        counters: dict[str, int],
    ) -> None:
        self.reader, self.writer, self.session, self.image = reader, writer, session, image
        self.executor = executor
        self.counters = counters  # the server's, shared by its connections (see Server.stats)
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._reading: asyncio.Task[None] | None = None

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def stop(self) -> None:
        """Stop reading requests; the ones already read still get their replies."""
        if self._reading is not None:
            self._reading.cancel()

    async def run(self) -> None:
        self._reading = asyncio.current_task()
        try:
            await self._read_requests()
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._reading = None
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _read_requests(self) -> None:
        while True:
            magic, request = p.parse_request(await self.reader.readexactly(p.REQUEST_SIZE))
            if magic != p.REQUEST_MAGIC:
                log.warning("request magic %#x is not NBD_REQUEST_MAGIC: closing the connection", magic)
                return
            if request.type == p.CMD_DISC:
                return
            if request.type == p.CMD_BLOCK_STATUS and self._block_status_now(request):
                await self.writer.drain()
                continue
            payload = b""
            if request.type == p.CMD_WRITE:
                if request.length > p.MAX_PAYLOAD:
                    await self._discard(request.length)
                    self._reply_error(request, p.EINVAL, f"write of {request.length} bytes exceeds {p.MAX_PAYLOAD}")
                    await self.writer.drain()
                    continue
                payload = await self.reader.readexactly(request.length)
            await self.slots.acquire()
            task = asyncio.create_task(self._serve(request, payload))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def _discard(self, length: int) -> None:
        while length:
            piece = min(length, _DISCARD_PIECE)
            await self.reader.readexactly(piece)
            length -= piece

    # -- replies ----------------------------------------------------------------

    def _read_reply(self, cookie: int, pieces: list[tuple[int, int, bytes | None]]) -> None:
        last = len(pieces) - 1
        for i, (offset, length, data) in enumerate(pieces):
            if data is None:
                self.writer.write(p.offset_hole_chunk(cookie, offset, length, done=i == last))
            else:
                self.writer.write(p.offset_data_header(cookie, offset, length, done=i == last))
                self.writer.write(data)

    def _structured(self, request: p.Request) -> bool:
        return self.session.structured and request.type in (p.CMD_READ, p.CMD_BLOCK_STATUS)

    def _reply_error(self, request: p.Request, code: int, message: str) -> None:
        if self._structured(request):
            self.writer.write(p.error_chunk(request.cookie, code, message))
        else:
            self.writer.write(p.simple_reply(request.cookie, code))

    async def _serve(self, request: p.Request, payload: bytes) -> None:
        counters = self.counters
        try:
            await self._execute(request, payload)
            counters[p.COMMAND_NAMES[request.type]] += 1
            if request.type == p.CMD_READ:
                counters["bytes_read"] += request.length
            elif request.type == p.CMD_WRITE:
                counters["bytes_written"] += request.length
        except Exception as exc:  # every failure becomes an NBD error, never a crash
            counters["errors"] += 1
            code = nbd_error(exc)
            if code == p.EIO:
                log.exception("request %s failed", request)
            try:
                self._reply_error(request, code, str(exc))
            except Exception:
                return
        try:
            await self.writer.drain()
        except ConnectionError:
            pass

    def _check_range(self, request: p.Request) -> None:
        if request.offset + request.length > self.image.size:
            raise RequestError(
                p.EINVAL,
                f"[{request.offset}, +{request.length}) lies outside the export of {self.image.size} bytes",
            )

    def _check_writable(self) -> None:
        if self.image.readonly:
            raise RequestError(p.EPERM, "the export is read-only")

    async def _execute(self, request: p.Request, payload: bytes) -> None:
        kind, cookie, offset, length = request.type, request.cookie, request.offset, request.length
        fua = bool(request.flags & p.CMD_FLAG_FUA)
        image = self.image
        if request.flags & ~p.CMD_FLAGS_KNOWN or (kind == p.CMD_CACHE and request.flags & ~p.CMD_FLAG_FUA):
            raise RequestError(p.EINVAL, f"unknown flags {request.flags:#x} for command {kind}")
        if kind == p.CMD_READ:
            if length > p.MAX_PAYLOAD:
                # proto.md lets a server reject large reads up front with
                # EOVERFLOW (a structured-reply error); the client retries smaller.
                code = p.EOVERFLOW if self.session.structured else p.EINVAL
                raise RequestError(code, f"read of {length} bytes exceeds {p.MAX_PAYLOAD}")
            self._check_range(request)
            if not self.session.structured:
                data = await self._blocking(image.read, offset, length) if length else b""
                self.writer.write(p.simple_reply(cookie))
                self.writer.write(data)  # not concatenated: that would copy the payload once more
            elif not length:
                self.writer.write(p.chunk_header(p.REPLY_FLAG_DONE, p.REPLY_TYPE_NONE, cookie, 0))
            else:
                # Holes go as OFFSET_HOLE chunks; DF ("don't fragment") allows
                # one content chunk, a hole only where the whole range is one.
                limit = 1 if request.flags & p.CMD_FLAG_DF else MAX_READ_CHUNKS
                self._read_reply(cookie, await self._blocking(image.read_pieces, offset, length, limit))
            return
        if kind == p.CMD_CACHE:
            self._check_range(request)
            await self._blocking(image.cache, offset, length)
            self.writer.write(p.simple_reply(cookie))
            return
        if kind == p.CMD_WRITE:
            self._check_writable()
            self._check_range(request)
            await self._blocking(image.write, offset, payload, fua)
        elif kind == p.CMD_FLUSH:
            if not image.readonly:
                await self._blocking(image.flush)
        elif kind == p.CMD_TRIM:
            self._check_writable()
            self._check_range(request)
            await self._blocking(image.trim, offset, length, fua)
        elif kind == p.CMD_WRITE_ZEROES:
            self._check_writable()
            self._check_range(request)
            may_trim = not request.flags & p.CMD_FLAG_NO_HOLE
            fast = bool(request.flags & p.CMD_FLAG_FAST_ZERO)
            if fast and not image.can_zero_fast(may_trim):
                raise RequestError(p.ENOTSUP, "zeroing here would write zeros (FAST_ZERO)")  # before any mark
            await self._blocking(image.write_zeroes, offset, length, may_trim, fua, fast)
        elif kind == p.CMD_BLOCK_STATUS:
            await self._block_status(request)
            return
        else:
            raise RequestError(p.EINVAL, f"command {kind} is not supported")
        self.writer.write(p.simple_reply(cookie))

    def _block_status_range(self, request: p.Request) -> tuple[int, int]:
        """(length clipped at the export's end, descriptors allowed per context)."""
        if not self.session.structured or not self.session.contexts:
            raise RequestError(p.EINVAL, "no metadata context was selected")
        if request.length == 0:
            raise RequestError(p.EINVAL, "block status of an empty range")
        if request.offset >= self.image.size:
            raise RequestError(p.EINVAL, "block status past the end of the export")
        length = min(request.length, self.image.size - request.offset)
        return length, 1 if request.flags & p.CMD_FLAG_REQ_ONE else p.MAX_EXTENTS

    def _kept_status(self, name: str, offset: int, length: int, limit: int) -> bytes | None:
        if name == p.BASE_ALLOCATION:
            return None
        return self.image.dirty_cached(name[len(p.DIRTY_BITMAP_PREFIX) :], offset, length, limit)

    def _write_status(self, cookie: int, chunks: list[tuple[int, bytes]]) -> None:
        last = len(chunks) - 1
        for i, (context_id, pairs) in enumerate(chunks):
            self.writer.write(p.block_status_chunk(cookie, context_id, pairs, done=i == last))

    def _block_status_now(self, request: p.Request) -> bool:
        """Answer a block status at once, on the reading loop, when every
        selected context has a kept map scan (:meth:`Image.dirty_cached`):
        a map scan's windows then cost no task and no thread hop."""
        if request.flags & ~p.CMD_FLAGS_KNOWN or p.BASE_ALLOCATION in self.session.contexts.values():
            return False  # base:allocation is never kept: no window computed twice
        try:
            length, limit = self._block_status_range(request)
        except RequestError:
            return False  # the error reply goes the usual way
        chunks = []
        for context_id, name in self.session.contexts.items():
            pairs = self._kept_status(name, request.offset, length, limit)
            if pairs is None:
                return False
            chunks.append((context_id, pairs))
        self._write_status(request.cookie, chunks)
        self.counters["block_status"] += 1
        return True

    async def _block_status(self, request: p.Request) -> None:
        length, limit = self._block_status_range(request)
        offset = request.offset
        chunks = []
        for context_id, name in self.session.contexts.items():
            pairs = self._kept_status(name, offset, length, limit)
            if pairs is None and name == p.BASE_ALLOCATION:
                pairs = await self._blocking(self.image.allocation, offset, length, limit)
            elif pairs is None:
                checkpoint = name[len(p.DIRTY_BITMAP_PREFIX) :]
                pairs = await self._blocking(self.image.dirty, checkpoint, offset, length, limit)
            chunks.append((context_id, pairs))
        self._write_status(request.cookie, chunks)
