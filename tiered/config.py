"""Settings, limits and the fixed geometry of the in-RAM structures."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .errors import InvalidArgumentError, StrategyMismatchError

Mode = Literal["one-bit", "multi-bit", "hybrid"]
MODES: tuple[str, ...] = ("one-bit", "multi-bit", "hybrid")

# Geometry shared by kernels, codec and storage.  A segment holds 2**SEG_SHIFT
# chunks; a page groups 2**PAGE_SHIFT segments.  Pages are the unit of the
# directory, of LMDB values and of the cache, so a region query only touches
# the pages it overlaps.
SEG_SHIFT = 12
SEG_CHUNKS = 1 << SEG_SHIFT
SEG_WORDS = SEG_CHUNKS // 64
PAGE_SHIFT = 10
PAGE_SEGMENTS = 1 << PAGE_SHIFT
PAGE_CHUNKS = 1 << (SEG_SHIFT + PAGE_SHIFT)

MIN_GRANULARITY = 512
MAX_GRANULARITY = 2 << 30
# Chunk numbers must stay well inside int64 for the kernels, and byte offsets
# inside uint64 arithmetic; 2**62 bytes (4 EiB) leaves room for both.
MAX_SIZE = 1 << 62
MAX_NAME_BYTES = 1023
GEN_WIDTHS = (8, 16, 32)
# Generations are kept in int32 directory entries (uniform segments store
# -(gen + 2)), so even the 32-bit width stops below 2**31.
MAX_GEN_32 = (1 << 31) - 3

DEFAULT_CACHE_BYTES = 64 << 20
DEFAULT_WIDTH = 16
DEFAULT_RECENT = 8


def max_generation(width: int) -> int:
    """Largest generation number a multi-bit array of this width can hold."""
    return MAX_GEN_32 if width == 32 else (1 << width) - 1


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a volume keeps its history.

    ``mode``
        ``"one-bit"``: one sealed bitmap per checkpoint.
        ``"multi-bit"``: one generation number per chunk, held in RAM.
        ``"hybrid"``: recent writesets one-bit, older ones folded into an
        on-disk generation array.
    ``width``
        Bits per generation number in multi-bit mode (8, 16 or 32).  A width
        of ``w`` holds at most ``2**w - 1`` live checkpoints (about 2**31 for
        32).  The hybrid generation array lives on disk and always uses 32.
    ``cache_bytes``
        Budget of the cache of decoded sealed pages (not persisted: it may
        change from one open to the next).
    ``recent``
        Hybrid only: how many sealed writesets stay one-bit before the oldest
        are folded into the generation array.
    """

    mode: Mode = "hybrid"
    width: int = DEFAULT_WIDTH
    cache_bytes: int = DEFAULT_CACHE_BYTES
    recent: int = DEFAULT_RECENT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgumentError(
                f"unknown strategy mode {self.mode!r}: expected one of {', '.join(MODES)}"
            )
        for field in ("width", "cache_bytes", "recent"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgumentError(f"Strategy.{field} must be an int, got {value!r}")
        if self.width not in GEN_WIDTHS:
            raise InvalidArgumentError(
                f"Strategy.width must be one of {GEN_WIDTHS}, got {self.width}"
            )
        if self.cache_bytes < 0:
            raise InvalidArgumentError(f"Strategy.cache_bytes must be >= 0, got {self.cache_bytes}")
        if self.recent < 1:
            raise InvalidArgumentError(f"Strategy.recent must be >= 1, got {self.recent}")

    @classmethod
    def coerce(cls, value: "Strategy | str | None") -> "Strategy":
        if value is None:
            return cls()
        if isinstance(value, Strategy):
            return value
        if isinstance(value, str):
            return cls(mode=value)  # type: ignore[arg-type]
        raise InvalidArgumentError(
            f"strategy must be a tiered.Strategy or a mode name, got {type(value).__name__}"
        )

    def fixed(self) -> dict[str, Any]:
        """The settings that shape stored data and must not change on reopen:
        the mode, and the one setting that mode uses."""
        extra = {"multi-bit": "width", "hybrid": "recent"}.get(self.mode)
        fields = {"mode": self.mode}
        if extra:
            fields[extra] = getattr(self, extra)
        return fields

    def describe(self) -> str:
        """The mode and its stored setting, as messages name them:
        ``"multi-bit strategy of width 16"``, ``"hybrid strategy"``."""
        width = f" of width {self.width}" if self.mode == "multi-bit" else ""
        return f"{self.mode} strategy{width}"

    def check_compatible(self, stored: dict[str, Any], volume: str) -> None:
        mine = self.fixed()
        defaults = Strategy(mode=stored["mode"]).fixed() if stored.get("mode") in MODES else {}
        diffs = [
            f"{k}={mine[k]!r} (stored {stored.get(k, defaults.get(k))!r})"
            for k in mine
            if stored.get(k, defaults.get(k)) != mine[k]
        ]
        if diffs:
            raise StrategyMismatchError(
                f"volume {volume!r} was created with different settings: " + ", ".join(diffs)
                + "; open it with strategy=None to use the stored settings"
            )
