"""The NBD server against the real clients (qemu-io, nbdinfo) and against
raw-socket clients that break the protocol.

Each test starts a server on a Unix socket in its tmp_path: in a background
thread of this process (so the test can ask the same volume), or as
`tiered serve` for the command-line test.  Tests needing a client tool skip
when it is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tiered
from tiered.cli.inspect import format_map_line, map_ranges
from tiered.nbd import Server
from tiered.nbd import protocol as p

ROOT = Path(__file__).resolve().parent.parent
G = 64 << 10
SIZE = 64 * G + 1000  # a partial last chunk
QEMU_IO = shutil.which("qemu-io")
NBDINFO = shutil.which("nbdinfo")
NBDCOPY = shutil.which("nbdcopy")
needs_qemu_io = pytest.mark.skipif(QEMU_IO is None, reason="qemu-io is not installed")
needs_nbdinfo = pytest.mark.skipif(NBDINFO is None, reason="nbdinfo is not installed")


class ServerThread:
    """A Server on its own event loop in a background thread."""

    def __init__(self, vol: tiered.Volume, image: str, sock: str, readonly: bool = False, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.sock = sock
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = Server(vol, image, readonly=readonly, **options)
            self.uri = self.loop.run_until_complete(self.server.listen_unix(sock))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def make_image(path: Path, size: int = SIZE) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


@pytest.fixture
def served(tmp_path: Path):
    """(vol, server) for a hybrid sync volume with checkpoint "cp"."""
    store = tiered.open(str(tmp_path / "store"), sync=False)
    vol = store.create_volume("vda", size=SIZE, granularity=G, strategy="hybrid", durability="sync")
    vol.checkpoint("cp")
    server = ServerThread(vol, make_image(tmp_path / "img"), str(tmp_path / "sock"))
    yield vol, server
    server.stop()
    store.close()


def qemu_io(uri: str, *commands: str) -> str:
    argv = [QEMU_IO, "-f", "raw"]
    for command in commands:
        argv += ["-c", command]
    done = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def nbdinfo(*args: str) -> str:
    done = subprocess.run([NBDINFO, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def expected_map(vol: tiered.Volume, checkpoint: str) -> str:
    return "".join(format_map_line(*r) for r in map_ranges(vol.changed_since(checkpoint), 0, vol.size))


# -- the real clients --------------------------------------------------------------

WRITES_1 = ["write -P 0x55 0 100", f"write -P 0x55 {3 * G + 5} 10", f"write -P 0x56 {10 * G} {2 * G}"]
WRITES_2 = [f"write -P 0x57 {20 * G - 1} 2", f"write -z {40 * G} {G}", f"discard {50 * G} {G}", f"write -P 1 {64 * G} 1000"]


@needs_qemu_io
@needs_nbdinfo
@pytest.mark.parametrize("durability", ["lazy", "sync"])
@pytest.mark.parametrize("strategy", ["one-bit", "multi-bit", "hybrid"])
def test_dirty_bitmap_map_equals_changed_since(tmp_path: Path, strategy: str, durability: str) -> None:
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G, strategy=strategy, durability=durability)
        vol.checkpoint("cp1")
        server = ServerThread(vol, make_image(tmp_path / "img"), str(tmp_path / "sock"))
        try:
            qemu_io(server.uri, *WRITES_1)
            vol.checkpoint("cp2")
            qemu_io(server.uri, *WRITES_2)
            for name in ("cp1", "cp2"):
                text = nbdinfo(f"--map=qemu:dirty-bitmap:{name}", server.uri)
                assert text == expected_map(vol, name)
                assert "dirty" in text
                document = json.loads(nbdinfo("--json", f"--map=qemu:dirty-bitmap:{name}", server.uri))
                dirty = [(e["offset"], e["length"]) for e in document if e["type"] == 1]
                assert dirty == list(vol.changed_since(name))
                assert sum(e["length"] for e in document) == SIZE
            assert list(vol.changed_since("cp2")) == [(19 * G, 2 * G), (40 * G, G), (50 * G, G), (64 * G, 1000)]
        finally:
            server.stop()


@needs_qemu_io
def test_data_round_trip(served) -> None:
    vol, server = served
    qemu_io(server.uri, "write -P 0x55 4096 8192", "write -P 0x66 1000000 1")
    out = qemu_io(server.uri, "read -P 0x55 4096 8192", "read -P 0x66 1000000 1", "read -P 0 0 4096")
    assert "Pattern verification failed" not in out
    assert list(vol.changed_since("cp")) == [(0, G), (15 * G, G)]


@needs_nbdinfo
def test_list_shows_contexts(served) -> None:
    vol, server = served
    vol.checkpoint("second")
    text = nbdinfo("--list", server.uri)
    for context in ("base:allocation", "qemu:dirty-bitmap:cp", "qemu:dirty-bitmap:second"):
        assert f"\t\t{context}\n" in text
    assert "export-size: %d" % SIZE in text
    assert "can_multi_conn: true" in text
    (export,) = json.loads(nbdinfo("--json", server.uri))["exports"]
    assert export["description"] == f"tiered volume vda: hybrid history, sync durability, {G}-byte chunks"


@needs_qemu_io
@needs_nbdinfo
def test_base_allocation_of_a_sparse_image(served) -> None:
    vol, server = served
    qemu_io(server.uri, f"write -P 0x55 {G} {2 * G}")
    rows = [line.split() for line in nbdinfo("--map", server.uri).splitlines()]
    assert rows[0] == ["0", str(G), "3", "hole,zero"]
    assert rows[1] == [str(G), str(2 * G), "0", "data"]
    assert rows[2] == [str(3 * G), str(SIZE - 3 * G), "3", "hole,zero"]


@pytest.mark.skipif(NBDCOPY is None or NBDINFO is None, reason="nbdcopy or nbdinfo is not installed")
def test_multi_conn_writes_share_sync_commits(tmp_path: Path) -> None:
    size = 16 << 20
    source = tmp_path / "src"
    with open(source, "wb") as f:
        f.truncate(size)
        for offset in (1 << 20, 9 << 20):
            f.seek(offset)
            f.write(os.urandom(3 << 20))
    with tiered.open(str(tmp_path / "store"), sync=True) as store:
        vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid", durability="sync")
        vol.checkpoint("full")
        server = ServerThread(vol, make_image(tmp_path / "img", size), str(tmp_path / "sock"))
        try:
            done = subprocess.run(
                [NBDCOPY, "--destination-is-zero", "--connections=4", "--requests=16", str(source), server.uri],
                capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert list(vol.changed_since("full")) == [(1 << 20, 3 << 20), (9 << 20, 3 << 20)]
            stats = vol.stats()
            # every write needed a sync; in-flight writes of all connections shared commits
            assert 1 <= stats["sync_commits"] < stats["sync_writes"]
            assert nbdinfo("--map=qemu:dirty-bitmap:full", server.uri) == expected_map(vol, "full")
        finally:
            server.stop()
    assert (tmp_path / "img").read_bytes() == source.read_bytes()


# -- raw-socket clients ---------------------------------------------------------------


class Raw:
    """A hand-driven client: the bytes it sends are the test's."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.s.recv(n - len(data))
            if not more:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += more
        return data

    def closed(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except ConnectionError:
            return True

    def greet(self) -> None:
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
        assert flags == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES
        self.s.sendall(struct.pack(">I", p.CLIENT_FIXED_NEWSTYLE | p.CLIENT_NO_ZEROES))

    def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        self.s.sendall(struct.pack(">QII", p.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, opt, kind, length = struct.unpack(">QIII", self.recv(20))
            assert (magic, opt) == (p.OPTION_REPLY_MAGIC, option)
            replies.append((kind, self.recv(length)))
            if kind == p.REP_ACK or kind >= 1 << 31:
                return replies

    def go(self, structured: bool = True) -> None:
        self.greet()
        if structured:
            assert self.option(p.OPT_STRUCTURED_REPLY) == [(p.REP_ACK, b"")]
        replies = self.option(p.OPT_GO, struct.pack(">I", 3) + b"vda" + struct.pack(">H", 0))
        assert replies[-1][0] == p.REP_ACK

    def request(self, kind: int, offset: int, length: int, cookie: int = 7, flags: int = 0, data: bytes = b"") -> None:
        self.s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, flags, kind, cookie, offset, length) + data)

    def simple(self) -> tuple[int, int]:
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == p.SIMPLE_REPLY_MAGIC
        return error, cookie

    def chunk(self) -> tuple[int, int, int, bytes]:
        magic, flags, kind, cookie, length = struct.unpack(">IHHQI", self.recv(20))
        assert magic == p.STRUCTURED_REPLY_MAGIC
        return flags, kind, cookie, self.recv(length)


def meta_request(*queries: str, export: bytes = b"vda") -> bytes:
    data = struct.pack(">I", len(export)) + export + struct.pack(">I", len(queries))
    for q in queries:
        data += struct.pack(">I", len(q)) + q.encode()
    return data


def contexts_of(replies: list[tuple[int, bytes]]) -> list[str]:
    return [data[4:].decode() for kind, data in replies if kind == p.REP_META_CONTEXT]


def test_bad_handshakes_and_options(served) -> None:
    vol, server = served
    truncated = Raw(server.sock)
    truncated.recv(18)
    truncated.s.sendall(b"\0\0")
    truncated.s.close()

    garbage = Raw(server.sock)
    garbage.greet()
    garbage.s.sendall(b"NOTMAGIC" + struct.pack(">II", 7, 0))
    assert garbage.closed()

    c = Raw(server.sock)
    c.greet()
    assert c.option(99)[0][0] == p.REP_ERR_UNSUP
    assert c.option(p.OPT_EXTENDED_HEADERS)[0][0] == p.REP_ERR_UNSUP
    assert c.option(p.OPT_SET_META_CONTEXT, meta_request("base:allocation"))[0][0] == p.REP_ERR_INVALID
    assert c.option(p.OPT_LIST, b"x")[0][0] == p.REP_ERR_INVALID
    assert c.option(p.OPT_LIST) == [(p.REP_SERVER, struct.pack(">I", 3) + b"vda"), (p.REP_ACK, b"")]
    assert c.option(p.OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))[0][0] == p.REP_ERR_UNKNOWN
    assert c.option(p.OPT_INFO, b"\0\0")[0][0] == p.REP_ERR_INVALID
    c.option(p.OPT_STRUCTURED_REPLY)
    vol.checkpoint("cp2")
    everything = ["base:allocation", "qemu:dirty-bitmap:cp", "qemu:dirty-bitmap:cp2"]
    assert contexts_of(c.option(p.OPT_LIST_META_CONTEXT, meta_request())) == everything
    assert contexts_of(c.option(p.OPT_LIST_META_CONTEXT, meta_request("qemu:"))) == everything[1:]
    assert contexts_of(c.option(p.OPT_LIST_META_CONTEXT, meta_request("qemu:dirty-bitmap:", "x:y"))) == everything[1:]
    assert c.option(p.OPT_LIST_META_CONTEXT, meta_request(export=b"nope"))[0][0] == p.REP_ERR_UNKNOWN
    # SET takes exact names only and ignores unknown ones
    replies = c.option(p.OPT_SET_META_CONTEXT, meta_request("qemu:", "qemu:dirty-bitmap:cp2", "nope:x"))
    assert contexts_of(replies) == ["qemu:dirty-bitmap:cp2"]
    assert c.option(p.OPT_SET_META_CONTEXT, meta_request(export=b"nope"))[0][0] == p.REP_ERR_UNKNOWN
    assert c.option(p.OPT_ABORT) == [(p.REP_ACK, b"")]
    assert c.closed()

    # The empty export name is the volume; EXPORT_NAME of an unknown one closes
    ok = Raw(server.sock)
    ok.greet()
    ok.s.sendall(struct.pack(">QII", p.IHAVEOPT, p.OPT_EXPORT_NAME, 0))
    assert struct.unpack(">QH", ok.recv(10)) == (SIZE, server.server.export.flags)
    unknown = Raw(server.sock)
    unknown.greet()
    unknown.s.sendall(struct.pack(">QII", p.IHAVEOPT, p.OPT_EXPORT_NAME, 4) + b"nope")
    assert unknown.closed()
    ok.request(p.CMD_READ, 0, 4)
    assert ok.simple() == (0, 7) and ok.recv(4) == bytes(4)


def test_bad_requests_get_errors_and_the_connection_goes_on(served) -> None:
    vol, server = served
    c = Raw(server.sock)
    c.go()
    c.request(42, 0, 0, cookie=1)
    assert c.simple() == (p.EINVAL, 1)
    c.request(p.CMD_READ, SIZE - 10, 20, cookie=2)
    flags, kind, cookie, data = c.chunk()
    assert (flags, kind, cookie) == (p.REPLY_FLAG_DONE, p.REPLY_TYPE_ERROR, 2)
    assert struct.unpack(">I", data[:4])[0] == p.EINVAL
    c.request(p.CMD_READ, 0, p.MAX_PAYLOAD + 1, cookie=3)
    flags, kind, cookie, data = c.chunk()
    assert (kind, cookie, struct.unpack(">I", data[:4])[0]) == (p.REPLY_TYPE_ERROR, 3, p.EOVERFLOW)
    c.request(p.CMD_WRITE, SIZE - 1, 2, cookie=4, data=b"ab")
    assert c.simple() == (p.EINVAL, 4)
    c.request(p.CMD_WRITE_ZEROES, SIZE, 1, cookie=5)
    assert c.simple() == (p.EINVAL, 5)
    c.request(p.CMD_TRIM, 1 << 62, 1, cookie=6)
    assert c.simple() == (p.EINVAL, 6)
    assert not vol.changed_since("cp")  # nothing out of range was marked
    c.request(p.CMD_BLOCK_STATUS, 0, 4096, cookie=8)  # no context selected
    assert c.chunk()[1] == p.REPLY_TYPE_ERROR
    c.request(p.CMD_WRITE, SIZE - 2, 2, cookie=9, flags=p.CMD_FLAG_FUA, data=b"xy")
    assert c.simple() == (0, 9)
    c.request(p.CMD_READ, SIZE - 2, 2, cookie=10)
    flags, kind, cookie, data = c.chunk()
    assert (kind, cookie, data) == (p.REPLY_TYPE_OFFSET_DATA, 10, struct.pack(">Q", SIZE - 2) + b"xy")
    c.request(p.CMD_FLUSH, 0, 0, cookie=11)
    assert c.simple() == (0, 11)
    assert list(vol.changed_since("cp")) == [(64 * G, 1000)]
    c.request(p.CMD_DISC, 0, 0)
    assert c.closed()


def test_block_status_chunks(served) -> None:
    vol, server = served
    c = Raw(server.sock)
    c.greet()
    c.option(p.OPT_STRUCTURED_REPLY)
    c.option(p.OPT_SET_META_CONTEXT, meta_request("base:allocation", "qemu:dirty-bitmap:cp"))
    assert c.option(p.OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 0))[-1][0] == p.REP_ACK
    c.request(p.CMD_WRITE, 2 * G, 10, cookie=1, data=b"0123456789")
    assert c.simple() == (0, 1)

    def status(offset: int, length: int, flags: int = 0) -> dict[int, list[tuple[int, int]]]:
        c.request(p.CMD_BLOCK_STATUS, offset, length, cookie=2, flags=flags)
        answers = {}
        while True:
            chunk_flags, kind, cookie, data = c.chunk()
            assert (kind, cookie) == (p.REPLY_TYPE_BLOCK_STATUS, 2)
            (cid,) = struct.unpack(">I", data[:4])
            answers[cid] = list(struct.iter_unpack(">II", data[4:]))
            if chunk_flags & p.REPLY_FLAG_DONE:
                return answers

    assert status(G, 4 * G)[2] == [(G, 0), (G, 1), (2 * G, 0)]
    assert status(G, 4 * G, p.CMD_FLAG_REQ_ONE)[2] == [(G, 0)]
    answer = status(SIZE - 100, 1 << 20)  # clipped at the end of the export
    assert answer == {1: [(100, 3)], 2: [(100, 0)]}
    base = status(0, 4 * G)[1]
    assert sum(n for n, _ in base) == 4 * G and (0, 0) not in base
    vol.remove_checkpoint("cp")  # selected, then removed: an error, and the connection goes on
    c.request(p.CMD_BLOCK_STATUS, 0, G, cookie=3)
    flags, kind, cookie, data = c.chunk()
    assert (kind, cookie, struct.unpack(">I", data[:4])[0]) == (p.REPLY_TYPE_ERROR, 3, p.EINVAL)
    c.request(p.CMD_READ, 2 * G, 10, cookie=4)
    assert c.chunk()[3][8:] == b"0123456789"


def test_oversized_write_is_refused_and_the_connection_goes_on(served) -> None:
    vol, server = served
    c = Raw(server.sock)
    c.go()
    c.request(p.CMD_WRITE, 0, p.MAX_PAYLOAD + 1, cookie=1, data=bytes(p.MAX_PAYLOAD + 1))
    assert c.simple() == (p.EINVAL, 1)
    c.request(p.CMD_WRITE, 0, 1, cookie=2, data=b"x")
    assert c.simple() == (0, 2)
    assert list(vol.changed_since("cp")) == [(0, G)]


def read_chunks(c: Raw, offset: int, length: int, cookie: int, flags: int = 0) -> list[tuple[int, int, int, bytes]]:
    """The chunks of one structured READ reply: (kind, offset, length, data)."""
    c.request(p.CMD_READ, offset, length, cookie=cookie, flags=flags)
    chunks = []
    while True:
        chunk_flags, kind, got, data = c.chunk()
        assert got == cookie
        (at,) = struct.unpack(">Q", data[:8])
        if kind == p.REPLY_TYPE_OFFSET_HOLE:
            chunks.append((kind, at, struct.unpack(">I", data[8:])[0], b""))
        else:
            assert kind == p.REPLY_TYPE_OFFSET_DATA, kind
            chunks.append((kind, at, len(data) - 8, data[8:]))
        if chunk_flags & p.REPLY_FLAG_DONE:
            return chunks


def test_read_replies_holes_and_df(served) -> None:
    vol, server = served
    c = Raw(server.sock)
    c.greet()
    c.option(p.OPT_STRUCTURED_REPLY)
    info = c.option(p.OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 0))
    (flags,) = struct.unpack(">H", info[0][1][10:12])
    assert flags & p.TF_SEND_DF and flags & p.TF_SEND_FAST_ZERO and flags & p.TF_SEND_CACHE
    c.request(p.CMD_WRITE, 2 * G, G, cookie=1, data=b"d" * G)
    assert c.simple() == (0, 1)
    hole, data = p.REPLY_TYPE_OFFSET_HOLE, p.REPLY_TYPE_OFFSET_DATA
    assert read_chunks(c, 0, G, 2) == [(hole, 0, G, b"")]
    assert read_chunks(c, G, 3 * G, 3) == [(hole, G, G, b""), (data, 2 * G, G, b"d" * G), (hole, 3 * G, G, b"")]
    # DF: one content chunk; a hole only where the whole range is one
    assert read_chunks(c, 0, G, 4, p.CMD_FLAG_DF) == [(hole, 0, G, b"")]
    assert read_chunks(c, G, 3 * G, 5, p.CMD_FLAG_DF) == [(data, G, 3 * G, bytes(G) + b"d" * G + bytes(G))]
    # the reader's view: qemu-io reads the same bytes either way
    c.request(p.CMD_READ, 0, 8, cookie=6, flags=1 << 9)  # an unknown flag
    assert c.chunk()[1] == p.REPLY_TYPE_ERROR
    # without structured replies: plain data, zeros included
    plain = Raw(server.sock)
    plain.go(structured=False)
    plain.request(p.CMD_READ, G, 2 * G, cookie=7)
    assert plain.simple() == (0, 7) and plain.recv(2 * G) == bytes(G) + b"d" * G


def test_read_pieces_past_the_chunk_limit(tmp_path: Path) -> None:
    from tiered.nbd.image import Image

    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G)
        img = Image(make_image(tmp_path / "img"), vol, readonly=False)
        for i in range(0, 8, 2):
            img.write(i * G, b"x" * G, fua=False)  # data, hole, data, hole, ...
        pieces = img.read_pieces(0, 8 * G, 3)
        assert [(o, n, d is None) for o, n, d in pieces] == [(0, G, False), (G, G, True), (2 * G, 6 * G, False)]
        assert pieces[2][2] == (b"x" * G + bytes(G)) * 3
        img.close()


@pytest.mark.parametrize("durability", ["lazy", "sync"])
@pytest.mark.parametrize("strategy", ["one-bit", "multi-bit", "hybrid"])
def test_map_scans_answer_from_a_current_whole_volume_map(tmp_path: Path, monkeypatch, strategy: str, durability: str) -> None:
    """Long block status windows are answered from one whole-volume answer,
    kept while the volume's version holds: every window equals a direct
    changed_since, and any change (a mark made behind the server's back
    included) makes the kept map unusable."""
    import random

    from tiered.nbd import image as image_module

    monkeypatch.setattr(image_module, "MAP_SCAN", 8 * G)
    rng = random.Random(f"map-{strategy}-{durability}")
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G, strategy=strategy, durability=durability)
        vol.checkpoint("c1")
        img = image_module.Image(make_image(tmp_path / "img"), vol, readonly=False)

        def direct(offset: int, length: int) -> bytes:
            e = vol.changed_since("c1", offset, length)
            return image_module.descriptors(image_module.dirty_pairs(e.offsets, e.lengths, offset, offset + length, 1 << 20))

        for round_ in range(6):
            for _ in range(rng.randrange(1, 6)):
                img.write(rng.randrange(SIZE - 3 * G), b"w" * rng.randrange(1, 3 * G), fua=False)
            if round_ == 3:
                vol.checkpoint("c2")
            assert img.dirty_cached("c1", 0, SIZE, 1 << 20) is None  # changed since the last scan
            for lo in range(0, SIZE, 8 * G):  # a scan, window after window
                n = min(8 * G, SIZE - lo)
                assert img.dirty("c1", lo, n, 1 << 20) == direct(lo, n)
            bounds = sorted({0, SIZE, *(b for o, n in vol.changed_since("c1") for b in (o, o + n))})
            for _ in range(30):  # any window, from the kept map; ends on extent bounds too
                lo = rng.choice([rng.randrange(SIZE), rng.choice(bounds[:-1])])
                hi = rng.choice([rng.randrange(lo + 1, SIZE + 1), rng.choice([b for b in bounds if b > lo])])
                n = hi - lo
                assert img.dirty_cached("c1", lo, n, 1 << 20) == direct(lo, n)
                assert img.dirty_cached("c1", lo, n, 1) == direct(lo, n)[:8]
                assert img.dirty_cached("c1", lo, n, 3) == direct(lo, n)[:24]
            assert img.dirty_cached("c2", 0, SIZE, 1 << 20) is None  # kept for c1 only
        token = vol.mark(SIZE - 1, 1)  # not through the server
        if token:
            vol.sync(token)
        assert img.dirty_cached("c1", 0, SIZE, 1 << 20) is None
        # a map too large to keep: every window windowed from then on, never stale
        monkeypatch.setattr(image_module, "MAP_CACHE_BYTES", 32)
        for lo in (0, 8 * G):
            e = vol.changed_since("c2", lo, 8 * G)
            assert img.dirty("c2", lo, 8 * G, 1 << 20) == image_module.descriptors(
                image_module.dirty_pairs(e.offsets, e.lengths, lo, lo + 8 * G, 1 << 20))
        assert img.dirty_cached("c2", 0, 8 * G, 1 << 20) is None and "c2" in img._too_large
        monkeypatch.setattr(image_module, "MAP_CACHE_BYTES", 64 << 20)
        img.dirty("c1", 0, 8 * G, 1 << 20)
        vol.remove_checkpoint("c1")
        assert img.dirty_cached("c1", 0, SIZE, 1 << 20) is None
        with pytest.raises(tiered.CheckpointNotFoundError):
            img.dirty("c1", 0, 8 * G, 1 << 20)
        img.close()


@needs_qemu_io
@needs_nbdinfo
def test_map_scan_of_a_large_volume_through_the_server(tmp_path: Path) -> None:
    """nbdinfo reads a 12 GiB map in 4 GiB windows: the first from a
    whole-volume answer, the next from the kept map on the reading loop; a
    write through NBD, or a mark behind the server's back, is in the next scan."""
    import random

    size = (12 << 30) + 1000
    rng = random.Random("large-map")
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid", durability="sync")
        vol.checkpoint("cp")
        vol.sync(vol.mark_many([rng.randrange(size - G) for _ in range(300)], [G] * 300))
        server = ServerThread(vol, make_image(tmp_path / "img", size), str(tmp_path / "sock"))
        try:
            assert nbdinfo("--map=qemu:dirty-bitmap:cp", server.uri) == expected_map(vol, "cp")
            before = server.server.stats()["block_status"]
            assert nbdinfo("--map=qemu:dirty-bitmap:cp", server.uri) == expected_map(vol, "cp")
            assert server.server.stats()["block_status"] - before == 4  # 4 GiB windows
            qemu_io(server.uri, f"write -P 7 {(9 << 30) + 5} 3")
            assert f"{9 << 30:>10} {G:>11}    1  dirty" in nbdinfo("--map=qemu:dirty-bitmap:cp", server.uri)
            vol.sync(vol.mark(size - 1, 1))  # not through the server
            assert nbdinfo("--map=qemu:dirty-bitmap:cp", server.uri) == expected_map(vol, "cp")
            assert expected_map(vol, "cp").rstrip().endswith("dirty")
        finally:
            server.stop()


def test_cache_fast_zero_and_flags(served, monkeypatch) -> None:
    vol, server = served
    c = Raw(server.sock)
    c.go()
    c.request(p.CMD_CACHE, 0, 4 * G, cookie=1)
    assert c.simple() == (0, 1)
    c.request(p.CMD_CACHE, SIZE, 1, cookie=2)
    assert c.simple() == (p.EINVAL, 2)
    c.request(p.CMD_CACHE, 0, 1, cookie=3, flags=p.CMD_FLAG_NO_HOLE)  # a flag CACHE does not know
    assert c.simple() == (p.EINVAL, 3)
    c.request(p.CMD_WRITE, 0, 4 * G, cookie=4, data=b"z" * (4 * G))
    assert c.simple() == (0, 4)
    vol.checkpoint("cp2")
    image = server.server.image
    # ext4 (the tests' disk) punches holes and zeroes ranges: FAST_ZERO is served
    fast = p.CMD_FLAG_FAST_ZERO
    c.request(p.CMD_WRITE_ZEROES, 0, G, cookie=5, flags=fast)
    c.request(p.CMD_WRITE_ZEROES, G, G, cookie=6, flags=fast | p.CMD_FLAG_NO_HOLE)
    assert sorted([c.simple(), c.simple()]) == [(0, 5), (0, 6)]
    assert image.read(0, 2 * G) == bytes(2 * G)
    assert list(vol.changed_since("cp2")) == [(0, 2 * G)]
    # where zeroing would mean writing zeros: ENOTSUP at once, nothing marked or written
    monkeypatch.setattr(image, "fast_modes", set())
    c.request(p.CMD_WRITE_ZEROES, 3 * G, G, cookie=7, flags=fast)
    assert c.simple() == (p.ENOTSUP, 7)
    assert list(vol.changed_since("cp2")) == [(0, 2 * G)]
    assert image.read(3 * G, G) == b"z" * G
    c.request(p.CMD_WRITE_ZEROES, 3 * G, G, cookie=8)  # without FAST_ZERO: written zeros
    assert c.simple() == (0, 8)
    assert image.read(3 * G, G) == bytes(G)
    assert list(vol.changed_since("cp2")) == [(0, 2 * G), (3 * G, G)]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_fast_zeroing_is_probed_where_the_image_lives(tmp_path: Path) -> None:
    """A symlinked image is probed on the file system it lives on (tmpfs
    punches holes but has no ZERO_RANGE), so a FAST_ZERO that would write
    is refused before it marks."""
    import tempfile

    from tiered.nbd import image as image_module

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G)
        os.symlink(make_image(Path(shm) / "img"), tmp_path / "link")
        img = image_module.Image(str(tmp_path / "link"), vol, readonly=False)
        assert img.fast_modes == image_module.probe_fallocate(shm)
        if image_module.ZERO_RANGE not in img.fast_modes:
            assert not img.can_zero_fast(may_trim=False)
        img.close()


def test_checkpoint_is_a_consistency_point(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint waits for writes already marked to reach the image, and
    writes arriving meanwhile wait for it (they belong to the new period)."""
    from tiered.nbd import image as image_module

    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G)
        vol.checkpoint("c1")
        img = image_module.Image(make_image(tmp_path / "img"), vol, readonly=False)
        entered, release = threading.Event(), threading.Event()
        real = os.pwrite

        def slow_pwrite(fd, data, offset):
            if offset == 0:
                entered.set()
                assert release.wait(10)
            return real(fd, data, offset)

        monkeypatch.setattr(image_module.os, "pwrite", slow_pwrite)
        first = threading.Thread(target=img.write, args=(0, b"a", False))
        first.start()
        assert entered.wait(10)  # marked in c1's period, data not yet in the image
        made = []
        checkpoint = threading.Thread(target=lambda: made.append(img.checkpoint("c2")))
        checkpoint.start()
        checkpoint.join(0.3)
        assert checkpoint.is_alive() and not made  # waits for the marked write
        second = threading.Thread(target=img.write, args=(2 * G, b"b", False))
        second.start()
        second.join(0.3)
        assert second.is_alive()  # arrived after the checkpoint began: held
        assert list(vol.changed_since("c1")) == [(0, G)]
        release.set()
        for t in (first, checkpoint, second):
            t.join(10)
            assert not t.is_alive()
        assert [c.name for c in vol.checkpoints()] == ["c1", "c2"]
        assert list(vol.changed_since("c2")) == [(2 * G, G)]
        assert list(vol.changed_since("c1")) == [(0, G), (2 * G, G)]
        img.close()


def test_readonly_export_and_connection_limit(tmp_path: Path) -> None:
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G)
        vol.checkpoint("cp")
        server = ServerThread(vol, make_image(tmp_path / "img"), str(tmp_path / "sock"), readonly=True, max_connections=2)
        try:
            assert server.server.export.flags & p.TF_READ_ONLY
            a, b = Raw(server.sock), Raw(server.sock)
            a.go()
            b.greet()
            third = Raw(server.sock)
            assert third.closed()  # over the limit: closed at once
            for kind in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES):
                a.request(kind, 0, 1, cookie=kind, data=b"x" if kind == p.CMD_WRITE else b"")
                assert a.simple() == (p.EPERM, kind)
            assert not vol.changed_since("cp")
        finally:
            server.stop()


def test_sync_volume_data_written_only_after_sync(tmp_path: Path, monkeypatch) -> None:
    from tiered.nbd import image as image_module

    events = []

    class Volume:
        name, size = "vda", 8192

        def mark(self, offset, length):
            events.append(("mark", offset, length))
            return 5

        def sync(self, token=None):
            events.append(("sync", token))

    img = image_module.Image(make_image(tmp_path / "img", 8192), Volume(), readonly=False)
    real, real_fallocate = os.pwrite, image_module.fallocate
    monkeypatch.setattr(image_module.os, "pwrite", lambda fd, data, off: events.append(("pwrite", off)) or real(fd, data, off))
    monkeypatch.setattr(
        image_module, "fallocate", lambda fd, mode, off, n: events.append(("fallocate", off)) or real_fallocate(fd, mode, off, n)
    )
    img.write(4096, b"abc", fua=False)
    img.write_zeroes(0, 10, may_trim=False, fua=False)  # a zero range where the disk has it
    img.trim(0, 4096, fua=False)
    img.unsupported_modes.update((image_module.PUNCH_HOLE, image_module.ZERO_RANGE))
    img.write_zeroes(0, 10, may_trim=True, fua=False)  # written zeros
    img.close()
    assert events == [
        ("mark", 4096, 3), ("sync", 5), ("pwrite", 4096),
        ("mark", 0, 10), ("sync", 5), ("fallocate", 0),
        ("mark", 0, 4096), ("sync", 5), ("fallocate", 0),
        ("mark", 0, 10), ("sync", 5), ("pwrite", 0),
    ]


@needs_qemu_io
@needs_nbdinfo
def test_serve_command_and_sigterm(tmp_path: Path) -> None:
    store_path, image, sock = str(tmp_path / "store"), str(tmp_path / "img"), str(tmp_path / "sock")
    with tiered.open(store_path) as store:
        store.create_volume("vda", size=SIZE, granularity=G, strategy="multi-bit", durability="sync").checkpoint("cp")
    make_image(tmp_path / "img")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    control = sock + ".ctl"  # the default control socket beside --socket
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiered", "serve", store_path, "vda", "--image", image, "--socket", sock],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        uri = proc.stdout.readline().strip()
        assert uri == f"nbd+unix:///vda?socket={sock}", proc.stderr.read() if not uri else uri
        qemu_io(uri, f"write -P 0x55 {5 * G} 1")
        mapped = nbdinfo("--map=qemu:dirty-bitmap:cp", uri)
        assert mapped.split()[4:8] == [str(5 * G), str(G), "1", "dirty"]

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "tiered", "ctl", control, *args],
                                  capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)

        assert ctl("checkpoint", "cp2").returncode == 0
        assert "\t\tqemu:dirty-bitmap:cp2\n" in nbdinfo("--list", uri)
        qemu_io(uri, f"write -P 0x55 {7 * G} 1")
        assert nbdinfo("--map=qemu:dirty-bitmap:cp2", uri).split()[4:8] == [str(7 * G), str(G), "1", "dirty"]
        names = [c["name"] for c in json.loads(ctl("list", "--json").stdout)["checkpoints"]]
        assert names == ["cp", "cp2"]
        shown = ctl("stats").stdout
        assert "durability:               sync" in shown and "server.connections_total:" in shown
        again = ctl("checkpoint", "cp2")
        assert again.returncode == 1 and "already has a checkpoint 'cp2'" in again.stderr
        assert ctl("remove", "nope").returncode == 1
        assert ctl("list", "x").returncode == 2
        assert ctl("remove", "cp2").returncode == 0
        assert "cp2" not in nbdinfo("--list", uri)
        mapped = nbdinfo("--map=qemu:dirty-bitmap:cp", uri)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        changed = subprocess.run(
            [sys.executable, "-m", "tiered", "changed", store_path, "vda", "cp"],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
        )
        assert changed.stdout == mapped  # docs/nbd.md: byte for byte
        gone = ctl("stats")
        assert gone.returncode == 1 and "is `tiered serve` running?" in gone.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists(sock) and not os.path.exists(control)
    with tiered.open(store_path, readonly=True) as store:
        vol = store.volume("vda")
        assert list(vol.changed_since("cp")) == [(5 * G, G), (7 * G, G)]
        assert not vol.unclean_shutdown


def test_serve_usage_errors(tmp_path: Path) -> None:
    from tiered.cli import main

    assert main(["serve", str(tmp_path / "s"), "vda", "--image", "x"]) == 2
    assert main(["serve", str(tmp_path / "s"), "vda", "--image", "x", "--socket", "a", "--port", "1"]) == 2
    # a missing volume without --create: a one-line error, exit 1
    assert main(["serve", str(tmp_path / "s"), "vda", "--image", "x", "--socket", str(tmp_path / "k")]) == 1


def test_control_socket_bad_requests(tmp_path: Path) -> None:
    from tiered.cli.ctl import OPS
    from tiered.nbd import control
    from tiered.nbd.control import ControlClient, request

    assert OPS == control.OPS
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=SIZE, granularity=G)
        server = ServerThread(vol, make_image(tmp_path / "img"), str(tmp_path / "sock"))
        path = str(tmp_path / "ctl")
        asyncio.run_coroutine_threadsafe(server.server.listen_control(path), server.loop).result(10)
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"garbage\n[1]\n" + json.dumps({"op": "nope"}).encode() + b"\n")
            f = s.makefile()
            replies = [json.loads(f.readline()) for _ in range(3)]
            assert [r["ok"] for r in replies] == [False, False, False]
            assert replies[2]["error"] == "InvalidArgumentError"
            s.close()
            assert request(path, {"op": "checkpoint", "name": 5})["error"] == "InvalidArgumentError"
            assert request(path, {"op": "checkpoint", "name": "a"})["checkpoint"]["name"] == "a"
            assert [c.name for c in vol.checkpoints()] == ["a"]
            assert request(path, {"op": "stats"})["stats"]["checkpoints"] == 1
            client = ControlClient(path)
            with pytest.raises(tiered.AlreadyExistsError, match="'a'"):
                client.checkpoint("a")
            with pytest.raises(tiered.CheckpointNotFoundError):
                client.remove("nope")
            assert client.checkpoint("b")["name"] == "b"
            assert [c["name"] for c in client.list()] == ["a", "b"]
            client.remove("a")
            assert client.stats()["checkpoints"] == 1
            client.flush()
            before = client.stats()["server"]
            c = Raw(server.sock)
            c.go()
            c.request(p.CMD_WRITE, 0, 3, cookie=1, data=b"abc")
            assert c.simple() == (0, 1)
            c.request(p.CMD_READ, 0, 2, cookie=2)
            assert c.chunk()[1] == p.REPLY_TYPE_OFFSET_DATA
            c.request(p.CMD_READ, SIZE, 2, cookie=3)
            assert c.chunk()[1] == p.REPLY_TYPE_ERROR
            after = client.stats()["server"]
            assert after["connections"] == 1 and after["connections_total"] == before["connections_total"] + 1
            assert (after["write"], after["read"], after["errors"]) == (1, 1, 1)
            assert (after["bytes_written"], after["bytes_read"]) == (3, 2)
            c.request(p.CMD_DISC, 0, 0)
            assert c.closed()
        finally:
            server.stop()
        assert not os.path.exists(path)


def test_control_client_names_a_misbehaving_server(tmp_path: Path) -> None:
    from tiered.nbd.control import request

    path = str(tmp_path / "fake.ctl")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve(answer: bytes | None) -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        if answer is not None:
            conn.sendall(answer)
        else:
            threading.Event().wait(2)  # never answers
        conn.close()

    for answer, error, text in ((b"<html>\n", tiered.TieredError, "other than JSON"),
                                (None, ConnectionError, "fake.ctl")):
        t = threading.Thread(target=serve, args=(answer,))
        t.start()
        with pytest.raises(error, match=text):
            request(path, {"op": "stats"}, timeout=0.5)
        t.join()
    listener.close()


# -- an incremental backup, as a backup tool makes it -----------------------------

QEMU_IMG = shutil.which("qemu-img")


def _image_opts(sock: str, **extra: object) -> str:
    opts = {"driver": "nbd", "server.type": "unix", "server.path": sock, "export": "vda", **extra}
    return ",".join(f"{k}={v}" for k, v in opts.items())


def _run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv[0]}: {done.stderr}"
    return done.stdout


@needs_qemu_io
@needs_nbdinfo
@pytest.mark.skipif(NBDCOPY is None or QEMU_IMG is None, reason="nbdcopy or qemu-img is not installed")
@pytest.mark.parametrize("strategy", ["one-bit", "multi-bit", "hybrid"])
def test_incremental_backup_rounds_equal_the_image(tmp_path: Path, strategy: str) -> None:
    """A full copy with nbdcopy at c1; then, each round, writes through NBD,
    a new checkpoint, and only the extents `nbdinfo --map --json` reports
    dirty since the last backup's checkpoint are read through NBD (qemu-img
    reading a raw window of the export) and written onto the copy, which
    must then equal the image byte for byte (`qemu-img compare`).  Each
    round also checks QEMU's own reading of the map (`qemu-img map` with
    x-dirty-bitmap: dirty areas are reported as not data) and removes the
    checkpoint the backup no longer needs."""
    import random

    rng = random.Random(f"backup-{strategy}")
    size = 256 * G
    sock = str(tmp_path / "sock")
    backup = tmp_path / "backup.img"
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G, strategy=strategy, durability="sync")
        server = ServerThread(vol, make_image(tmp_path / "img", size), sock)
        try:
            qemu_io(server.uri, *(f"write -P {i + 1} {rng.randrange(size - 4 * G)} {rng.randrange(1, 4 * G)}" for i in range(20)))
            vol.checkpoint("c1")
            _run(NBDCOPY, server.uri, str(backup))  # the full backup of c1
            last = "c1"
            for k in range(2, 6):
                writes = []
                for i in range(rng.randrange(3, 12)):
                    off, n = rng.randrange(size - 3 * G), rng.randrange(1, 3 * G)
                    how = rng.choice(["data", "data", "zero", "discard"])
                    writes.append(
                        f"write -P {(k * 16 + i) % 255 + 1} {off} {n}" if how == "data"
                        else f"write -z {off} {n}" if how == "zero" else f"discard {off} {n}"
                    )
                qemu_io(server.uri, *writes)
                now = f"c{k}"
                vol.checkpoint(now)
                document = json.loads(nbdinfo("--json", f"--map=qemu:dirty-bitmap:{last}", server.uri))
                dirty = [(e["offset"], e["length"]) for e in document if e["type"] & 1]
                assert dirty == list(vol.changed_since(last)) and dirty
                qemu_map = json.loads(_run(
                    QEMU_IMG, "map", "--output=json", "--image-opts",
                    _image_opts(sock, **{"x-dirty-bitmap": f"qemu:dirty-bitmap:{last}"}),
                ))
                assert [(e["start"], e["length"]) for e in qemu_map if not e["data"]] == dirty
                with open(backup, "r+b") as out:
                    for off, n in dirty:
                        part = tmp_path / "part"
                        _run(QEMU_IMG, "convert", "--image-opts",
                             f"driver=raw,offset={off},size={n},file.{_image_opts(sock).replace(',', ',file.')}",
                             "-O", "raw", str(part))
                        out.seek(off)
                        out.write(part.read_bytes())
                _run(QEMU_IMG, "compare", "-f", "raw", "-F", "raw", str(backup), str(tmp_path / "img"))
                vol.remove_checkpoint(last)  # the chain moves on
                last = now
        finally:
            server.stop()
