"""Naive reference implementations the engine is checked against.

Everything here is plain Python over sets and lists: slow, obviously right.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def chunk_range(offset: int, length: int, granularity: int) -> tuple[int, int] | None:
    """Chunks [first, last] touched by a write, or None for an empty write."""
    if length == 0:
        return None
    return offset // granularity, (offset + length - 1) // granularity


def coalesce(intervals: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge inclusive chunk intervals into sorted, disjoint, non-adjacent ones."""
    merged: list[list[int]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def to_byte_extents(
    intervals: set[tuple[int, int]], granularity: int, lo: int, hi: int
) -> list[tuple[int, int]]:
    """What Extents must hold for these chunks, queried over bytes [lo, hi)."""
    out = []
    for a, b in coalesce(intervals):
        start = max(a * granularity, lo)
        end = min((b + 1) * granularity, hi)
        if end > start:
            out.append((start, end - start))
    return out


@dataclass
class ReferenceVolume:
    """Every write ever made, stamped with a logical time; checkpoints are times.

    Removing a checkpoint forgets a name and nothing else, which is exactly
    the guarantee the engine must keep for every other answer.
    """

    size: int
    granularity: int
    clock: int = 0
    writes: list[tuple[int, tuple[int, int]]] = field(default_factory=list)
    checkpoints: dict[str, int] = field(default_factory=dict)

    def mark(self, offset: int, length: int) -> None:
        self.clock += 1
        span = chunk_range(offset, length, self.granularity)
        if span is not None:
            self.writes.append((self.clock, span))

    def checkpoint(self, name: str) -> None:
        self.clock += 1
        self.checkpoints[name] = self.clock

    def remove(self, name: str) -> None:
        del self.checkpoints[name]

    def names(self) -> list[str]:
        return sorted(self.checkpoints, key=self.checkpoints.__getitem__)

    def written(self, since: int, until: int | None = None) -> set[tuple[int, int]]:
        return {span for t, span in self.writes if t > since and (until is None or t < until)}

    def changed_since(self, name: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
        hi = self.size if hi is None else hi
        return to_byte_extents(self.written(self.checkpoints[name]), self.granularity, lo, hi)

    def changed_between(self, older: str, newer: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
        hi = self.size if hi is None else hi
        spans = self.written(self.checkpoints[older], self.checkpoints[newer])
        return to_byte_extents(spans, self.granularity, lo, hi)


def extents_chunks(extents: list[tuple[int, int]], granularity: int) -> set[int]:
    """The set of chunks a list of byte extents covers (for small volumes)."""
    chunks: set[int] = set()
    for offset, length in extents:
        chunks.update(range(offset // granularity, (offset + length - 1) // granularity + 1))
    return chunks


def covers(big: list[tuple[int, int]], small: list[tuple[int, int]]) -> bool:
    """Whether every small extent lies inside one of the coalesced big ones."""
    j = 0
    for off, length in small:
        while j < len(big) and big[j][0] + big[j][1] <= off:
            j += 1
        if j == len(big) or not (big[j][0] <= off and off + length <= big[j][0] + big[j][1]):
            return False
    return True


# -- naive versions of the kernels ------------------------------------------


def naive_mark_bits(bits: set[int], offsets, lengths, shift: int) -> None:
    for off, length in zip(offsets, lengths):
        if length:
            bits.update(range(off >> shift, ((off + length - 1) >> shift) + 1))


def naive_mark_gens(gens: dict[int, int], offsets, lengths, shift: int, value: int) -> None:
    for off, length in zip(offsets, lengths):
        if length:
            for c in range(off >> shift, ((off + length - 1) >> shift) + 1):
                gens[c] = value


def naive_runs(chunks: set[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """(start, count) runs of the chunks inside [lo, hi)."""
    inside = {(c, c) for c in chunks if lo <= c < hi}
    return [(a, b - a + 1) for a, b in coalesce(inside)]
