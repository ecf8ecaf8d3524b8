"""The asyncio NBD server: one export (a volume and its image file), shared
by up to ``max_connections`` clients over a Unix socket or TCP."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import protocol as p
from .control import Control
from .image import Image
from .negotiation import ExportInfo, HandshakeFailed, negotiate
from .transmission import Transmission

if TYPE_CHECKING:
    from ..volume import Checkpoint, Volume

log = logging.getLogger("tiered.nbd")

MAX_CONNECTIONS = 64


class Server:
    """Serve ``volume`` with the data of ``image_path`` (a file of exactly the volume's size)."""

    def __init__(
        self, volume: "Volume", image_path: str, *, readonly: bool = False, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.volume = volume
        self.image = Image(image_path, volume, readonly)
        self.readonly = readonly
        self.max_connections = max_connections
        flags = (
            p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_TRIM
            | p.TF_SEND_WRITE_ZEROES | p.TF_SEND_FAST_ZERO | p.TF_SEND_CACHE | p.TF_CAN_MULTI_CONN
        )
        if readonly:
            flags |= p.TF_READ_ONLY
        description = (
            f"tiered volume {volume.name}: {volume.strategy.mode} history, {volume.durability} durability, "
            f"{volume.granularity}-byte chunks"
        )
        self.export = ExportInfo(volume.name, volume.size, flags, self._contexts, description)
        # One pool for every connection: concurrent syncs share a group commit.
        self.executor = ThreadPoolExecutor(max_workers=max_connections + 8, thread_name_prefix="nbd")
        # Control requests get their own thread: they never queue behind writes.
        self.control_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbd-control")
        self._handlers: set[asyncio.Task[None]] = set()  # NBD connections, counted against the limit
        self._controls: set[asyncio.Task[None]] = set()
        # Every key exists from the start: the control thread copies the
        # dict while the event loop bumps values, never adding keys.
        self.counters = dict.fromkeys(
            [*(name for code, name in p.COMMAND_NAMES.items() if code != p.CMD_DISC),
             "bytes_read", "bytes_written", "errors", "connections_total", "connections_refused"],
            0,
        )
        self._servers: list[asyncio.AbstractServer] = []
        self._unlink: list[str] = []
        self.addresses: list[str] = []

    def checkpoint(self, name: str) -> "Checkpoint":
        """Create a checkpoint of the served volume as a consistency point:
        writes already marked reach the image first, writes arriving
        meanwhile wait (blocking; call it from a thread, not the event loop).
        Raises what ``Volume.checkpoint`` raises."""
        return self.image.checkpoint(name)

    def stats(self) -> dict[str, int]:
        """What the server has served since it started: ``connections`` (now),
        ``connections_total``, ``connections_refused`` (over the limit),
        requests completed per command (``read``, ``write``, ``flush``,
        ``trim``, ``cache``, ``write_zeroes``, ``block_status``),
        ``errors`` (requests answered with an NBD error), ``bytes_read``,
        ``bytes_written``."""
        return {"connections": len(self._handlers), **self.counters}

    def _contexts(self) -> list[str]:
        return [p.BASE_ALLOCATION] + [p.DIRTY_BITMAP_PREFIX + cp.name for cp in self.volume.checkpoints()]

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run
        except FileNotFoundError:
            pass

    async def listen_unix(self, path: str) -> str:
        self._remove_stale(path)
        self._servers.append(await asyncio.start_unix_server(self._handle, path=path))
        self._unlink.append(path)
        uri = f"nbd+unix:///{self.volume.name}?socket={path}"
        self.addresses.append(uri)
        return uri

    async def listen_tcp(self, host: str, port: int) -> str:
        server = await asyncio.start_server(self._handle, host=host, port=port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        uri = f"nbd://{shown}:{bound[1]}/{self.volume.name}"
        self.addresses.append(uri)
        return uri

    async def listen_control(self, path: str) -> None:
        """Serve the control socket (checkpoints, stats: see :mod:`.control`) at ``path``."""
        self._remove_stale(path)
        control = Control(self.image, self.control_executor, self.stats)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._controls.add(task)
            try:
                await control(reader, writer)
            finally:
                self._controls.discard(task)

        self._servers.append(await asyncio.start_unix_server(handle, path=path))
        self._unlink.append(path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._handlers) >= self.max_connections:
            log.warning("refusing a connection: %d clients already", self.max_connections)
            self.counters["connections_refused"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.counters["connections_total"] += 1
        try:
            session = await negotiate(reader, writer, self.export)
            if session is not None:
                await Transmission(reader, writer, session, self.image, self.executor, self.counters).run()
        except (HandshakeFailed, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.info("client dropped: %s", exc)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must cost one connection, not the server
            log.exception("connection failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def close(self) -> None:
        """Stop listening, finish the requests already read, close every
        connection, then make the image durable and close it (the volume
        stays open: its owner closes it)."""
        for server in self._servers:
            server.close()
        for task in [*self._handlers, *self._controls]:
            task.cancel()
        while self._handlers or self._controls:
            await asyncio.gather(*self._handlers, *self._controls, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._unlink:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._unlink.clear()
        self.executor.shutdown(wait=True)
        self.control_executor.shutdown(wait=True)
        self.image.close()
