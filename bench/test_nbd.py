"""The NBD server (``tiered serve``) side by side with ``qemu-nbd``, in the same run.

Every server runs as its own process on a Unix socket in pytest's temporary
directory and serves the same file on the same disk:

* ``qemu-nbd -f raw -t --shared=0 -k SOCK IMAGE`` (QEMU's defaults otherwise:
  ``--cache=writeback``, ``--aio=threads``).  ``--shared=0`` (any number of
  clients) makes it advertise ``CAN_MULTI_CONN``, as tiered does, so
  ``nbdcopy`` opens its 4 connections to both; ``-t`` keeps it running
  between clients.  Started once for the module (fixture ``peers``).
* ``python -m tiered serve STORE vda --image IMAGE --socket SOCK --create
  SIZE --strategy S --durability D``: a fresh store per configuration.

The machine is shared and its throughput drifts within minutes, so every
timed round of tiered is paired with a round of the same client against
qemu-nbd run just before it (in the round's untimed setup, timed apart),
and the goals compare the medians of those pairs.  qemu-nbd's own
benchmark is measured too and printed beside them.

Three measurements, one per goal:

1. *sequential copy*: ``nbdcopy --request-size=1048576`` (4 connections,
   64 requests in flight each, nbdcopy's defaults) of a 1 GiB image, fully
   allocated and filled with random data.  *read*: the export to
   ``null:``; *write*: a 1 GiB file of random data (the image's own
   content) into the export, without ``--flush``.  Before every round,
   untimed: ``fdatasync`` of the image, and for tiered's writes a new
   checkpoint (through the control socket), so that every write round
   dirties every chunk of a fresh period: in sync durability, every write
   waits for a commit.  Goal: tiered hybrid, lazy and sync, at least 0.5x
   qemu-nbd's throughput.
2. *random writes*: ``fio --ioengine=nbd --rw=randwrite --bs=4k
   --iodepth=16`` over the same 1 GiB image, ``FIO_RUNTIME`` seconds per
   round (time based); fio's IOPS.  Before each round, untimed: a new
   checkpoint, and for the *hot* period an nbdcopy write of the whole image
   in it (every chunk then written, in sync durability durable, in the
   period), then ``fdatasync`` and one tiny-put LMDB commit on the same
   disk (the commit time of those moments, printed).  Goal: tiered hybrid,
   lazy and sync, at least 0.3x qemu-nbd's IOPS, in a fresh period and in
   a hot one.
3. *dirty map*: ``nbdinfo --map=qemu:dirty-bitmap:cp URI`` of a 1 TiB volume
   (``TIERED_BENCH_NBD_MAP_SIZE``, e.g. ``64G``, shrinks it) with 1% of its
   64 KiB chunks dirty at random: against ``qemu-nbd -r -f qcow2 -B cp`` of
   a 1 TiB qcow2 whose bitmap ``cp`` (granularity 64 KiB) was dirtied by
   ``qemu-io`` zero writes (``write -z OFF 64k``, sorted, on stdin, cache
   ``unsafe``) at the same chunks, and ``tiered serve --readonly`` of a
   store whose volume got checkpoint ``cp`` and then ``mark_many`` at those
   chunks, with a sparse 1 TiB image.  Both maps are checked against the
   expected extents before timing; the first map of each server is timed
   apart (it loads tiered's query kernels), then one warm-up and
   ``MAP_ROUNDS`` timed rounds.  Goal: every strategy no slower than
   qemu-nbd.

``test_nbd_summary`` (last) prints every ratio and asserts the goals (ratios
of medians measured at the same moments, never absolute times).  A missing
tool skips what needs it; every server process is stopped at teardown,
killed if the test failed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np
import pytest
from benchutil import check, fmt_time, print_report, random_chunks

import tiered

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {name: shutil.which(name) for name in ("qemu-nbd", "qemu-img", "qemu-io", "nbdcopy", "nbdinfo", "fio")}

IMAGE_SIZE = 1 << 30
REQUEST_SIZE = 1 << 20
GRANULARITY = 64 << 10
COPY_ROUNDS = 5
FIO_ROUNDS = 3
FIO_RUNTIME = int(os.environ.get("TIERED_BENCH_NBD_FIO_RUNTIME", "5"))
MAP_ROUNDS = 7
MAP_FRACTION = 0.01
MAP_SEED = 4242
MAP_SIZE_ENV = "TIERED_BENCH_NBD_MAP_SIZE"
STRATEGIES = ("one-bit", "hybrid", "multi-bit")
DURABILITIES = ("lazy", "sync")
QEMU = "qemu-nbd"
# hybrid first: the goals are asserted for hybrid; the others are printed.
TIERED_CONFIGS = [f"tiered/{s}/{d}" for s in ("hybrid", "one-bit", "multi-bit") for d in DURABILITIES]
START_TIMEOUT = 120


def parse_size(text: str) -> int:
    units = {"K": 10, "M": 20, "G": 30, "T": 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * (1 << units[text[-1]]))
    return int(text)


MAP_SIZE = parse_size(os.environ.get(MAP_SIZE_ENV, "1T"))


def needs(*tools: str) -> None:
    missing = [t for t in tools if TOOLS[t] is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


# -- servers ----------------------------------------------------------------------


@dataclass
class Served:
    """A running server process and its export."""

    proc: subprocess.Popen
    uri: str
    control: str | None = None  # tiered's control socket
    checkpoints: list[str] = field(default_factory=list)

    def ask(self, request: dict) -> dict:
        """One request on tiered's control socket (one JSON line each way)."""
        assert self.control is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.control)
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                more = s.recv(65536)
                assert more, "the control socket closed"
                reply += more
        answer = json.loads(reply)
        assert answer["ok"], answer
        return answer

    def checkpoint(self, name: str) -> None:
        self.ask({"op": "checkpoint", "name": name})
        self.checkpoints.append(name)

    def stats(self) -> dict:
        return self.ask({"op": "stats"})["stats"]


def _wait_connectable(path: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}); see its .log beside {path}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {path} after {timeout} s") from None
            time.sleep(0.05)


def _read_uri(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of ``tiered serve`` (its URI, printed once it listens)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"tiered serve printed no URI in {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            more = os.read(fd, 4096)
            if not more:
                raise AssertionError(f"tiered serve exited ({proc.wait()}); see tiered.log beside its socket")
            line += more
    return line.decode().strip()


class Launcher:
    """Starts server processes; :meth:`close` (the fixture's finalizer) stops
    every one still running, whatever happened to the test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: list[subprocess.Popen] = []

    def _sock(self, name: str) -> str:
        path = str(self.directory / f"{name}.sock")
        assert len(path) < 100, f"socket path too long for AF_UNIX: {path}"
        return path

    def _log(self, name: str):
        return open(self.directory / f"{name}.log", "ab")  # a pipe nobody reads could fill up

    def qemu_nbd(self, image: str, *, name: str = "qemu", fmt: str = "raw", extra: tuple[str, ...] = ()) -> Served:
        sock = self._sock(name)
        with self._log(name) as log:
            proc = subprocess.Popen(
                [TOOLS["qemu-nbd"], "-f", fmt, "-t", "--shared=0", "-k", sock, *extra, image],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        self.running.append(proc)
        _wait_connectable(sock, proc, START_TIMEOUT)
        return Served(proc, f"nbd+unix:///?socket={sock}")

    def tiered(self, store: str, image: str, *extra: str) -> Served:
        sock = self._sock("tiered")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with self._log("tiered") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tiered", "serve", store, "vda", "--image", image, "--socket", sock, *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT,
            )
        self.running.append(proc)
        uri = _read_uri(proc, START_TIMEOUT)
        assert uri == f"nbd+unix:///vda?socket={sock}", uri
        return Served(proc, uri, control=sock + ".ctl")

    def stop(self, served: Served) -> int:
        """SIGTERM, then wait; returns the exit status (tiered: 0 once it
        closed every connection and the store)."""
        proc = served.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        return proc.returncode

    def close(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.running.clear()


@pytest.fixture
def launch(tmp_path_factory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("srv"))
    try:
        yield launcher
    finally:
        launcher.close()


class Peers:
    """The qemu-nbd servers, started once for the module: the raw image of
    the copies and random writes, and the qcow2 with bitmap ``cp``."""

    def __init__(self, directory: Path) -> None:
        self.launcher = Launcher(directory)
        self.served: dict[str, Served] = {}

    def raw(self, image: str) -> Served:
        if "raw" not in self.served:
            self.served["raw"] = self.launcher.qemu_nbd(image, name="raw")
        return self.served["raw"]

    def bitmap(self, qcow2: str) -> Served:
        if "bitmap" not in self.served:
            self.served["bitmap"] = self.launcher.qemu_nbd(qcow2, name="bitmap", fmt="qcow2", extra=("-r", "-B", "cp"))
        return self.served["bitmap"]


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[Peers]:
    made = Peers(tmp_path_factory.mktemp("peer"))
    try:
        yield made
    finally:
        made.launcher.close()


def start_tiered(launch: Launcher, config: str, image: str, directory: Path) -> Served:
    """tiered serving a fresh store, for config "tiered/STRATEGY/DURABILITY"."""
    _, strategy, durability = config.split("/")
    store = directory / f"store-{strategy}-{durability}"
    shutil.rmtree(store, ignore_errors=True)
    return launch.tiered(str(store), image, "--create", str(IMAGE_SIZE), "--strategy", strategy,
                         "--durability", durability)


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    assert done.returncode == 0, (argv, done.stderr.decode(errors="replace"))
    return done


def tiny_put(env: lmdb.Environment, i: int) -> float:
    """Seconds of one LMDB commit of one tiny put (fsync), on the image's disk."""
    t = time.perf_counter()
    with env.begin(write=True) as txn:
        txn.put(b"k", i.to_bytes(8, "little"))
    return time.perf_counter() - t


def fdatasync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


# -- data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_files(tmp_path_factory) -> dict[str, str]:
    """A 1 GiB file of random data (fixed seed) and the image, a copy of it
    (fully allocated: every read returns data from the file)."""
    needs("qemu-nbd")  # every test using these files compares with it
    directory = tmp_path_factory.mktemp("nbdcopy")
    data, image = directory / "data", directory / "image"
    rng = np.random.default_rng(20251130)
    piece = 64 << 20
    with open(data, "wb") as f:
        for _ in range(IMAGE_SIZE // piece):
            f.write(rng.bytes(piece))
    shutil.copyfile(data, image)
    fdatasync(str(data))
    fdatasync(str(image))
    return {"dir": str(directory), "data": str(data), "image": str(image)}


# -- 1. sequential copies with nbdcopy ----------------------------------------------------


COPY_CASES = [("read", c) for c in [QEMU, "tiered/hybrid/lazy", "tiered/hybrid/sync"]] + [
    ("write", c) for c in [QEMU, *TIERED_CONFIGS]
]


def copy_argv(direction: str, uri: str, data: str) -> list[str]:
    argv = [TOOLS["nbdcopy"], f"--request-size={REQUEST_SIZE}"]
    return argv + ([uri, "null:"] if direction == "read" else [data, uri])


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@pytest.mark.parametrize(("direction", "config"), COPY_CASES, ids=[f"{d}-{c}" for d, c in COPY_CASES])
def test_nbdcopy(benchmark, record, launch, peers, copy_files, direction, config):
    needs("nbdcopy", "qemu-nbd", "nbdinfo")
    benchmark.group = f"nbd: nbdcopy {direction} of 1 GiB, 1 MiB requests (per round)"
    image, data = copy_files["image"], copy_files["data"]
    qemu = peers.raw(image)
    qemu_argv = copy_argv(direction, qemu.uri, data)
    if config == QEMU:
        served = qemu
    else:
        served = start_tiered(launch, config, image, Path(copy_files["dir"]))
    argv = copy_argv(direction, served.uri, data)
    paired: list[float] = []  # qemu-nbd's rounds, each just before one of tiered's

    def setup() -> None:
        if served is not qemu:
            fdatasync(image)
            paired.append(timed(lambda: run(qemu_argv)))
        fdatasync(image)
        if served.control is not None and direction == "write":
            served.checkpoint(f"r{len(paired)}")

    benchmark.pedantic(lambda: run(argv), setup=setup, rounds=COPY_ROUNDS, warmup_rounds=1)
    info: dict = {}
    if paired:
        info["qemu_paired_s"] = float(np.median(paired[1:]))  # the warm-up's pair left out
    if served.control is not None:
        stats = served.stats()
        info |= {"sync_writes": stats.get("sync_writes"), "sync_commits": stats.get("sync_commits")}
        if direction == "write":
            # the last round dirtied the whole image in its period
            lines = run([TOOLS["nbdinfo"], f"--map=qemu:dirty-bitmap:{served.checkpoints[-1]}", served.uri]).stdout
            assert lines.split()[:4] == [b"0", str(IMAGE_SIZE).encode(), b"1", b"dirty"], lines[:200]
        assert launch.stop(served) == 0
    record(benchmark, f"copy/{direction}/{config}", bytes=IMAGE_SIZE, **info)


# -- 2. random 4 KiB writes with fio --------------------------------------------------------


def fio_iops(uri: str) -> tuple[float, dict]:
    done = run([TOOLS["fio"], "--name=randwrite", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
                "--iodepth=16", f"--size={IMAGE_SIZE}", "--time_based", f"--runtime={FIO_RUNTIME}",
                "--output-format=json"], timeout=FIO_RUNTIME + 120)
    text = done.stdout.decode()
    report = json.loads(text[text.index("{"):])  # the nbd engine prints a line before the JSON
    job = report["jobs"][0]
    assert job["error"] == 0, job
    write = job["write"]
    return float(write["iops"]), {"ios": write["total_ios"], "clat_mean_us": write["clat_ns"]["mean"] / 1e3,
                                  "clat_p99_us": write["clat_ns"]["percentile"]["99.000000"] / 1e3}


FIO_CASES = [(QEMU, "any")] + [(c, "fresh") for c in TIERED_CONFIGS] + [
    (c, "hot") for c in ("tiered/hybrid/lazy", "tiered/hybrid/sync")
]


@pytest.mark.parametrize(("config", "period"), FIO_CASES, ids=[c if c == QEMU else f"{c}-{p}" for c, p in FIO_CASES])
def test_fio_randwrite(benchmark, record, launch, peers, copy_files, config, period):
    needs("fio", "qemu-nbd", *(("nbdcopy",) if period == "hot" else ()))
    benchmark.group = f"nbd: fio randwrite 4 KiB, iodepth 16, {FIO_RUNTIME} s (per round)"
    image = copy_files["image"]
    qemu = peers.raw(image)
    served = qemu if config == QEMU else start_tiered(launch, config, image, Path(copy_files["dir"]))
    rounds: list[tuple[float, dict]] = []
    paired: list[float] = []  # qemu-nbd's IOPS, a round just before each of tiered's
    deltas: list[tuple[int, int]] = []  # (sync writes, sync commits) of each round
    mark: dict = {}
    puts: list[float] = []
    probe = lmdb.open(str(Path(copy_files["dir"]) / "commit-probe"), map_size=1 << 24, sync=True, metasync=True)

    def round_done() -> None:
        now = served.stats()
        deltas.append((now["sync_writes"] - mark["start"]["sync_writes"],
                       now["sync_commits"] - mark["start"]["sync_commits"]))

    def setup() -> None:
        if served.control is not None and "start" in mark:
            round_done()
        if served is not qemu:
            fdatasync(image)
            paired.append(fio_iops(qemu.uri)[0])
        if served.control is not None:
            served.checkpoint(f"f{len(rounds)}")
            if period == "hot":
                # every chunk written (and in sync durability durable) in the new period
                run(copy_argv("write", served.uri, copy_files["data"]))
        fdatasync(image)
        puts.append(tiny_put(probe, len(puts)))
        if served.control is not None:
            mark["start"] = served.stats()

    benchmark.pedantic(lambda: rounds.append(fio_iops(served.uri)), setup=setup, rounds=FIO_ROUNDS,
                       warmup_rounds=0)
    if served.control is not None:
        round_done()
    probe.close()
    info: dict = {"period": period, "iops_rounds": [round(r[0], 1) for r in rounds],
                  "iops": float(np.median([r[0] for r in rounds])),
                  "clat_mean_us": float(np.median([r[1]["clat_mean_us"] for r in rounds])),
                  "clat_p99_us": float(np.median([r[1]["clat_p99_us"] for r in rounds])),
                  "ios": int(np.median([r[1]["ios"] for r in rounds])),
                  "tiny_put_ms": float(np.median(puts)) * 1e3}
    if paired:
        info |= {"qemu_paired_iops": float(np.median(paired)), "qemu_paired_rounds": [round(x, 1) for x in paired]}
    if deltas:
        info |= {"sync_writes": int(np.median([d[0] for d in deltas])),
                 "sync_commits": int(np.median([d[1] for d in deltas]))}
    if served is not qemu:
        assert launch.stop(served) == 0
    record(benchmark, f"fio/{config}/{period}", **info)


# -- 3. the dirty map of a 1 TiB volume -------------------------------------------------------


@dataclass
class DirtyMap:
    directory: Path
    size: int
    chunks: np.ndarray  # sorted dirty chunk indices
    expected: list[tuple[int, int, int]]  # (offset, length, type) of the whole map
    qcow2: str | None = None
    qcow2_seconds: float | None = None
    stores: dict[str, str] = field(default_factory=dict)
    sparse: str | None = None
    qemu_first_s: float | None = None


def expected_map(chunks: np.ndarray, size: int) -> list[tuple[int, int, int]]:
    """The map nbdinfo prints: dirty runs of adjacent chunks (type 1) and the
    clean runs between them (type 0), covering [0, size)."""
    starts = chunks[np.concatenate(([True], np.diff(chunks) != 1))]
    ends = chunks[np.concatenate((np.diff(chunks) != 1, [True]))] + 1
    out: list[tuple[int, int, int]] = []
    pos = 0
    for s, e in zip((starts * GRANULARITY).tolist(), (ends * GRANULARITY).tolist()):
        e = min(e, size)
        if s > pos:
            out.append((pos, s - pos, 0))
        out.append((s, e - s, 1))
        pos = e
    if pos < size:
        out.append((pos, size - pos, 0))
    return out


def parse_map(text: bytes) -> list[tuple[int, int, int]]:
    rows = []
    for line in text.decode().splitlines():
        off, length, kind, name = line.split()
        assert name == ("dirty" if kind == "1" else "clean"), line
        rows.append((int(off), int(length), int(kind)))
    return rows


@pytest.fixture(scope="module")
def dirty_map(tmp_path_factory) -> DirtyMap:
    """The dirty chunks (1% of MAP_SIZE / 64 KiB, fixed seed); the qcow2 and
    the stores are built on first use and kept for the module."""
    n_chunks = -(-MAP_SIZE // GRANULARITY)
    chunks = np.sort(random_chunks(MAP_FRACTION, MAP_SEED, n_chunks))
    return DirtyMap(tmp_path_factory.mktemp("map"), MAP_SIZE, chunks, expected_map(chunks, MAP_SIZE))


def build_qcow2(m: DirtyMap) -> str:
    if m.qcow2 is None:
        path = str(m.directory / "image.qcow2")
        started = time.perf_counter()
        run([TOOLS["qemu-img"], "create", "-q", "-f", "qcow2", path, str(m.size)])
        run([TOOLS["qemu-img"], "bitmap", "--add", "--granularity", str(GRANULARITY), path, "cp"])
        commands = "".join(f"write -z {c * GRANULARITY} {min(GRANULARITY, m.size - c * GRANULARITY)}\n"
                           for c in m.chunks.tolist())
        # Commands on stdin (a -c per write would pass the argument limit);
        # cache=unsafe skips the flush qcow2 makes after each metadata update.
        done = subprocess.run([TOOLS["qemu-io"], "-t", "unsafe", "-f", "qcow2", path], input=commands.encode(),
                              capture_output=True, timeout=3600)
        assert done.returncode == 0 and b"error" not in done.stderr.lower(), done.stderr.decode()[-2000:]
        m.qcow2_seconds = time.perf_counter() - started
        m.qcow2 = path
    return m.qcow2


def build_store(m: DirtyMap, strategy: str) -> str:
    if strategy not in m.stores:
        path = str(m.directory / f"store-{strategy}")
        with tiered.open(path) as store:
            vol = store.create_volume("vda", m.size, GRANULARITY, strategy=strategy)
            vol.checkpoint("cp")
            offsets = m.chunks * GRANULARITY
            vol.mark_many(offsets, np.minimum(GRANULARITY, m.size - offsets))
        m.stores[strategy] = path
    if m.sparse is None:
        m.sparse = str(m.directory / "sparse")
        with open(m.sparse, "wb") as f:
            f.truncate(m.size)
    return m.stores[strategy]


MAP_CASES = [QEMU, *(f"tiered/{s}" for s in STRATEGIES)]


def map_argv(uri: str) -> list[str]:
    return [TOOLS["nbdinfo"], "--map=qemu:dirty-bitmap:cp", uri]


def checked_map(m: DirtyMap, uri: str) -> float:
    """Seconds of one nbdinfo --map, whose output must be the expected map."""
    started = time.perf_counter()
    text = run(map_argv(uri)).stdout
    seconds = time.perf_counter() - started
    assert parse_map(text) == m.expected, f"the map of {uri} differs from the dirty chunks"
    return seconds


def quiet_map(uri: str) -> None:
    done = subprocess.run(map_argv(uri), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert done.returncode == 0, done.stderr


def qemu_bitmap(peers: Peers, m: DirtyMap) -> Served:
    """qemu-nbd serving the qcow2's bitmap; its map checked on first use."""
    needs("qemu-nbd", "qemu-img", "qemu-io")
    fresh = "bitmap" not in peers.served
    served = peers.bitmap(build_qcow2(m))
    if fresh:
        m.qemu_first_s = checked_map(m, served.uri)
    return served


@pytest.mark.parametrize("config", MAP_CASES)
def test_dirty_map(benchmark, record, launch, peers, dirty_map, config):
    needs("nbdinfo", "qemu-nbd")
    size_name = f"{dirty_map.size / (1 << 40):g} TiB" if dirty_map.size >= 1 << 40 else f"{dirty_map.size >> 30} GiB"
    benchmark.group = f"nbd: nbdinfo --map=qemu:dirty-bitmap of {size_name}, 1% of 64 KiB chunks dirty (per round)"
    qemu = qemu_bitmap(peers, dirty_map)
    info: dict = {"size": dirty_map.size, "dirty_chunks": int(dirty_map.chunks.size), "map_lines": len(dirty_map.expected),
                  "qcow2_build_s": dirty_map.qcow2_seconds, "qemu_first_s": dirty_map.qemu_first_s}
    if config == QEMU:
        served = qemu
    else:
        strategy = config.split("/")[1]
        served = launch.tiered(build_store(dirty_map, strategy), dirty_map.sparse, "--readonly")
        info["first_s"] = checked_map(dirty_map, served.uri)
    paired: list[float] = []  # qemu-nbd's map, just before each of tiered's

    def setup() -> None:
        if served is not qemu:
            paired.append(timed(lambda: quiet_map(qemu.uri)))

    benchmark.pedantic(lambda: quiet_map(served.uri), setup=setup, rounds=MAP_ROUNDS, warmup_rounds=1)
    if paired:
        info |= {"qemu_paired_s": float(np.median(paired[1:])), "qemu_paired_rounds": paired[1:]}
    if served is not qemu:
        assert launch.stop(served) == 0
    record(benchmark, f"map/{config}", **info)


# -- the goals, from this run's medians ---------------------------------------------------------


@pytest.mark.bench_summary
def test_nbd_summary(medians, capsys):
    if not medians:
        pytest.skip("NBD benchmarks not measured in this run")
    lines: list[str] = []
    verdicts: list[tuple[str, bool]] = []
    mib = 1 << 20

    def goal(config: str) -> bool:
        return config.startswith("tiered/hybrid/")

    for direction in ("read", "write"):
        cases = [c for c in TIERED_CONFIGS if f"copy/{direction}/{c}" in medians]
        ref = medians.get(f"copy/{direction}/{QEMU}")
        if not (cases or ref):
            continue
        lines.append(f"1. nbdcopy {direction}, 1 GiB, 1 MiB requests, MiB/s (median round); "
                     f"against the qemu-nbd round run just before each"
                     + (f"; qemu-nbd's own benchmark: {IMAGE_SIZE / ref['median'] / mib:.0f}" if ref else ""))
        for config in cases:
            m = medians[f"copy/{direction}/{config}"]
            rate, peer = IMAGE_SIZE / m["median"] / mib, IMAGE_SIZE / m["qemu_paired_s"] / mib
            ratio = m["qemu_paired_s"] / m["median"]
            extra = ""
            if m.get("sync_writes"):
                extra = (f"; per round {m['sync_writes'] / (COPY_ROUNDS + 1):.0f} writes synced in "
                         f"{m['sync_commits'] / (COPY_ROUNDS + 1):.0f} commits")
            lines.append(f"  {config:20s} {rate:6.0f}  qemu-nbd {peer:6.0f}  {ratio:.2f}x{extra}")
            if goal(config):
                verdicts.append((f"nbdcopy {direction}, {config}: >= 0.5x qemu-nbd's throughput (is {ratio:.2f}x)",
                                 ratio >= 0.5))

    ref = medians.get(f"fio/{QEMU}/any")
    cases = [(c, p) for p in ("fresh", "hot") for c in TIERED_CONFIGS if f"fio/{c}/{p}" in medians]
    if cases or ref:
        lines.append(f"2. fio randwrite 4 KiB, iodepth 16, {FIO_RUNTIME} s rounds, IOPS (median round); against the "
                     "qemu-nbd round run just before each"
                     + (f"; qemu-nbd's own benchmark: {ref['iops']:.0f} ({ref['clat_mean_us']:.0f} us)" if ref else ""))
        for config, period in cases:
            m = medians[f"fio/{config}/{period}"]
            ratio = m["iops"] / m["qemu_paired_iops"]
            extra = ""
            if m.get("sync_writes"):
                per = m["sync_writes"] / m["sync_commits"] if m["sync_commits"] else float("nan")
                extra = (f"; {m['sync_writes']} of {m['ios']} writes synced, {per:.1f} per commit, "
                         f"tiny-put commit {m['tiny_put_ms']:.2f} ms")
            lines.append(f"  {config:20s} {period:5s} {m['iops']:7.0f} ({m['clat_mean_us']:5.0f} us)  qemu-nbd "
                         f"{m['qemu_paired_iops']:7.0f}  {ratio:.2f}x{extra}")
            if goal(config):
                verdicts.append((f"fio randwrite, {config}, {period} period: >= 0.3x qemu-nbd's IOPS "
                                 f"(is {ratio:.2f}x)", ratio >= 0.3))

    ref = medians.get(f"map/{QEMU}")
    cases = [s for s in STRATEGIES if f"map/tiered/{s}" in medians]
    if cases or ref:
        any_m = ref or medians[f"map/tiered/{cases[0]}"]
        lines.append(f"3. nbdinfo --map=qemu:dirty-bitmap:cp, {any_m['size'] >> 30} GiB, {any_m['dirty_chunks']} "
                     f"dirty chunks, {any_m['map_lines']} extents (qcow2 built in {any_m['qcow2_build_s']:.1f} s, "
                     f"qemu-nbd's first map {fmt_time(any_m['qemu_first_s'])})"
                     + (f"; qemu-nbd's own benchmark: {fmt_time(ref['median'])}" if ref else ""))
        for strategy in cases:
            m = medians[f"map/tiered/{strategy}"]
            ratio = m["median"] / m["qemu_paired_s"]
            lines.append(f"  tiered/{strategy:9s} {fmt_time(m['median']):>9s} (first {fmt_time(m['first_s'])})  "
                         f"qemu-nbd {fmt_time(m['qemu_paired_s']):>9s}  {ratio:.2f}x qemu-nbd's time")
            verdicts.append((f"dirty map, tiered/{strategy}: no slower than qemu-nbd (is {ratio:.2f}x its time)",
                             ratio <= 1))
    lines.append("goals:")
    lines += check(verdicts)
    print_report(capsys, "NBD: tiered serve against qemu-nbd", lines)
    assert all(ok for _, ok in verdicts), [what for what, ok in verdicts if not ok]
