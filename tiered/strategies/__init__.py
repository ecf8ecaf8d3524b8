"""History strategies, chosen by name."""

from __future__ import annotations

import numpy as np

from ..config import Strategy
from ..storage.pages import PageIO
from .base import History
from .hybrid import GENS_DTYPE as HYBRID_GENS_DTYPE
from .hybrid import HybridHistory
from .multi_bit import MultiBitHistory
from .one_bit import OneBitHistory

_WIDTH_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def gens_dtype(strategy: Strategy) -> np.dtype:
    """The dtype of the generation array a strategy stores, if any."""
    if strategy.mode == "multi-bit":
        return np.dtype(_WIDTH_DTYPES[strategy.width])
    return HYBRID_GENS_DTYPE


def make_history(strategy: Strategy, io: PageIO, n_chunks: int) -> History:
    if strategy.mode == "one-bit":
        return OneBitHistory(io, n_chunks)
    if strategy.mode == "multi-bit":
        return MultiBitHistory(io, n_chunks, strategy.width)
    return HybridHistory(io, n_chunks, strategy.recent)


__all__ = ["History", "HybridHistory", "MultiBitHistory", "OneBitHistory", "gens_dtype", "make_history"]
