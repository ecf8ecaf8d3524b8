"""Imported once by the fork server that ``tiered compare``'s children fork
from (see :mod:`tiered.replay.children`): numpy, numba, the kernels' modules,
and numba's compiler state, which a process otherwise builds at its first
kernel call (0.4 s of CPU, in each child)."""

from __future__ import annotations

from . import children  # noqa: F401
from .. import store  # noqa: F401  (numba and the kernels' modules)

try:
    from numba.core.registry import cpu_target

    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
except (ImportError, AttributeError):  # another numba: the children build it themselves
    pass
