"""Seedable synthetic write workloads, streamed as numpy batches.

A :class:`Workload` describes the writes; :func:`generate` turns it into a
stream of :class:`~tiered.batches.WriteBatch` and :class:`CheckpointMark`
events, in order::

    for ev in generate(Workload("zipf", volume_size=1 << 40, writes=10**6, checkpoint_every=10**5)):
        if isinstance(ev, WriteBatch):
            vol.mark_many(ev.offsets, ev.lengths)
        else:
            vol.checkpoint(f"c{ev.index}")

``CheckpointMark(i)`` comes before the writes of period ``i``, starting with
``CheckpointMark(0)`` before any write (marks before a volume's first
checkpoint are not tracked, so a replayer wants one first).  Batches never
straddle a mark, and memory stays O(batch) however many writes there are.

The same workload always gives the same events.  The batch size is part of
the description: changing it changes how random numbers are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .batches import WriteBatch
from ..checks import as_int
from ..errors import InvalidArgumentError

__all__ = ["KINDS", "CheckpointMark", "Event", "Workload", "WriteBatch", "generate", "schedule_checkpoints"]

KINDS = ("uniform", "zipf", "sequential", "database")

DEFAULT_WRITE_SIZE = 4096
DATABASE_PAGE_SIZE = 8192
DATABASE_LOG_REGION = 1 / 16

# The scatter of zipf ranks multiplies in uint64 one byte of the multiplier
# at a time; that cannot overflow while block counts stay below this.
MAX_ZIPF_BLOCKS = 1 << 55


@dataclass(frozen=True)
class CheckpointMark:
    """Take checkpoint number ``index`` here (before the writes that follow)."""

    index: int


Event = WriteBatch | CheckpointMark

# Places writes of the given lengths: returns their aligned offsets.
Placer = Callable[[np.random.Generator, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Workload:
    """What to write.  Every field is checked when the workload is made.

    Write sizes are ``write_size`` bytes, or drawn from ``sizes`` with
    ``weights`` (uniform if omitted); by default 4 KiB, or 8 KiB pages for
    ``database``.  Offsets are multiples of ``align``.

    Checkpoints come every ``checkpoint_every`` writes, or every
    ``checkpoint_seconds`` of trace time; ``iops`` gives the writes Poisson
    arrival times (and is required for ``checkpoint_seconds``).

    ``log_region`` is the fraction of the volume, at its start, that the log
    of ``sequential`` (default: all of it) or ``database`` (default 1/16)
    wraps around in.  ``database`` sends ``log_fraction`` of its writes to
    the log and the rest to random pages in the remainder, zipf-skewed with
    ``zipf_a`` if ``skewed``.
    """

    kind: str
    volume_size: int
    writes: int
    write_size: int | None = None
    sizes: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    align: int = 4096
    seed: int = 0
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    iops: float | None = None
    batch: int = 65536
    zipf_a: float = 1.2
    log_region: float | None = None
    log_fraction: float = 0.2
    skewed: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        for name in ("volume_size", "writes", "align", "batch"):
            _positive_int(getattr(self, name), name)
        if as_int(self.seed, "seed") < 0:
            raise InvalidArgumentError(f"seed must be non-negative, got {self.seed}")
        self._check_sizes()
        self._check_clock()
        if not _as_float(self.zipf_a, "zipf_a") > 1:
            raise InvalidArgumentError(f"zipf_a must be greater than 1, got {self.zipf_a}")
        if self.log_region is not None and not 0 < _as_float(self.log_region, "log_region") <= 1:
            raise InvalidArgumentError(f"log_region must be in (0, 1], got {self.log_region}")
        if not 0 <= _as_float(self.log_fraction, "log_fraction") <= 1:
            raise InvalidArgumentError(f"log_fraction must be in [0, 1], got {self.log_fraction}")
        if not isinstance(self.skewed, bool):
            raise InvalidArgumentError(f"skewed must be a bool, got {type(self.skewed).__name__}")
        self._check_layout()

    # -- validation -------------------------------------------------------

    def _check_sizes(self) -> None:
        if self.sizes is not None and self.write_size is not None:
            raise InvalidArgumentError("write_size and sizes are exclusive; give one or the other")
        if self.write_size is not None:
            _positive_int(self.write_size, "write_size")
        if self.sizes is None:
            if self.weights is not None:
                raise InvalidArgumentError("weights needs sizes to weigh")
            return
        sizes = tuple(self.sizes)
        if not sizes:
            raise InvalidArgumentError("sizes must not be empty")
        for s in sizes:
            _positive_int(s, "sizes")
        # Tuples keep the frozen workload hashable even if lists were passed.
        object.__setattr__(self, "sizes", sizes)
        if self.weights is not None:
            weights = tuple(_as_float(w, "weights") for w in self.weights)
            if len(weights) != len(sizes):
                raise InvalidArgumentError(f"weights has {len(weights)} entries but sizes has {len(sizes)}")
            if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
                raise InvalidArgumentError(f"weights must be finite, non-negative and not all zero, got {weights}")
            object.__setattr__(self, "weights", weights)

    def _check_clock(self) -> None:
        if self.checkpoint_every is not None:
            _positive_int(self.checkpoint_every, "checkpoint_every")
            if self.checkpoint_seconds is not None:
                raise InvalidArgumentError("checkpoint_every and checkpoint_seconds are exclusive")
        if self.iops is not None:
            iops = _as_float(self.iops, "iops")
            if not (math.isfinite(iops) and iops > 0):
                raise InvalidArgumentError(f"iops must be a positive finite rate, got {self.iops}")
        if self.checkpoint_seconds is not None:
            secs = _as_float(self.checkpoint_seconds, "checkpoint_seconds")
            if not (math.isfinite(secs) and secs > 0):
                raise InvalidArgumentError(f"checkpoint_seconds must be positive and finite, got {secs}")
            if self.iops is None:
                raise InvalidArgumentError("checkpoint_seconds needs iops, the write rate that gives writes times")

    def _check_layout(self) -> None:
        """Every write must fit in the region its kind sends it to."""
        size_field = "sizes" if self.sizes is not None else "write_size"
        biggest = max(self.size_choices()[0])
        if biggest > self.volume_size:
            raise InvalidArgumentError(
                f"{size_field}: a write of {biggest} bytes is larger than volume_size ({self.volume_size})"
            )
        if self.kind in ("sequential", "database"):
            log = self.log_bytes()
            slot = _round_up(biggest, self.align)
            if slot > log:
                raise InvalidArgumentError(
                    f"log_region: the log region is {log} bytes, too small for a {biggest}-byte write "
                    f"aligned to {self.align}"
                )
        if self.kind == "database" and biggest > self.volume_size - self.log_bytes():
            raise InvalidArgumentError(
                f"log_region leaves {self.volume_size - self.log_bytes()} bytes for data pages, "
                f"less than a {biggest}-byte write"
            )
        zipfian = self.kind == "zipf" or (self.kind == "database" and self.skewed)
        if zipfian and self.volume_size // self.align >= MAX_ZIPF_BLOCKS:
            raise InvalidArgumentError(f"align {self.align} gives too many blocks for zipf; use a larger align")

    # -- derived values ---------------------------------------------------

    def size_choices(self) -> tuple[np.ndarray, np.ndarray]:
        """Write sizes (int64) and their probabilities (float64)."""
        if self.sizes is not None:
            sizes = np.array(self.sizes, np.int64)
            w = np.ones(len(sizes)) if self.weights is None else np.array(self.weights, np.float64)
            return sizes, w / w.sum()
        default = DATABASE_PAGE_SIZE if self.kind == "database" else DEFAULT_WRITE_SIZE
        size = self.write_size if self.write_size is not None else default
        return np.array([size], np.int64), np.ones(1)

    def log_bytes(self) -> int:
        """Length of the log region at the start of the volume (aligned down)."""
        default = DATABASE_LOG_REGION if self.kind == "database" else 1.0
        fraction = default if self.log_region is None else float(self.log_region)
        return int(self.volume_size * fraction) // self.align * self.align


# -- generation -----------------------------------------------------------


def generate(workload: Workload) -> Iterator[Event]:
    """Yield the workload's write batches and checkpoint marks, in order."""
    w = workload
    # Separate streams: the fixed layout (zipf scatter) must not shift the
    # write draws, and vice versa.
    draws, layout = np.random.SeedSequence(w.seed).spawn(2)
    rng = np.random.default_rng(draws)
    place = _placer(w, np.random.default_rng(layout))
    sizes, probs = w.size_choices()
    done = 0
    clock = 0.0
    period = 0
    yield CheckpointMark(0)
    while done < w.writes:
        n = min(w.batch, w.writes - done)
        if w.checkpoint_every is not None:
            n = min(n, (period + 1) * w.checkpoint_every - done)
        lengths = _draw_lengths(rng, sizes, probs, n)
        offsets = place(rng, lengths)
        times = None
        if w.iops is not None:
            times = clock + np.cumsum(rng.exponential(1.0 / w.iops, n))
            clock = float(times[-1])
        done += n
        if w.checkpoint_seconds is not None:
            assert times is not None  # validated: checkpoint_seconds needs iops
            period = yield from _split_by_time(offsets, lengths, times, w.checkpoint_seconds, period)
        else:
            yield WriteBatch(offsets, lengths, times)
            if w.checkpoint_every is not None and done % w.checkpoint_every == 0 and done < w.writes:
                period += 1
                yield CheckpointMark(period)


def schedule_checkpoints(
    batches: Iterable[WriteBatch], every: int | None = None, seconds: float | None = None
) -> Iterator[Event]:
    """Checkpoint marks for a stream without any (a trace): every ``every``
    writes, or every ``seconds`` of the batches' own clock.  Like
    :func:`generate`, the stream starts with ``CheckpointMark(0)``."""
    if (every is None) == (seconds is None):
        raise InvalidArgumentError("give one of every (writes) or seconds (trace time)")
    if every is not None:
        _positive_int(every, "every")
    elif not (math.isfinite(_as_float(seconds, "seconds")) and seconds > 0):
        raise InvalidArgumentError(f"seconds must be positive and finite, got {seconds}")
    yield CheckpointMark(0)
    done = period = 0
    for batch in batches:
        if seconds is not None:
            if batch.times is None:
                raise InvalidArgumentError(
                    "checkpoints every N seconds need timestamps, and these writes have none "
                    "(fio writes them only in iolog version 3): checkpoint every N writes instead"
                )
            period = yield from _split_by_time(batch.offsets, batch.lengths, batch.times, seconds, period)
            continue
        start = 0
        while start < len(batch):
            if done and done % every == 0:
                period += 1
                yield CheckpointMark(period)
            stop = min(len(batch), start + every - done % every)
            times = None if batch.times is None else batch.times[start:stop]
            yield WriteBatch(batch.offsets[start:stop], batch.lengths[start:stop], times)
            done += stop - start
            start = stop


def _split_by_time(
    offsets: np.ndarray, lengths: np.ndarray, times: np.ndarray, seconds: float, period: int
) -> Iterator[Event]:
    """Yield one batch per checkpoint period, with marks between; return the last period."""
    periods = np.floor(times / seconds).astype(np.int64)
    cuts = np.flatnonzero(np.diff(periods)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(times)]))
    for a, b in zip(starts.tolist(), ends.tolist()):
        # Periods without writes still get their mark: checkpoints follow the clock.
        for p in range(period + 1, int(periods[a]) + 1):
            yield CheckpointMark(p)
        period = max(period, int(periods[a]))
        yield WriteBatch(offsets[a:b], lengths[a:b], times[a:b])
    return period


def _draw_lengths(rng: np.random.Generator, sizes: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    if len(sizes) == 1:
        return np.full(n, sizes[0], np.int64)
    return rng.choice(sizes, size=n, p=probs).astype(np.int64, copy=False)


def _placer(w: Workload, layout: np.random.Generator) -> Placer:
    """The offset chooser for the workload's kind."""
    biggest = int(max(w.size_choices()[0]))
    if w.kind == "uniform":
        return _uniform(0, w.volume_size, w.align)
    if w.kind == "zipf":
        return _zipf(0, w.volume_size, w.align, biggest, w.zipf_a, layout)
    if w.kind == "sequential":
        return _Log(0, w.log_bytes(), w.align).place
    log_len = w.log_bytes()
    data_len = w.volume_size - log_len
    log = _Log(0, log_len, w.align).place
    if w.skewed:
        data = _zipf(log_len, data_len, w.align, biggest, w.zipf_a, layout)
    else:
        data = _uniform(log_len, data_len, w.align)
    return _mixed(log, data, w.log_fraction)


def _uniform(start: int, length: int, align: int) -> Placer:
    def place(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
        # Per-write bound, so every write (whatever its size) fits.
        slots = (length - lengths) // align + 1
        return start + rng.integers(0, slots, dtype=np.int64) * align

    return place


def _zipf(start: int, length: int, align: int, biggest: int, a: float, layout: np.random.Generator) -> Placer:
    """Zipf over aligned blocks; rank r goes to block (r * mult + shift) mod n.

    ``mult`` is coprime to n, so the map is a permutation: the hot blocks
    are scattered over the region without an array of all blocks.
    """
    n = (length - biggest) // align + 1  # blocks where even the biggest write fits
    mult = _coprime_multiplier(n, layout)
    shift = int(layout.integers(0, n))

    def place(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
        ranks = _bounded_zipf(rng, a, n, len(lengths))
        blocks = (_mulmod(ranks.astype(np.uint64), mult, n) + np.uint64(shift)) % np.uint64(n)
        return start + blocks.astype(np.int64) * align

    return place


def _coprime_multiplier(n: int, layout: np.random.Generator) -> int:
    if n <= 2:
        return 1
    # A large multiplier puts neighbouring ranks far apart.
    mult = int(layout.integers(n // 3 + 1, n))
    while math.gcd(mult, n) != 1:
        mult = mult + 1 if mult + 1 < n else 1
    return mult


def _bounded_zipf(rng: np.random.Generator, a: float, n: int, count: int) -> np.ndarray:
    """Zero-based ranks below n: numpy's unbounded zipf, redrawing ranks past n."""
    ranks = rng.zipf(a, count)
    bad = np.flatnonzero(ranks > n)
    while bad.size:
        ranks[bad] = rng.zipf(a, bad.size)
        bad = bad[ranks[bad] > n]
    return ranks - 1


def _mulmod(x: np.ndarray, mult: int, n: int) -> np.ndarray:
    """(x * mult) % n for uint64 x < n < 2**55, without overflow.

    Horner over the multiplier's bytes: each step stays below 2**64.
    """
    acc = np.zeros_like(x)
    modulus = np.uint64(n)
    for shift in range(((mult.bit_length() + 7) // 8 - 1) * 8, -1, -8):
        byte = np.uint64((mult >> shift) & 0xFF)
        acc = (acc * np.uint64(256) + x * byte) % modulus
    return acc


class _Log:
    """A log appending in [start, start + length), wrapping to the start.

    Each write takes its size rounded up to ``align``, so appends stay
    aligned; a write that does not fit before the end goes to the start.
    """

    def __init__(self, start: int, length: int, align: int) -> None:
        self.start = start
        self.length = length
        self.align = align
        self.cursor = 0  # next append, relative to start

    def place(self, rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
        slots = -(-lengths // self.align) * self.align
        ends = np.cumsum(slots)  # each write's end, relative to the batch's first
        out = np.empty(len(lengths), np.int64)
        i, base, cursor = 0, 0, self.cursor
        while i < len(lengths):
            # Writes i..j-1 fit before the end of the region.
            j = int(np.searchsorted(ends, base + self.length - cursor, side="right"))
            out[i:j] = self.start + cursor + (ends[i:j] - slots[i:j] - base)
            if j == len(lengths):
                cursor += int(ends[-1]) - base
                break
            # Write j would cross the end: wrap.  The region holds the
            # biggest write (validated), so the next round places at least one.
            base = int(ends[j] - slots[j])
            cursor = 0
            i = j
        self.cursor = cursor
        return out


def _mixed(log: Placer, data: Placer, log_fraction: float) -> Placer:
    def place(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
        to_log = rng.random(len(lengths)) < log_fraction
        out = np.empty(len(lengths), np.int64)
        out[to_log] = log(rng, lengths[to_log])
        out[~to_log] = data(rng, lengths[~to_log])
        return out

    return place


# -- argument helpers -------------------------------------------------------


def _positive_int(value: object, what: str) -> int:
    v = as_int(value, what)
    if v <= 0:
        raise InvalidArgumentError(f"{what} must be positive, got {v}")
    return v


def _as_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


def _round_up(x: int, align: int) -> int:
    return -(-x // align) * align
