"""The answer to "what changed": sorted, coalesced byte ranges."""

from __future__ import annotations

from typing import Iterator

import numpy as np


class Extents:
    """Sorted, non-overlapping, coalesced byte ranges.

    Ranges are aligned to the volume's granularity except where clipped: the
    last one to the volume size, and both ends to the queried region, as NBD
    block status does.  ``exact`` is False when the answer may contain chunks
    that were not written in the asked interval (it never misses one).
    ``generation_id`` is the volume's generation id when it answered (see
    :attr:`tiered.Volume.generation_id`).
    """

    __slots__ = ("offsets", "lengths", "granularity", "exact", "generation_id")

    def __init__(
        self,
        offsets: np.ndarray,
        lengths: np.ndarray,
        *,
        granularity: int,
        exact: bool = True,
        generation_id: str | None = None,
    ) -> None:
        self.offsets = np.asarray(offsets, dtype=np.uint64)
        self.lengths = np.asarray(lengths, dtype=np.uint64)
        self.granularity = granularity
        self.exact = exact
        self.generation_id = generation_id

    @property
    def total_bytes(self) -> int:
        """Bytes covered by all ranges."""
        return int(self.lengths.sum(dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.offsets)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.offsets.tolist(), self.lengths.tolist())

    def __bool__(self) -> bool:
        return len(self.offsets) > 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extents):
            return NotImplemented
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(
            self.lengths, other.lengths
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"({o}, {n})" for o, n in list(self)[:4])
        more = f", ... {len(self) - 4} more" if len(self) > 4 else ""
        return (
            f"Extents([{shown}{more}], total_bytes={self.total_bytes}, "
            f"granularity={self.granularity}, exact={self.exact})"
        )

    def to_dict(self) -> dict:
        return {
            "granularity": self.granularity,
            "exact": self.exact,
            "generation_id": self.generation_id,
            "total_bytes": self.total_bytes,
            "extents": [{"offset": o, "length": n} for o, n in self],
        }
