"""The batch of writes that workloads and traces stream to a replayer.

Shared by ``tiered.workloads`` (synthetic writes) and ``tiered.traces``
(recorded writes) so a replayer handles both with one ``isinstance`` check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class WriteBatch:
    """Writes ``[offsets[i], offsets[i] + lengths[i])``, in order.

    ``offsets`` and ``lengths`` are one-dimensional int64 arrays of equal
    length, ready for ``Volume.mark_many``; ``times`` (float64 seconds of
    trace time, same length) is ``None`` when the source has no clock.
    """

    offsets: np.ndarray
    lengths: np.ndarray
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Dtype and shape only: checking values would cost a pass over the
        # data, and mark_many checks ranges anyway.
        _check_array(self.offsets, "offsets", np.int64)
        _check_array(self.lengths, "lengths", np.int64)
        if self.lengths.shape != self.offsets.shape:
            raise InvalidArgumentError(
                f"lengths has {self.lengths.shape[0]} entries but offsets has {self.offsets.shape[0]}"
            )
        if self.times is not None:
            _check_array(self.times, "times", np.float64)
            if self.times.shape != self.offsets.shape:
                raise InvalidArgumentError(
                    f"times has {self.times.shape[0]} entries but offsets has {self.offsets.shape[0]}"
                )

    def __len__(self) -> int:
        return int(self.offsets.shape[0])


def _check_array(value: object, what: str, dtype: type) -> None:
    if not isinstance(value, np.ndarray):
        raise InvalidArgumentError(f"{what} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise InvalidArgumentError(f"{what} must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != 1:
        raise InvalidArgumentError(f"{what} must be one-dimensional, got shape {value.shape}")
