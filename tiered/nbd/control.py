"""The control socket of a running server: checkpoints and stats from
another process (``tiered ctl``), since the server holds the store.

One JSON object per line each way.  Requests: ``{"op": "checkpoint",
"name": N}``, ``{"op": "remove", "name": N}``, ``{"op": "list"}``,
``{"op": "stats"}`` (the volume's stats and the server's counters),
``{"op": "flush"}``.  Replies:
``{"ok": true, ...}`` or ``{"ok": false, "error": "ExceptionClass",
"message": "..."}``.  A bad request gets an error reply; the connection
and the server go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .image import Image

log = logging.getLogger("tiered.nbd")
MAX_LINE = 64 << 10


def _checkpoint(cp: Any) -> dict[str, Any]:
    return dataclasses.asdict(cp)


OPS = ("checkpoint", "remove", "list", "stats", "flush")


def handle(image: "Image", request: Any, server_stats: Callable[[], dict[str, int]]) -> dict[str, Any]:
    """Run one request (blocking); returns the reply."""
    from ..errors import InvalidArgumentError, TieredError

    volume = image.volume
    try:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise InvalidArgumentError('a request is a JSON object with an "op"')
        op = request["op"]
        if op == "checkpoint":
            return {"ok": True, "checkpoint": _checkpoint(image.checkpoint(request.get("name")))}
        if op == "remove":
            volume.remove_checkpoint(request.get("name"))
            return {"ok": True}
        if op == "list":
            return {"ok": True, "checkpoints": [_checkpoint(c) for c in volume.checkpoints()]}
        if op == "stats":
            return {"ok": True, "stats": volume.stats(), "server": server_stats()}
        if op == "flush":
            volume.flush()
            return {"ok": True}
        raise InvalidArgumentError(f"unknown op {op!r} ({', '.join(OPS)})")
    except TieredError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


class Control:
    """Serves the control socket of one volume."""

    def __init__(self, image: "Image", executor: Executor, server_stats: Callable[[], dict[str, int]]) -> None:
        self.image, self.executor, self.server_stats = image, executor, server_stats

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    request = json.loads(line)
                except ValueError:
                    reply: dict[str, Any] = {"ok": False, "error": "InvalidArgumentError", "message": "not JSON"}
                else:
                    reply = await loop.run_in_executor(self.executor, handle, self.image, request, self.server_stats)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError, ValueError):
            pass  # ValueError: a line over the reader's limit
        except Exception:
            log.exception("control connection failed")
        finally:
            writer.close()


def request(path: str, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to a server's control socket and return its reply
    (blocking).  Raises ConnectionError where no server answers (or it
    hangs up or times out), TieredError for a reply that is not JSON."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(
                f"no server listens on control socket {path!r} ({exc.strerror}): is `tiered serve` running?"
            ) from None
        data = b""
        try:
            s.sendall(json.dumps(message).encode() + b"\n")
            while not data.endswith(b"\n"):
                more = s.recv(65536)
                if not more:
                    raise ConnectionError("the server closed the control connection without a reply")
                data += more
        except ConnectionError:
            raise
        except OSError as exc:  # a timeout, a reset: said as what it is, for this socket
            raise ConnectionError(f"control socket {path!r}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except ValueError:
        from ..errors import TieredError

        raise TieredError(f"control socket {path!r} answered something other than JSON") from None


class ControlClient:
    """The control socket of a running ``tiered serve``, from Python.

    Each call is one request; a refusal raises the server's exception class
    (``AlreadyExistsError``, ``CheckpointNotFoundError``, ...; any other
    :class:`~tiered.errors.TieredError`), a server that does not answer
    ``ConnectionError``.
    """

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path, self.timeout = path, timeout

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        from .. import errors

        reply = request(self.path, {"op": op, **fields}, self.timeout)
        if not reply.get("ok"):
            cls = getattr(errors, str(reply.get("error")), None)
            if not (isinstance(cls, type) and issubclass(cls, errors.TieredError)):
                cls = errors.TieredError
            raise cls(str(reply.get("message")))
        return reply

    def checkpoint(self, name: str) -> dict[str, Any]:
        """Create a checkpoint (a consistency point, see :mod:`.gate`); its fields as a dict."""
        return self._call("checkpoint", name=name)["checkpoint"]

    def remove(self, name: str) -> None:
        """Remove a checkpoint."""
        self._call("remove", name=name)

    def list(self) -> list[dict[str, Any]]:
        """Every live checkpoint, oldest first, as dicts."""
        return self._call("list")["checkpoints"]

    def stats(self) -> dict[str, Any]:
        """``volume.stats()`` of the served volume, with ``"server"``: the
        server's counters (``Server.stats()``: connections, requests per
        command, errors, bytes read and written)."""
        reply = self._call("stats")
        return {**reply["stats"], "server": reply["server"]}

    def flush(self) -> None:
        """Make every mark durable now (``volume.flush()``)."""
        self._call("flush")
