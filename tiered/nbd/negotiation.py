"""The fixed newstyle handshake, from the greeting to the transmission phase.

One export, named after the volume (the empty name is the same export).
Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
LIST_META_CONTEXT and SET_META_CONTEXT (``base:allocation`` and one
``qemu:dirty-bitmap:CHECKPOINT`` per live checkpoint).  Every other option,
EXTENDED_HEADERS and STARTTLS included, is answered NBD_REP_ERR_UNSUP.  A
client that breaks the framing (wrong magic, truncated data, oversized
option) is disconnected; nothing it sends can raise out of :func:`negotiate`
other than ``ConnectionError`` / ``asyncio.IncompleteReadError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from . import protocol as p


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """What the handshake tells a client about the one export."""

    name: str
    size: int
    flags: int  # transmission flags
    contexts: Callable[[], list[str]]  # every metadata context, asked afresh for each query
    description: str = ""  # NBD_INFO_DESCRIPTION, sent when a client asks for it


@dataclasses.dataclass
class Session:
    """What a successful handshake agreed on."""

    structured: bool = False
    no_zeroes: bool = False
    # context id -> context name, as selected by the last SET_META_CONTEXT
    contexts: dict[int, str] = dataclasses.field(default_factory=dict)

    def flags(self, export: ExportInfo) -> int:
        """The transmission flags for this client: DF only with structured
        replies (proto.md, "Transmission flags", bit 7)."""
        return export.flags | p.TF_SEND_DF if self.structured else export.flags


class HandshakeFailed(Exception):
    """The client broke the protocol; the connection is closed without a reply."""


def _matches(query: str, name: str, listing: bool) -> bool:
    if query == name:
        return True
    if not listing:
        return False  # SET selects exact names only
    # LIST: a namespace ("base:", "qemu:") or a leaf prefix ("qemu:dirty-bitmap:")
    return query.endswith(":") and name.startswith(query)


def select_contexts(available: list[str], queries: list[str], listing: bool) -> list[str]:
    """The contexts a LIST or SET query names, in the export's order; unknown queries are ignored."""
    if listing and not queries:
        return list(available)
    return [name for name in available if any(_matches(q, name, listing) for q in queries)]


async def _read_option(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(p.OPTION_HEADER_SIZE)
    magic, option, length = p.parse_option_header(header)
    if magic != p.IHAVEOPT:
        raise HandshakeFailed(f"option magic {magic:#x} is not IHAVEOPT")
    if length > p.MAX_OPTION_LENGTH:
        raise HandshakeFailed(f"option {option} carries {length} bytes, more than {p.MAX_OPTION_LENGTH}")
    return option, await reader.readexactly(length)


async def negotiate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, export: ExportInfo
) -> Session | None:
    """Run the handshake.  Returns the session for the transmission phase, or
    None when the client aborted or asked for an unknown export by
    EXPORT_NAME (the connection is then to be closed)."""
    writer.write(p.handshake())
    await writer.drain()
    (client_flags,) = p.struct.unpack(">I", await reader.readexactly(4))
    if client_flags & ~(p.CLIENT_FIXED_NEWSTYLE | p.CLIENT_NO_ZEROES):
        raise HandshakeFailed(f"unknown client flags {client_flags:#x}")
    session = Session(no_zeroes=bool(client_flags & p.CLIENT_NO_ZEROES))

    def reply(option: int, kind: int, data: bytes = b"") -> None:
        writer.write(p.option_reply(option, kind, data))

    def error(option: int, kind: int, message: str) -> None:
        reply(option, kind, message.encode())

    def known(name: str) -> bool:
        return name in ("", export.name)

    while True:
        await writer.drain()
        option, data = await _read_option(reader)
        if option == p.OPT_EXPORT_NAME:
            try:
                name = data.decode()
            except UnicodeDecodeError:
                return None
            if not known(name):
                return None  # no way to answer EXPORT_NAME with an error but to close
            writer.write(p.export_name_reply(export.size, session.flags(export), session.no_zeroes))
            await writer.drain()
            return session
        if option == p.OPT_ABORT:
            reply(option, p.REP_ACK)
            await writer.drain()
            return None
        if option == p.OPT_LIST:
            if data:
                error(option, p.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
                continue
            reply(option, p.REP_SERVER, p.rep_server(export.name))
            reply(option, p.REP_ACK)
            continue
        if option in (p.OPT_INFO, p.OPT_GO):
            try:
                name, infos = p.parse_info_request(data)
            except p.MalformedOption as exc:
                error(option, p.REP_ERR_INVALID, str(exc))
                continue
            if not known(name):
                error(option, p.REP_ERR_UNKNOWN, f"no export named {name!r} (this server exports {export.name!r})")
                continue
            reply(option, p.REP_INFO, p.info_export(export.size, session.flags(export)))
            if p.INFO_NAME in infos:
                reply(option, p.REP_INFO, p.info_name(export.name))
            if p.INFO_DESCRIPTION in infos and export.description:
                reply(option, p.REP_INFO, p.info_description(export.description))
            reply(option, p.REP_INFO, p.info_block_size(1, p.PREFERRED_BLOCK, p.MAX_PAYLOAD))
            reply(option, p.REP_ACK)
            if option == p.OPT_GO:
                await writer.drain()
                return session
            continue
        if option == p.OPT_STRUCTURED_REPLY:
            if data:
                error(option, p.REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
                continue
            session.structured = True
            reply(option, p.REP_ACK)
            continue
        if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            listing = option == p.OPT_LIST_META_CONTEXT
            if not listing:
                session.contexts = {}  # a SET replaces the selection, even when it fails
            if not session.structured:
                error(option, p.REP_ERR_INVALID, "meta contexts need NBD_OPT_STRUCTURED_REPLY first")
                continue
            try:
                name, queries = p.parse_meta_context_request(data)
            except p.MalformedOption as exc:
                error(option, p.REP_ERR_INVALID, str(exc))
                continue
            if not known(name):
                error(option, p.REP_ERR_UNKNOWN, f"no export named {name!r}")
                continue
            chosen = select_contexts(export.contexts(), queries, listing)
            if listing:
                for context in chosen:
                    reply(option, p.REP_META_CONTEXT, p.meta_context(0, context))
            else:
                session.contexts = {i + 1: context for i, context in enumerate(chosen)}
                for cid, context in session.contexts.items():
                    reply(option, p.REP_META_CONTEXT, p.meta_context(cid, context))
            reply(option, p.REP_ACK)
            continue
        # EXTENDED_HEADERS, STARTTLS and anything unknown
        error(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
