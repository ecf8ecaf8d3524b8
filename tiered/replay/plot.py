"""Draw a comparison: RAM against query latency, and mark throughput.

matplotlib is imported only here, and only when a plot is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .advisor import Limits
from .compare import Measurement
from ..errors import InvalidArgumentError

_COLOURS = {"one-bit": "tab:blue", "multi-bit": "tab:orange", "hybrid": "tab:green"}


def check_target(path: str) -> None:
    """Fail before a long run, not after it: matplotlib must be importable
    and the file's directory must exist."""
    _pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"cannot write the plot {path!r}: no directory {folder!r}")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError(
            "--plot needs matplotlib: pip install 'tiered[plot]' (or pip install matplotlib)"
        ) from None
    return plt


def draw(results: Sequence[Measurement], path: str, limits: Limits, title: str, chosen: str | None) -> None:
    """Write a PNG with one mark per configuration that completed."""
    plt = _pyplot()
    done = [m for m in results if m.ok]
    if not done:
        raise InvalidArgumentError("nothing to plot: no configuration completed")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.4 * len(done) + 4.5))
    for m in done:
        colour = _COLOURS[m.mode]
        ram = m.ram_peak_bytes / 2**20
        left.scatter(ram, m.query_oldest_ms, color=colour, s=80 if m.label == chosen else 40,
                     edgecolors="black" if m.label == chosen else "none", zorder=3)
        left.annotate(m.label, (ram, m.query_oldest_ms), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if limits.max_ram is not None:
        left.axvline(limits.max_ram / 2**20, color="grey", linestyle="--", label="--max-ram")
    if limits.max_query_ms is not None:
        left.axhline(limits.max_query_ms, color="grey", linestyle=":", label="--max-query-ms")
    if limits.max_ram is not None or limits.max_query_ms is not None:
        left.legend(loc="best", fontsize=8)
    left.margins(x=0.3, y=0.15)  # room for the labels
    left.set_xlabel("peak RAM (MiB, measured)")
    left.set_ylabel("cold changed_since, oldest checkpoint (ms)")
    left.set_title("RAM against query latency")
    left.grid(True, alpha=0.3)

    labels = [m.label for m in done]
    right.barh(labels, [m.writes_per_s / 1e6 for m in done], color=[_COLOURS[m.mode] for m in done])
    right.invert_yaxis()
    right.set_xlabel("mark throughput (million writes/s)")
    right.set_title("write path")
    right.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
