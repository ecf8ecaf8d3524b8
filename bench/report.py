"""Markdown tables from a pytest-benchmark JSON file.

    .venv/bin/python bench/report.py /tmp/bench.json > /tmp/bench.md

One table per benchmark group: median, min, max and rounds of each entry,
and its median relative to the group's reference (the numba floor where the
group has one, else the fastest entry): ``x ref`` > 1 means slower than the
reference.  Sizes recorded in extra_info (``bytes``) get their own table.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def fmt(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def param_of(bench: dict) -> str:
    name = bench["name"]
    return name[name.index("[") + 1 : -1] if "[" in name else name


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or ""].append(bench)
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda b: b["stats"]["median"])
        ref = next((b for b in rows if param_of(b) == "numba-floor"), rows[0])
        ref_name = param_of(ref)
        print(f"### {group}\n")
        print(f"| benchmark | median | min | max | rounds | x {ref_name} |")
        print("|---|---:|---:|---:|---:|---:|")
        for b in rows:
            s = b["stats"]
            print(
                f"| {param_of(b)} | {fmt(s['median'])} | {fmt(s['min'])} | {fmt(s['max'])} "
                f"| {s['rounds']} | {s['median'] / ref['stats']['median']:.2f} |"
            )
        print()
    sizes = [b for b in data["benchmarks"] if "bytes" in b.get("extra_info", {})]
    if sizes:
        print("### sizes (extra_info)\n")
        print("| pattern | codec | set chunks | bytes | bits per set chunk |")
        print("|---|---|---:|---:|---:|")
        for b in sorted(sizes, key=lambda b: (b["extra_info"]["pattern"], b["extra_info"]["codec"])):
            e = b["extra_info"]
            print(f"| {e['pattern']} | {e['codec']} | {e['set_chunks']} | {e['bytes']} | {e['bits_per_set_chunk']} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench.json")
