"""Draw a comparison: one horizontal bar chart per cost, one bar per
configuration, the configurations' names once along the shared axis.

Bars never overlap their labels however many configurations there are;
every axis starts at zero, or is logarithmic when the values span more than
a decade and a half.  matplotlib is imported only here, and only when a plot
is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .advisor import Limits
from .compare import Measurement
from ..errors import InvalidArgumentError

_COLOURS = {"one-bit": "tab:blue", "multi-bit": "tab:orange", "hybrid": "tab:green"}
# Log scale when the largest value is more than this times the smallest.
LOG_SPAN = 30.0
# Needs a LaTeX installation at save time: refused up front instead.
_UNSUPPORTED = {"pgf"}

# (field, axis title, scale from the measurement's unit, limit attribute, scale of the limit)
_PANELS = (
    ("ram_peak_bytes", "peak RAM (MiB)", 1 / 2**20, ("max_ram", "--max-ram"), 1 / 2**20),
    ("query_oldest_ms", "cold query, oldest checkpoint (ms)", 1.0, ("max_query_ms", "--max-query-ms"), 1.0),
    ("query_newest_ms", "cold query, newest checkpoint (ms)", 1.0, None, 1.0),
    ("checkpoint_max_ms", "worst checkpoint (ms)", 1.0, ("max_checkpoint_ms", "--max-checkpoint-ms"), 1.0),
    ("writes_per_s", "mark throughput (million writes/s)", 1e-6, ("min_writes_per_s", "--min-writes-per-s"), 1e-6),
)


def check_target(path: str) -> None:
    """Fail before a long run, not after it: matplotlib must be importable,
    must write the file's type, and the file's directory must be writable."""
    plt = _pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"cannot write the plot {path!r}: no directory {folder!r}")
    if os.path.isdir(path) or not os.access(folder, os.W_OK):
        raise InvalidArgumentError(f"cannot write the plot {path!r}: not a writable file name")
    kinds = sorted(set(plt.figure().canvas.get_supported_filetypes()) - _UNSUPPORTED)
    plt.close("all")
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in kinds:
        got = f"'.{extension}'" if extension else "no file type"
        raise InvalidArgumentError(
            f"cannot write the plot {path!r}: {got}; the file name must end in one of "
            + ", ".join(f".{k}" for k in kinds)
        )


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


def _scale(axis: Any, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) > LOG_SPAN * min(positive):
        axis.set_xscale("log")
        return
    axis.set_xlim(left=0, right=max([*values, 0.0]) * 1.08 or 1.0)


def draw(results: Sequence[Measurement], path: str, limits: Limits, title: str, chosen: str | None) -> None:
    """Write the figure to ``path``, its type from its extension."""
    plt = _pyplot()
    fig = figure(results, limits, title, chosen)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(results: Sequence[Measurement], limits: Limits, title: str, chosen: str | None) -> Any:
    """The figure, one bar per configuration that completed."""
    plt = _pyplot()
    done = [m for m in results if m.ok]
    if not done:
        raise InvalidArgumentError("nothing to plot: no configuration completed")
    rows = range(len(done))
    fig, axes = plt.subplots(
        1, len(_PANELS), sharey=True, figsize=(3.0 * len(_PANELS) + 2.5, 0.28 * len(done) + 1.8), squeeze=False
    )
    colours = [_COLOURS[m.mode] for m in done]
    edges = ["black" if m.label == chosen else "none" for m in done]
    for axis, (field, name, scale, limit, limit_scale) in zip(axes[0], _PANELS):
        values = [max(getattr(m, field) * scale, 0.0) for m in done]
        _scale(axis, values)
        axis.barh(rows, values, color=colours, edgecolor=edges, linewidth=1.5, height=0.7)
        bound = None if limit is None else getattr(limits, limit[0])
        if bound is not None:
            axis.axvline(bound * limit_scale, color="crimson", linestyle="--", linewidth=1)
            name += f"\ndashed: {limit[1]}"
        axis.set_title(name, fontsize=9)
        axis.tick_params(axis="x", labelsize=7)
        axis.grid(True, axis="x", which="both", alpha=0.3)
    first = axes[0][0]
    first.set_yticks(list(rows))
    first.set_yticklabels([m.label for m in done], fontsize=8)
    for tick, m in zip(first.get_yticklabels(), done):
        if m.label == chosen:
            tick.set_fontweight("bold")
    first.set_ylim(len(done) - 0.5, -0.5)  # the first configuration on top
    note = "  (bold, outlined: recommended)" if chosen is not None else ""
    fig.suptitle(f"{title}{note}", fontsize=9)
    from matplotlib.patches import Patch

    modes = sorted({m.mode for m in done}, key=list(_COLOURS).index)
    fig.legend(handles=[Patch(color=_COLOURS[mode], label=mode) for mode in modes], loc="lower center",
               ncol=len(modes), fontsize=8, frameon=False)
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    return fig
