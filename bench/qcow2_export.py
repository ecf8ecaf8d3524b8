"""Exporting checkpoints as qcow2 bitmaps and importing them back: time for
a large, scattered volume.

A volume of SIZE (default 1 TiB) at 64 KiB chunks gets CHECKPOINTS
checkpoints, each followed by writes to 1% of the chunks chosen at random
(about 166,000 extents per 1 TiB); an empty qcow2 of the same size receives
every checkpoint, and qemu-nbd + nbdinfo check the first and last bitmaps
against ``changed_since``; then the image is imported into a new store,
whose answers must equal the volume's.  Needs qemu-img, qemu-io, qemu-nbd and nbdinfo:

    PYTHONPATH=. .venv/bin/python bench/qcow2_export.py [checkpoints] [size]

Not a pytest test: the time depends on the machine, so nothing asserts it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import numpy as np

import tiered
from tiered.cli.inspect import format_map_line, map_ranges
from tiered.qcow2 import export_bitmaps, import_bitmaps
from tiered.units import parse_size

G = 64 << 10


def served_map(image: str, name: str) -> str:
    return subprocess.run(
        ["nbdinfo", f"--map=qemu:dirty-bitmap:{name}", "--", "[", "qemu-nbd", "-r", "-f", "qcow2", "-B", name, image, "]"],
        capture_output=True, text=True, check=True,
    ).stdout


def main() -> None:
    checkpoints = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    size = parse_size(sys.argv[2]) if len(sys.argv) > 2 else 1 << 40
    chunks = size // G
    with tempfile.TemporaryDirectory() as d, tiered.open(f"{d}/store", sync=False) as store:
        vol = store.create_volume("vda", size=size, granularity=G, strategy="hybrid")
        rng = np.random.default_rng(7)
        for c in range(checkpoints):
            vol.checkpoint(f"cp{c}")
            idx = np.sort(rng.choice(chunks, chunks // 100, replace=False)).astype(np.uint64)
            vol.mark_many(idx * G, np.full(len(idx), G, dtype=np.uint64))
        names = [c.name for c in vol.checkpoints()]
        extents = [len(vol.changed_since(n)) for n in names]
        image = f"{d}/disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, str(size)], check=True)
        started = time.perf_counter()
        export_bitmaps(vol, image)
        seconds = time.perf_counter() - started
        print(f"{size} bytes, {checkpoints} checkpoint(s), extents {extents}: exported in {seconds:.2f} s")
        for name in {names[0], names[-1]}:
            want = "".join(format_map_line(*r) for r in map_ranges(vol.changed_since(name), 0, size))
            print(f"  {name}: qemu-nbd serves changed_since: {served_map(image, name) == want}")
        with tiered.open(f"{d}/back", sync=False) as back:
            started = time.perf_counter()
            report = import_bitmaps(back, "vda", image)
            seconds = time.perf_counter() - started
            again = back.volume("vda")
            same = all(list(again.changed_since(n)) == list(vol.changed_since(n)) for n in names)
            print(f"imported in {seconds:.2f} s ({report.order} order); every answer equal: {same}")


if __name__ == "__main__":
    main()
