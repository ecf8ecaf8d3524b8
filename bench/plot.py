"""A PNG from a pytest-benchmark JSON file: one panel per benchmark group,
each entry's median as a horizontal bar, tiered and its peers in two colours.

    .venv/bin/python bench/plot.py /tmp/bench.json -o docs/benchmarks.png

Panels follow the order in which the groups ran; inside a panel the fastest
entry is on top.  A panel whose slowest median is more than LOG_SPREAD
times its fastest gets a log scale, so the fast entries stay visible.
Labels are the benchmark's parameters, minus the part every entry of the
panel shares (it is in the title already).
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from report import fmt, param_of

LOG_SPREAD = 20.0
COLUMNS = 2
TIERED_COLOUR = "#1f6fb4"
PEER_COLOUR = "#b0b0b0"
MODES = ("one-bit", "multi-bit", "hybrid")
UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))


def load_groups(path: str) -> dict[str, list[dict]]:
    """Benchmarks by group, groups in the order they ran."""
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or bench["name"], []).append(bench)
    return groups


def is_tiered(label: str) -> bool:
    return "tiered" in label or label.startswith(MODES)


def short_labels(labels: list[str]) -> list[str]:
    """Drop the leading and trailing '-'-separated parts all labels share."""
    if len(labels) < 2:
        return labels
    parts = [label.split("-") for label in labels]
    shortest = min(len(p) for p in parts)
    head = 0
    while head < shortest - 1 and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while tail < shortest - 1 - head and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    return ["-".join(p[head : len(p) - tail]) for p in parts]


def unit_for(seconds: float) -> tuple[float, str]:
    """The largest unit in which ``seconds`` is at least 1."""
    return next(((scale, name) for scale, name in UNITS if seconds >= scale), UNITS[-1])


def draw_panel(ax: Axes, title: str, benches: list[dict]) -> None:
    rows = sorted(benches, key=lambda b: b["stats"]["median"])
    medians = [b["stats"]["median"] for b in rows]
    full = [param_of(b) for b in rows]
    scale, unit = unit_for(min(medians))
    values = [m / scale for m in medians]
    colours = [TIERED_COLOUR if is_tiered(label) else PEER_COLOUR for label in full]
    ax.barh(range(len(rows)), values, color=colours)
    ax.set_yticks(range(len(rows)), short_labels(full), fontsize=7)
    ax.invert_yaxis()  # fastest on top
    if max(medians) / min(medians) > LOG_SPREAD:
        ax.set_xscale("log")
    right = max(values) * (4 if ax.get_xscale() == "log" else 1.3)
    ax.set_xlim(right=right)
    for y, (v, m) in enumerate(zip(values, medians)):
        ax.text(v, y, " " + fmt(m), va="center", fontsize=6.5)
    ax.set_xlabel(f"median ({unit}{', log scale' if ax.get_xscale() == 'log' else ''})", fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("\n".join(textwrap.wrap(title, 62)), fontsize=8, loc="left")


def plot(groups: dict[str, list[dict]], output: str) -> None:
    names = list(groups)
    n_rows = -(-len(names) // COLUMNS)
    # Each grid row is as tall as its panel with the most bars, plus room
    # for a wrapped title and the axis; constrained layout spaces the rest.
    heights = [max(len(groups[n]) for n in names[r * COLUMNS : (r + 1) * COLUMNS]) + 4 for r in range(n_rows)]
    fig = plt.figure(figsize=(15, 0.2 * sum(heights) + 0.5), layout="constrained")
    grid = fig.add_gridspec(n_rows, COLUMNS, height_ratios=heights)
    for i, name in enumerate(names):
        draw_panel(fig.add_subplot(grid[i // COLUMNS, i % COLUMNS]), name, groups[name])
    fig.legend(handles=[Patch(color=TIERED_COLOUR, label="tiered"), Patch(color=PEER_COLOUR, label="peer / baseline")],
               loc="outside upper right", ncols=2, fontsize=8, frameon=False)
    fig.savefig(output, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by --benchmark-json")
    parser.add_argument("-o", "--output", default="benchmarks.png", help="PNG to write (default: %(default)s)")
    args = parser.parse_args()
    plot(load_groups(args.json), args.output)
    print(f"wrote {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
