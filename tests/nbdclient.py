"""A small asyncio NBD client for tests: fixed newstyle handshake with
STRUCTURED_REPLY and GO, then any number of requests in flight, their
replies (simple or structured, in any order) matched by cookie.

    c = await Client.connect(sock, contexts=["qemu:dirty-bitmap:cp"])
    await asyncio.gather(c.write(0, b"x" * 4096, fua=True), c.flush())
    data = await c.read(0, 4096)
    await c.disconnect()

A request the server answers with an error raises :class:`NBDError`; a
request whose connection closed before its reply raises ``ConnectionError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import struct

from tiered.nbd import protocol as p

_COMMANDS = {
    p.CMD_READ: "READ", p.CMD_WRITE: "WRITE", p.CMD_DISC: "DISC", p.CMD_FLUSH: "FLUSH",
    p.CMD_TRIM: "TRIM", p.CMD_WRITE_ZEROES: "WRITE_ZEROES", p.CMD_BLOCK_STATUS: "BLOCK_STATUS",
}


class NBDError(Exception):
    """An error reply: ``code`` is the NBD error (errno value)."""

    def __init__(self, code: int, kind: int, offset: int, length: int, message: str = "") -> None:
        name = _COMMANDS.get(kind, str(kind))
        super().__init__(f"{name} [{offset}, +{length}) failed with error {code}" + (f": {message}" if message else ""))
        self.code = code


class HandshakeError(Exception):
    """The server refused or broke the handshake."""


@dataclasses.dataclass
class _Pending:
    kind: int
    offset: int
    length: int
    future: asyncio.Future
    data: bytearray | None = None  # READ: the bytes so far
    status: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    error: NBDError | None = None


class Client:
    """One negotiated connection; build it with :meth:`connect`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.size = 0
        self.flags = 0
        self.structured = False
        self.contexts: dict[int, str] = {}  # context id -> name
        self._cookies = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._replies: asyncio.Task[None] | None = None
        self._send = asyncio.Lock()
        self.closed = asyncio.get_running_loop().create_future()  # done when the connection ends

    # -- handshake ---------------------------------------------------------------

    @classmethod
    async def connect(
        cls, path: str, export: str = "vda", *, structured: bool = True, contexts: list[str] | None = None
    ) -> "Client":
        reader, writer = await asyncio.open_unix_connection(path)
        self = cls(reader, writer)
        try:
            await self._negotiate(export, structured, contexts or [])
        except BaseException:
            writer.close()
            raise
        self._replies = asyncio.create_task(self._read_replies())
        return self

    async def _recv(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise HandshakeError(f"the server closed the connection after {len(exc.partial)} of {n} bytes") from None

    async def _option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        self.writer.write(struct.pack(">QII", p.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, length = struct.unpack(">QIII", await self._recv(20))
            if (magic, opt) != (p.OPTION_REPLY_MAGIC, option):
                raise HandshakeError(f"bad option reply {magic:#x} for option {opt} (sent {option})")
            replies.append((kind, await self._recv(length)))
            if kind >= 1 << 31:
                raise HandshakeError(f"option {option} refused: {kind:#x} {replies[-1][1]!r}")
            if kind == p.REP_ACK:
                return replies

    async def _negotiate(self, export: str, structured: bool, contexts: list[str]) -> None:
        magic, opt, _flags = struct.unpack(">QQH", await self._recv(18))
        if (magic, opt) != (p.NBDMAGIC, p.IHAVEOPT):
            raise HandshakeError(f"not a fixed newstyle greeting: {magic:#x} {opt:#x}")
        self.writer.write(struct.pack(">I", p.CLIENT_FIXED_NEWSTYLE | p.CLIENT_NO_ZEROES))
        name = export.encode()
        if structured:
            await self._option(p.OPT_STRUCTURED_REPLY)
            self.structured = True
        if contexts:
            data = struct.pack(">I", len(name)) + name + struct.pack(">I", len(contexts))
            for context in contexts:
                data += struct.pack(">I", len(context)) + context.encode()
            for kind, reply in await self._option(p.OPT_SET_META_CONTEXT, data):
                if kind == p.REP_META_CONTEXT:
                    self.contexts[struct.unpack(">I", reply[:4])[0]] = reply[4:].decode()
        for kind, reply in await self._option(p.OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)):
            if kind == p.REP_INFO and struct.unpack(">H", reply[:2])[0] == p.INFO_EXPORT:
                _, self.size, self.flags = struct.unpack(">HQH", reply)

    # -- transmission ------------------------------------------------------------

    async def _read_replies(self) -> None:
        error: BaseException = ConnectionError("the server closed the connection")
        try:
            while True:
                (magic,) = struct.unpack(">I", await self.reader.readexactly(4))
                if magic == p.SIMPLE_REPLY_MAGIC:
                    code, cookie = struct.unpack(">IQ", await self.reader.readexactly(12))
                    req = self._take(cookie)
                    if code:
                        req.error = NBDError(code, req.kind, req.offset, req.length)
                    elif req.kind == p.CMD_READ:
                        req.data = bytearray(await self.reader.readexactly(req.length))
                    self._finish(cookie, req)
                elif magic == p.STRUCTURED_REPLY_MAGIC:
                    flags, kind, cookie, length = struct.unpack(">HHQI", await self.reader.readexactly(16))
                    self._chunk(self._pending_of(cookie), kind, await self.reader.readexactly(length))
                    if flags & p.REPLY_FLAG_DONE:
                        self._finish(cookie, self._take(cookie))
                else:
                    raise ConnectionError(f"reply magic {magic:#x} is neither simple nor structured")
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            error = ConnectionError("the client closed the connection")
        except Exception as exc:  # ConnectionError, or a reply that breaks the protocol
            error = exc
        finally:
            for req in self._pending.values():
                if not req.future.done():
                    req.future.set_exception(
                        ConnectionError(f"{_COMMANDS.get(req.kind)} [{req.offset}, +{req.length}): {error}")
                    )
            self._pending.clear()
            if not self.closed.done():
                self.closed.set_result(str(error))

    def _pending_of(self, cookie: int) -> _Pending:
        if cookie not in self._pending:
            raise ConnectionError(f"a reply for cookie {cookie}, which no request in flight has")
        return self._pending[cookie]

    def _take(self, cookie: int) -> _Pending:
        req = self._pending_of(cookie)
        del self._pending[cookie]
        return req

    def _chunk(self, req: _Pending, kind: int, payload: bytes) -> None:
        if kind == p.REPLY_TYPE_OFFSET_DATA or kind == p.REPLY_TYPE_OFFSET_HOLE:
            (offset,) = struct.unpack(">Q", payload[:8])
            n = len(payload) - 8 if kind == p.REPLY_TYPE_OFFSET_DATA else struct.unpack(">I", payload[8:12])[0]
            if req.kind != p.CMD_READ or not req.offset <= offset <= offset + n <= req.offset + req.length:
                raise ConnectionError(f"a data chunk [{offset}, +{n}) outside its request [{req.offset}, +{req.length})")
            if req.data is None:
                req.data = bytearray(req.length)
            if kind == p.REPLY_TYPE_OFFSET_DATA:
                req.data[offset - req.offset : offset - req.offset + n] = payload[8:]
        elif kind == p.REPLY_TYPE_BLOCK_STATUS:
            (cid,) = struct.unpack(">I", payload[:4])
            req.status[self.contexts.get(cid, str(cid))] = list(struct.iter_unpack(">II", payload[4:]))
        elif kind in (p.REPLY_TYPE_ERROR, p.REPLY_TYPE_ERROR_OFFSET):
            code, n = struct.unpack(">IH", payload[:6])
            req.error = NBDError(code, req.kind, req.offset, req.length, payload[6 : 6 + n].decode(errors="replace"))
        elif kind != p.REPLY_TYPE_NONE:
            raise ConnectionError(f"unknown structured reply type {kind}")

    @staticmethod
    def _finish(cookie: int, req: _Pending) -> None:
        if req.future.done():
            return  # its caller was cancelled
        if req.error is not None:
            req.future.set_exception(req.error)
        elif req.kind == p.CMD_READ:
            req.future.set_result(bytes(req.data if req.data is not None else bytearray(req.length)))
        elif req.kind == p.CMD_BLOCK_STATUS:
            req.future.set_result(req.status)
        else:
            req.future.set_result(None)

    async def request(self, kind: int, offset: int = 0, length: int = 0, flags: int = 0, data: bytes = b""):
        """Send one request and wait for its reply (other requests may be sent meanwhile)."""
        if self.closed.done():
            raise ConnectionError(f"{_COMMANDS.get(kind)} [{offset}, +{length}): the connection is closed")
        cookie = next(self._cookies)
        future = asyncio.get_running_loop().create_future()
        self._pending[cookie] = _Pending(kind, offset, length, future)
        try:
            async with self._send:  # one request's bytes at a time
                self.writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, flags, kind, cookie, offset, length) + data)
                await self.writer.drain()
        except BaseException:
            self._pending.pop(cookie, None)
            future.cancel()
            raise
        return await future

    async def read(self, offset: int, length: int) -> bytes:
        return await self.request(p.CMD_READ, offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self.request(p.CMD_WRITE, offset, len(data), p.CMD_FLAG_FUA if fua else 0, data)

    async def flush(self) -> None:
        await self.request(p.CMD_FLUSH)

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        await self.request(p.CMD_TRIM, offset, length, p.CMD_FLAG_FUA if fua else 0)

    async def write_zeroes(self, offset: int, length: int, fua: bool = False, no_hole: bool = False) -> None:
        flags = (p.CMD_FLAG_FUA if fua else 0) | (p.CMD_FLAG_NO_HOLE if no_hole else 0)
        await self.request(p.CMD_WRITE_ZEROES, offset, length, flags)

    async def block_status(self, offset: int, length: int) -> dict[str, list[tuple[int, int]]]:
        """Context name -> (length, flags) descriptors."""
        return await self.request(p.CMD_BLOCK_STATUS, offset, length)

    async def disconnect(self) -> None:
        """NBD_CMD_DISC, then wait until the server closes the connection."""
        if not self.closed.done():
            async with self._send:
                self.writer.write(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
                try:
                    await self.writer.drain()
                except ConnectionError:
                    pass
            await asyncio.wait_for(asyncio.shield(self.closed), 30)
        self.close()

    def close(self) -> None:
        """Drop the connection at once (requests in flight fail)."""
        self.writer.close()
        if self._replies is not None and not self._replies.done():
            self._replies.cancel()
