"""The NBD server under load: many connections at once, kill -9 and SIGTERM
while clients write, clients that vanish mid-request.

The clients are tests/nbdclient.py (asyncio, many requests in flight per
connection).  Servers run in a background thread of this process
(test_nbd.ServerThread) where the test asks the same volume, or as
`tiered serve` subprocesses where the test kills them.

TIERED_NBD_CRASH_TRIALS sets the kill -9 trials per durability (default 3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nbdclient import Client, HandshakeError, NBDError
from test_nbd import ServerThread, make_image

import tiered
from tiered.nbd import protocol as p
from tiered.nbd.control import request as control_request
from tiered.nbd.server import MAX_CONNECTIONS

ROOT = Path(__file__).resolve().parent.parent
G = 64 << 10  # the volumes' granularity (also `tiered serve --create`'s default)
TIMEOUT = 120  # a hang fails the test instead of stalling the run
CRASH_TRIALS = int(os.environ.get("TIERED_NBD_CRASH_TRIALS", "3"))


# -- chunk arithmetic --------------------------------------------------------------


def chunk_ids(offset: int, length: int) -> range:
    return range(offset // G, -(-(offset + length) // G))


def chunks_of(ranges) -> set[int]:
    out: set[int] = set()
    for offset, length in ranges:
        out.update(chunk_ids(offset, length))
    return out


def extents_of(chunks: set[int], size: int) -> list[tuple[int, int]]:
    """Sorted chunk ids as (offset, length) extents, clipped at ``size``."""
    out: list[tuple[int, int]] = []
    for c in sorted(chunks):
        if out and out[-1][0] + out[-1][1] == c * G:
            out[-1] = (out[-1][0], out[-1][1] + G)
        else:
            out.append((c * G, G))
    return [(o, min(n, size - o)) for o, n in out]


async def connect_when_free(sock: str, what: str) -> Client:
    """Connect to a slot a closed connection frees: the server may take a
    moment to notice the close (it refuses until then), never forever."""
    for _ in range(300):
        try:
            return await Client.connect(sock)
        except HandshakeError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: refused for 30 s")


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


# -- 1. every connection slot at once --------------------------------------------------

REGION = 4 * G  # each connection writes its own region
CONTEXT = "qemu:dirty-bitmap:cp"
SLOTS = 8  # of REGION // SLOTS bytes; a connection writes a random part of some of them


def region_plan(rng: random.Random, i: int) -> list[tuple[int, bytes]]:
    """Non-overlapping writes inside region ``i``: (offset, data)."""
    slot = REGION // SLOTS
    plan = []
    for s in sorted(rng.sample(range(SLOTS), rng.randrange(3, SLOTS + 1))):
        start = rng.randrange(slot - 1)
        length = rng.randrange(1, slot - start + 1)
        plan.append((i * REGION + s * slot + start, rng.randbytes(length)))
    return plan


def test_every_connection_slot_at_once(tmp_path: Path) -> None:
    """MAX_CONNECTIONS (64) clients negotiate, all before any writes; each
    writes its own region with every write in flight at once, reads it back
    (half of them with structured replies, which also read the region's
    dirty bitmap), and none disconnects before all have read back.  While all are open a
    65th connection is closed at once; after one disconnects, a new one is
    served.  The checkpoint then reports exactly the written chunks and the
    image holds exactly the bytes written."""
    n = MAX_CONNECTIONS
    size = (n + 1) * REGION  # the last region is the late connection's
    rng = random.Random("slots")
    plans = [region_plan(rng, i) for i in range(n + 1)]
    sock = str(tmp_path / "sock")
    store = tiered.open(str(tmp_path / "store"), sync=False)
    vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid", durability="sync")
    vol.checkpoint("cp")
    server = ServerThread(vol, make_image(tmp_path / "img", size), sock)
    problems: list[str] = []

    def region_map(i: int) -> list[tuple[int, int]]:
        """qemu:dirty-bitmap:cp of region i once its writes are acknowledged: (length, dirty) runs."""
        dirty = chunks_of((off, len(data)) for off, data in plans[i])
        runs: list[tuple[int, int]] = []
        for c in range(i * REGION // G, (i + 1) * REGION // G):
            flag = p.STATE_DIRTY if c in dirty else 0
            if runs and runs[-1][1] == flag:
                runs[-1] = (runs[-1][0] + G, flag)
            else:
                runs.append((G, flag))
        return runs

    async def write_and_check(c: Client, i: int) -> None:
        plan = plans[i]
        await asyncio.gather(*(c.write(off, data, fua=k % 3 == 0) for k, (off, data) in enumerate(plan)))
        back = await asyncio.gather(*(c.read(off, len(data)) for off, data in plan))
        for (off, data), got in zip(plan, back):
            if got != data:
                problems.append(f"connection {i}: read [{off}, +{len(data)}) differs from what it wrote")
        if c.contexts:
            status = await c.block_status(i * REGION, REGION)
            if status.get(CONTEXT) != region_map(i):
                problems.append(f"connection {i}: block status {status} of its region, not {region_map(i)}")

    async def main() -> None:
        negotiated, finished = asyncio.Event(), asyncio.Event()
        counts = {"negotiated": 0, "finished": 0}

        async def session(i: int) -> Client:
            # half the connections get simple replies, the others structured ones and the dirty bitmap
            c = await Client.connect(sock, structured=i % 2 == 0, contexts=[CONTEXT] if i % 2 == 0 else None)
            assert bool(c.contexts) == (i % 2 == 0), f"connection {i}: selected contexts {c.contexts}"
            counts["negotiated"] += 1
            if counts["negotiated"] == n:
                negotiated.set()
            await negotiated.wait()  # every connection is open before anyone writes
            await write_and_check(c, i)
            counts["finished"] += 1
            if counts["finished"] == n:
                finished.set()
            await finished.wait()  # and stays open until everyone has read back
            return c

        clients = await asyncio.gather(*(session(i) for i in range(n)))
        assert not problems, "\n".join(problems)
        assert all(not c.closed.done() for c in clients), "a connection closed before the end of the test"

        async def greeting(limit: float) -> bytes:
            reader, writer = await asyncio.open_unix_connection(sock)
            try:
                return await asyncio.wait_for(reader.read(18), limit)
            finally:
                writer.close()

        extra = await greeting(30)
        assert extra == b"", f"a connection beyond {n} open ones was served (it got {len(extra)} greeting bytes)"
        await clients[0].disconnect()
        late = await connect_when_free(sock, f"a new connection after one of {n} disconnected")
        await write_and_check(late, n)
        assert not problems, "\n".join(problems)
        await asyncio.gather(late.disconnect(), *(c.disconnect() for c in clients[1:]))

    try:
        run(main())
        written = [(off, len(data)) for plan in plans for off, data in plan]
        want = extents_of(chunks_of(written), size)
        got = list(vol.changed_since("cp"))
        assert got == want, (
            f"changed_since misses chunks {sorted(chunks_of(want) - chunks_of(got))} "
            f"and holds unwritten chunks {sorted(chunks_of(got) - chunks_of(want))}"
        )
    finally:
        server.stop()
        store.close()
    expected = bytearray(size)
    for plan in plans:
        for off, data in plan:
            expected[off : off + len(data)] = data
    image = (tmp_path / "img").read_bytes()
    wrong = [i for i in range(0, size, 4096) if image[i : i + 4096] != expected[i : i + 4096]]
    assert not wrong, f"the image differs from the bytes written in the 4 KiB blocks at {wrong[:10]}"


def test_control_connections_take_no_nbd_slot(tmp_path: Path) -> None:
    """max_connections caps NBD clients: a control connection (a backup
    tool's `tiered ctl`) open meanwhile must not make an NBD client be refused."""
    limit = 4
    sock, ctl = str(tmp_path / "sock"), str(tmp_path / "ctl")
    with tiered.open(str(tmp_path / "store"), sync=False) as store:
        vol = store.create_volume("vda", size=16 * G, granularity=G, durability="sync")
        server = ServerThread(vol, make_image(tmp_path / "img", 16 * G), sock, max_connections=limit)
        asyncio.run_coroutine_threadsafe(server.server.listen_control(ctl), server.loop).result(10)

        async def main() -> None:
            reader, writer = await asyncio.open_unix_connection(ctl)
            writer.write(b'{"op": "stats"}\n')
            assert b'"ok": true' in await reader.readline()  # the control connection is being served
            clients = []
            for i in range(limit):
                try:
                    clients.append(await Client.connect(sock))
                except Exception as exc:
                    raise AssertionError(
                        f"NBD client {i + 1} of max_connections={limit} was refused while one control "
                        f"connection was open: {exc}"
                    ) from None
            for c in clients:
                await c.disconnect()
            writer.close()

        try:
            run(main())
        finally:
            server.stop()


# -- a random write load, for the kill -9, SIGTERM and vanishing-client tests -------------


@dataclasses.dataclass(eq=False)
class Op:
    id: int
    kind: int  # p.CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES or CMD_FLUSH
    offset: int = 0
    length: int = 0
    fua: bool = False
    target: "Op | None" = None  # the acknowledged write whose bytes this TRIM/WRITE_ZEROES replaces
    replaced_by: "Op | None" = None  # the later TRIM/WRITE_ZEROES sent to this write's bytes
    sent: bool = False  # may have reached the server
    acked: bool = False
    durable: bool = False  # acknowledged with FUA, or before an acknowledged FLUSH was sent
    covers: int = 0  # FLUSH: how many ops were acknowledged when it was sent

    def payload(self) -> bytes:
        return random.Random(self.id).randbytes(self.length)

    def __str__(self) -> str:
        name = {p.CMD_WRITE: "WRITE", p.CMD_TRIM: "TRIM", p.CMD_WRITE_ZEROES: "WRITE_ZEROES"}.get(self.kind, "FLUSH")
        replacing = f" (over #{self.target.id})" if self.target is not None else ""
        return f"#{self.id} {name}{' FUA' if self.fua else ''} [{self.offset}, +{self.length}){replacing}"


class Load:
    """Random requests over several connections, ``depth`` in flight on each.

    Every WRITE and every TRIM/WRITE_ZEROES of fresh bytes takes bytes no
    other request touches (regions may share chunks, never bytes); a
    TRIM/WRITE_ZEROES may instead replace exactly the bytes of one earlier
    acknowledged WRITE.  So what each byte must hold after a crash is known:
    see :meth:`expected`."""

    def __init__(self, rng: random.Random, size: int, depth: int = 16, on_ack=None) -> None:
        self.rng, self.size, self.depth, self.on_ack = rng, size, depth, on_ack
        self.ops: list[Op] = []
        self.acked: list[Op] = []
        self.errors: list[str] = []
        self.reusable: list[Op] = []  # acknowledged writes nothing replaced yet
        self.cursor = 0
        self.stopping = False

    def _fresh(self, length: int) -> int | None:
        gap = self.rng.choice([0, 0, 512 * self.rng.randrange(1, 256)])
        offset = self.cursor + gap
        if offset + length > self.size:
            return None
        self.cursor = offset + length
        return offset

    def next_op(self) -> Op | None:
        rng = self.rng
        op = Op(len(self.ops), rng.choices([p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES, p.CMD_FLUSH], [16, 2, 2, 1])[0])
        if op.kind != p.CMD_FLUSH:
            op.fua = rng.random() < 0.2
            if op.kind != p.CMD_WRITE and self.reusable and rng.random() < 0.6:
                op.target = self.reusable.pop(rng.randrange(len(self.reusable)))
                op.target.replaced_by = op
                op.offset, op.length = op.target.offset, op.target.length
            else:
                op.length = 4096 * round(64 ** rng.random())  # 4 KiB .. 256 KiB, log-uniform
                offset = self._fresh(op.length)
                if offset is None:
                    return None
                op.offset = offset
        self.ops.append(op)
        return op

    async def _one(self, c: Client, op: Op) -> None:
        op.sent = True
        try:
            if op.kind == p.CMD_WRITE:
                await c.write(op.offset, op.payload(), fua=op.fua)
            elif op.kind == p.CMD_TRIM:
                await c.trim(op.offset, op.length, fua=op.fua)
            elif op.kind == p.CMD_WRITE_ZEROES:
                await c.write_zeroes(op.offset, op.length, fua=op.fua, no_hole=op.id % 2 == 0)
            else:
                op.covers = len(self.acked)
                await c.flush()
        except ConnectionError:
            return  # not acknowledged: the server went away
        except NBDError as exc:
            self.errors.append(f"{op}: {exc}")
            return
        op.acked = True
        self.acked.append(op)
        if op.fua:
            op.durable = True
        if op.kind == p.CMD_FLUSH:
            for earlier in self.acked[: op.covers]:
                earlier.durable = True
        elif op.kind == p.CMD_WRITE:
            self.reusable.append(op)
        if self.on_ack is not None:
            self.on_ack(len(self.acked))

    async def drive(self, c: Client) -> None:
        """Keep ``depth`` requests in flight on ``c`` until :meth:`stop`,
        the volume's end, or the connection's end."""
        slots = asyncio.Semaphore(self.depth)
        tasks: set[asyncio.Task[None]] = set()
        while not self.stopping and not c.closed.done():
            await slots.acquire()
            op = None if self.stopping or c.closed.done() else self.next_op()
            if op is None:
                break
            task = asyncio.create_task(self._one(c, op))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
        await asyncio.gather(*tasks)

    def stop(self) -> None:
        self.stopping = True

    # -- what the store and the image must hold -----------------------------------

    def acked_ranges(self) -> list[Op]:
        return [op for op in self.acked if op.kind != p.CMD_FLUSH]

    def missed(self, changed) -> list[str]:
        """The acknowledged requests whose chunks ``changed`` lacks, naming the chunks."""
        have = chunks_of(changed)
        out = []
        for op in self.acked_ranges():
            lost = [c for c in chunk_ids(op.offset, op.length) if c not in have]
            if lost:
                out.append(f"{op}: chunks {lost} ([{lost[0] * G}, ...)) not in changed_since")
        return out

    def sent_chunks(self) -> set[int]:
        return chunks_of((op.offset, op.length) for op in self.ops if op.sent and op.kind != p.CMD_FLUSH)

    def expected(self) -> list[tuple[Op, bytes | None]]:
        """(op, bytes the image must hold at [op.offset, +op.length)) for
        every op whose outcome is known: an acknowledged write nothing was
        sent over, an acknowledged WRITE_ZEROES.  (An acknowledged TRIM
        leaves its bytes unspecified.)"""
        out = []
        for op in self.acked:
            if op.kind == p.CMD_WRITE and op.replaced_by is None:
                out.append((op, op.payload()))
            elif op.kind == p.CMD_WRITE_ZEROES:
                out.append((op, bytes(op.length)))
        return out

    def wrong_data(self, image: str) -> list[str]:
        out = []
        with open(image, "rb") as f:
            for op, want in self.expected():
                f.seek(op.offset)
                got = f.read(op.length)
                if got != want:
                    first = next(i for i in range(op.length) if i >= len(got) or got[i] != want[i])
                    how = "durable (FUA or flushed)" if op.durable else "acknowledged"
                    out.append(f"{op}, {how}: the image differs from byte {op.offset + first} on")
        return out


# -- `tiered serve` subprocesses ---------------------------------------------------------


class Served:
    """`tiered serve --create` in a subprocess, with checkpoint "cp" made through its control socket."""

    def __init__(self, tmp: Path, size: int, durability: str) -> None:
        self.store, self.image, self.sock = str(tmp / "store"), str(tmp / "img"), str(tmp / "sock")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tiered", "serve", self.store, "vda", "--image", self.image,
             "--socket", self.sock, "--create", str(size), "--durability", durability],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        uri = self.proc.stdout.readline().strip()
        if not uri:
            self.proc.kill()
            raise AssertionError(f"tiered serve did not start: {self.proc.communicate()[1]}")
        reply = control_request(self.sock + ".ctl", {"op": "checkpoint", "name": "cp"})
        assert reply["ok"], reply
        self.generation_id = reply["checkpoint"]["generation_id"]

        self.signalled = False

    def kill(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.signalled = True

    def wait(self) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"tiered serve did not exit within 60 s: {err}") from None
        return self.proc.returncode, err


CRASH_SIZE = 256 << 20


def loaded_server(tmp: Path, seed: str, durability: str, sig: int) -> tuple[Served, Load]:
    """Serve, write with 4 connections x 16 in flight, and send ``sig`` to the
    server once a random number of requests was acknowledged."""
    rng = random.Random(seed)
    kill_at = rng.randrange(20, 400)
    served = Served(tmp, CRASH_SIZE, durability)

    def on_ack(n: int) -> None:
        if n == kill_at:
            served.kill(sig)

    load = Load(rng, CRASH_SIZE, depth=16, on_ack=on_ack)

    async def main() -> None:
        clients = await asyncio.gather(*(Client.connect(served.sock) for _ in range(4)))
        await asyncio.gather(*(load.drive(c) for c in clients))
        for c in clients:
            c.close()

    try:
        run(main())
    finally:
        if not served.signalled:  # the volume's end came first, or the test failed
            served.kill(signal.SIGKILL)
    assert len(load.acked) >= kill_at, f"only {len(load.acked)} of {kill_at} requests acknowledged before the end"
    assert not load.errors, "requests failed:\n" + "\n".join(load.errors)
    return served, load


# -- 2. kill -9 under write load ---------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "lazy"])
def test_kill_9_under_write_load(tmp_path: Path, durability: str) -> None:
    """SIGKILL the server while 4 connections write.  Sync durability: the
    reopened volume is flagged unclean, keeps its generation id and its
    answers are exact: every acknowledged WRITE/TRIM/WRITE_ZEROES is in
    changed_since, and nothing that no request touched.  Lazy: acknowledged
    requests are in the answer too, as a flagged whole-volume superset with
    a new generation id when marks were lost.  Either way the image holds
    the data of every acknowledged write (the page cache outlives the
    process; FUA and FLUSH would be needed for a power loss)."""
    totals = {"trials": 0, "acked": 0, "durable": 0, "checked_bytes": 0, "unclean": 0, "missed": 0}
    for trial in range(CRASH_TRIALS):
        tmp = tmp_path / f"t{trial}"
        tmp.mkdir()
        served, load = loaded_server(tmp, f"kill-{durability}-{trial}", durability, signal.SIGKILL)
        rc, err = served.wait()
        where = f"trial {trial} ({len(load.acked)} acknowledged)"
        assert rc == -signal.SIGKILL, f"{where}: the server exited {rc} before it was killed: {err}"
        with tiered.open(served.store) as store:
            vol = store.volume("vda")
            changed = vol.changed_since("cp")
            missed = load.missed(changed)
            totals["missed"] += len(missed)
            assert not missed, f"{where}: acknowledged requests missing after kill -9:\n" + "\n".join(missed)
            if durability == "sync":
                assert vol.unclean_shutdown, f"{where}: a sync volume killed mid-write reopened without unclean_shutdown"
                assert changed.exact, f"{where}: a sync volume's answer after kill -9 is not exact"
                assert vol.generation_id == served.generation_id, f"{where}: the generation id changed"
                extra = chunks_of(changed) - load.sent_chunks()
                assert not extra, f"{where}: chunks {sorted(extra)[:20]} are marked though no request touched them"
            elif vol.unclean_shutdown:
                assert list(changed) == [(0, CRASH_SIZE)] and not changed.exact, f"{where}: lazy answer {changed}"
                assert vol.generation_id != served.generation_id, f"{where}: lazy marks were lost, same generation id"
            else:  # killed right after a FLUSH persisted every mark
                assert changed.exact and vol.generation_id == served.generation_id, where
            totals["unclean"] += vol.unclean_shutdown
        wrong = load.wrong_data(served.image)
        assert not wrong, f"{where}: acknowledged data missing from the image:\n" + "\n".join(wrong[:20])
        totals["trials"] += 1
        totals["acked"] += len(load.acked_ranges())
        totals["durable"] += sum(op.durable for op in load.acked_ranges())
        totals["checked_bytes"] += sum(op.length for op, _ in load.expected())
    print(f"kill -9 {durability}: {totals}")


# -- 3. a client vanishing mid-request ------------------------------------------------------


def test_clients_vanishing_mid_request(tmp_path: Path, caplog) -> None:
    """While 3 connections write, clients vanish: one inside a request
    header, one after half a WRITE's payload, one with 8 large writes in
    flight and half of a ninth.  The others go on being served, a new
    connection works, nothing acknowledged is lost, and the server logs no
    error."""
    caplog.set_level(logging.INFO, logger="tiered.nbd")
    size = 64 << 20
    sock = str(tmp_path / "sock")
    store = tiered.open(str(tmp_path / "store"), sync=False)
    vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid", durability="sync")
    vol.checkpoint("cp")
    # 3 steady clients and one more: each vanished client must free its slot
    server = ServerThread(vol, make_image(tmp_path / "img", size), sock, max_connections=4)
    vanish_at = size - (8 << 20)  # the vanishing clients write here, the load below, the late client between
    late_at = vanish_at - G
    acks = asyncio.Event()
    load = Load(random.Random("vanish"), late_at, depth=16, on_ack=lambda n: n % 40 == 0 and acks.set())

    async def acked_more(n: int) -> None:
        target = len(load.acked) + n
        while len(load.acked) < target:
            acks.clear()
            await acks.wait()

    async def vanish(send: bytes) -> None:
        c = await connect_when_free(sock, "the 4th slot, after a client vanished")
        c.writer.write(send)
        await c.writer.drain()
        c.close()

    def header(kind: int, offset: int, length: int, cookie: int = 1) -> bytes:
        return p.REQUEST.pack(p.REQUEST_MAGIC, 0, kind, cookie, offset, length)

    big = 1 << 20

    async def main() -> None:
        clients = [await Client.connect(sock) for _ in range(3)]
        driving = asyncio.gather(*(load.drive(c) for c in clients))
        await acked_more(40)
        await vanish(header(p.CMD_WRITE, vanish_at, 4096)[:13])
        await acked_more(40)
        await vanish(header(p.CMD_WRITE, vanish_at, big) + bytes(big // 2))
        await acked_more(40)
        await vanish(
            b"".join(header(p.CMD_WRITE, vanish_at + k * big, big, k) + bytes(big) for k in range(8))
            + header(p.CMD_WRITE, vanish_at, big, 9) + bytes(big // 2)
        )
        await acked_more(80)
        load.stop()
        await driving
        assert all(not c.closed.done() for c in clients), "a steady connection was closed"
        late = await connect_when_free(sock, "the 4th slot, after a client vanished")
        await late.write(late_at, b"late" * 1024, fua=True)
        assert await late.read(late_at, 4096) == b"late" * 1024, "the late connection read back other bytes"
        await asyncio.gather(late.disconnect(), *(c.disconnect() for c in clients))

    try:
        run(main())
        assert not load.errors, "requests failed:\n" + "\n".join(load.errors)
        missed = load.missed(vol.changed_since("cp"))
        assert not missed, "acknowledged requests missing:\n" + "\n".join(missed)
    finally:
        server.stop()
        store.close()
    wrong = load.wrong_data(str(tmp_path / "img"))
    assert not wrong, "acknowledged data missing from the image:\n" + "\n".join(wrong[:20])
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("tiered.nbd") and r.levelno >= logging.ERROR]
    assert not errors, f"the server logged errors: {errors}"


# -- 4. SIGTERM under write load --------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "lazy"])
def test_sigterm_under_write_load(tmp_path: Path, durability: str) -> None:
    """SIGTERM while 4 connections write: the server finishes what it read,
    exits 0, and the store reopens clean with every acknowledged request in
    an exact changed_since, the same generation id, and the acknowledged
    data in the image."""
    served, load = loaded_server(tmp_path, f"term-{durability}", durability, signal.SIGTERM)
    rc, err = served.wait()
    assert rc == 0, f"SIGTERM under load: exit {rc}: {err}"
    with tiered.open(served.store) as store:
        vol = store.volume("vda")
        assert not vol.unclean_shutdown, "the store reopened unclean after SIGTERM"
        changed = vol.changed_since("cp")
        missed = load.missed(changed)
        assert not missed, "acknowledged requests missing after SIGTERM:\n" + "\n".join(missed)
        assert changed.exact and vol.generation_id == served.generation_id
        extra = chunks_of(changed) - load.sent_chunks()
        assert not extra, f"chunks {sorted(extra)[:20]} are marked though no request touched them"
    wrong = load.wrong_data(served.image)
    assert not wrong, "acknowledged data missing from the image:\n" + "\n".join(wrong[:20])
    assert not os.path.exists(served.sock), "the socket outlived the server"
