"""The ``tiered`` command: inspect a change-tracking store, convert its
volumes, or compare the strategies on a workload.

    tiered volumes STORE
    tiered checkpoints STORE VOLUME
    tiered changed STORE VOLUME CHECKPOINT [--to NEWER] [--offset N] [--length N]
    tiered stats STORE VOLUME
    tiered convert STORE VOLUME MODE [--width {8,16,32}] [--recent N]
    tiered dump STORE VOLUME FILE
    tiered load STORE FILE [--as NAME]
    tiered backup STORE DEST
    tiered compact STORE
    tiered compare [--workload KIND | --trace FILE] ...
    tiered serve STORE VOLUME --image PATH [--socket PATH | --bind ADDR --port N] [--control PATH]
    tiered ctl SOCKET {checkpoint NAME | remove NAME | list | stats | flush}
    tiered qcow2 import IMAGE STORE VOLUME [--bitmaps A,B] [--order A,B] [--accept-inconsistent]
    tiered qcow2 export STORE VOLUME IMAGE [--checkpoints A,B] [--replace]

Every command is a thin layer over the public API, one module per group of
commands (:mod:`.inspect`, :mod:`.convert`, :mod:`.transfer`, :mod:`.compare`,
:mod:`.serve`, :mod:`.ctl`, :mod:`.qcow2`), registered in
:mod:`.main`.  Only the standard library is imported at module level: the
engine (numpy, numba, lmdb) is imported inside the handlers, so ``tiered
--help`` and usage errors answer at once.
"""

from .common import parse_size
from .inspect import map_ranges
from .main import build_parser, main, run

__all__ = ["build_parser", "main", "map_ranges", "parse_size", "run"]
