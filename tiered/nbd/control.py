"""The control socket of a running server: checkpoints and stats from
another process (``tiered ctl``), since the server holds the store.

One JSON object per line each way.  Requests: ``{"op": "checkpoint",
"name": N}``, ``{"op": "remove-checkpoint", "name": N}``, ``{"op":
"checkpoints"}``, ``{"op": "stats"}``, ``{"op": "flush"}``.  Replies:
``{"ok": true, ...}`` or ``{"ok": false, "error": "ExceptionClass",
"message": "..."}``.  A bad request gets an error reply; the connection
and the server go on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..volume import Volume

log = logging.getLogger("tiered.nbd")
MAX_LINE = 64 << 10


def _checkpoint(cp: Any) -> dict[str, Any]:
    return dataclasses.asdict(cp)


def handle(volume: "Volume", request: Any) -> dict[str, Any]:
    """Run one request (blocking); returns the reply."""
    from ..errors import InvalidArgumentError, TieredError

    try:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise InvalidArgumentError('a request is a JSON object with an "op"')
        op = request["op"]
        if op == "checkpoint":
            return {"ok": True, "checkpoint": _checkpoint(volume.checkpoint(request.get("name")))}
        if op == "remove-checkpoint":
            volume.remove_checkpoint(request.get("name"))
            return {"ok": True}
        if op == "checkpoints":
            return {"ok": True, "checkpoints": [_checkpoint(c) for c in volume.checkpoints()]}
        if op == "stats":
            return {"ok": True, "stats": volume.stats()}
        if op == "flush":
            volume.flush()
            return {"ok": True}
        raise InvalidArgumentError(f"unknown op {op!r} (checkpoint, remove-checkpoint, checkpoints, stats, flush)")
    except TieredError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


class Control:
    """Serves the control socket of one volume."""

    def __init__(self, volume: "Volume", executor: Executor) -> None:
        self.volume, self.executor = volume, executor

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
                    reply = await loop.run_in_executor(self.executor, handle, self.volume, request)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError, ValueError):
            pass  # ValueError: a line over the reader's limit
        except Exception:
            log.exception("control connection failed")
        finally:
            writer.close()


def request(path: str, message: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to a server's control socket (blocking client)."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(
                f"no server listens on control socket {path!r} ({exc.strerror}): is `tiered serve` running?"
            ) from None
        s.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(65536)
            if not more:
                raise ConnectionError("the server closed the control connection without a reply")
            data += more
    return json.loads(data)
