"""An NBD server that exports a volume's image and its dirty bitmaps.

Modules, one job each: :mod:`.protocol` (the wire format), :mod:`.negotiation`
(the handshake), :mod:`.transmission` (the commands of one connection),
:mod:`.image` (the image file and the volume's marks), :mod:`.server` (the
asyncio server).  See docs/nbd.md.
"""

from .server import MAX_CONNECTIONS, Server

__all__ = ["MAX_CONNECTIONS", "Server"]
