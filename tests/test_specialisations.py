"""Each kernel compiles once per combination of array types, never once per
call site.

numba compiles a function once per distinct tuple of argument types, and a
constant argument has a type of its own per value (``Literal[int](1)``): a
call passing ``1`` or ``True`` to another kernel makes that kernel, and all
it calls, compile again.  Every such specialisation costs compile time
after a fresh install and load time in every process, and they multiply
quietly.  This test exercises every strategy, then follows every kernel's
calls to other kernels, by type inference (nothing is compiled for it),
and fails if a kernel is reached with a constant or with two scalar
signatures for the same arrays.
"""

from __future__ import annotations

import numpy as np
from numba.core import compiler, types
from numba.core.compiler_machinery import FunctionPass, register_pass
from numba.core.registry import CPUDispatcher, cpu_target
from numba.core.typed_passes import NopythonTypeInference

import tiered
from tiered.bitmaps import kernels, probe_kernels, span_kernels
from tiered.storage import fold, gen_page_kernels, page_kernels, scan_kernels

MODULES = (kernels, span_kernels, probe_kernels, page_kernels, gen_page_kernels, scan_kernels, fold)


@register_pass(mutates_CFG=False, analysis_only=True)
class _CallsMade(FunctionPass):
    """Ends a pipeline after type inference with the kernels called and their argument types."""

    _name = "tiered_calls_made"

    def __init__(self) -> None:
        FunctionPass.__init__(self)

    def run_pass(self, state) -> bool:
        calls = []
        for expr, sig in state.calltypes.items():
            if getattr(expr, "op", None) != "call":
                continue
            callee = state.typemap[expr.func.name]
            if isinstance(callee, types.Dispatcher):
                calls.append((callee.dispatcher, tuple(sig.args)))
        state.cr = calls
        return False


class _TypeOnly(compiler.CompilerBase):
    """numba's untyped passes (inlining included) and type inference; no lowering."""

    def define_pipelines(self):
        pm = compiler.DefaultPassBuilder.define_untyped_pipeline(self.state)
        pm.add_pass(NopythonTypeInference, "type inference")
        pm.add_pass(_CallsMade, "calls made")
        pm.finalize()
        return [pm]


def _calls(dispatcher: CPUDispatcher, args: tuple) -> list:
    flags = compiler.Flags()
    flags.nrt = True
    flags.boundscheck = False
    return compiler.compile_extra(
        cpu_target.typing_context, cpu_target.target_context, dispatcher.py_func, args, None, flags, {},
        pipeline_class=_TypeOnly,
    )


def _exercise(path) -> None:
    """Run every strategy, width, query and conversion on a small volume."""
    rng = np.random.default_rng(7)
    size = 1 << 30
    strategies = [tiered.Strategy("one-bit"), tiered.Strategy("hybrid", recent=1)]
    strategies += [tiered.Strategy("multi-bit", width=w) for w in (8, 16, 32)]
    with tiered.open(str(path)) as store:
        for k, strategy in enumerate(strategies):
            durability = ("lazy", "sync")[k % 2]
            vol = store.create_volume(f"v{k}", size=size, granularity=64 << 10, strategy=strategy, durability=durability)
            for c in range(8):
                offsets = rng.integers(0, size // 4096, 300) * 4096
                vol.mark_many(offsets, np.full(300, 4096 + 65536 * (c % 2)))
                vol.mark_many(offsets, np.full(300, 4096))  # hot: all marked already
                vol.mark(c << 26, 8 << 20)  # whole segments
                vol.mark(c << 26, 1)
                vol.sync()
                vol.checkpoint(f"c{c}")
            vol.changed_since("c0")
            vol.changed_between("c1", "c5")
            vol.remove_checkpoint("c3")
            target = strategies[(k + 1) % len(strategies)]
            vol.convert(target)
            vol.changed_since("c1")
    with tiered.open(str(path), readonly=True) as store:
        for k in range(len(strategies)):
            store.volume(f"v{k}").changed_since("c0")


def _reached() -> dict:
    """Every (kernel, argument types) reached from the kernels used so far."""
    todo = [
        (d, tuple(sig))
        for module in MODULES
        for d in vars(module).values()
        if isinstance(d, CPUDispatcher)
        for sig in d.signatures
    ]
    seen: dict = {}
    while todo:
        d, args = todo.pop()
        if args in seen.setdefault(d, set()):
            continue
        seen[d].add(args)
        todo.extend(_calls(d, args))
    return seen


def test_each_kernel_compiles_once_per_array_types(tmp_path):
    _exercise(tmp_path / "store")
    reached = _reached()
    assert any(d is kernels.set_range for d in reached), "the strategies reached no kernel"
    problems = []
    for d, signatures in reached.items():
        name = d.py_func.__qualname__
        by_arrays: dict = {}
        for args in signatures:
            if any(isinstance(a, types.Literal) for a in args):
                problems.append(f"{name} takes a constant: {args}")
            arrays = tuple(a for a in args if isinstance(a, types.Array))
            by_arrays.setdefault(arrays, []).append(args)
        for arrays, variants in by_arrays.items():
            if len(variants) > 1:
                problems.append(f"{name} has {len(variants)} scalar signatures for arrays {arrays}: {variants}")
    assert not problems, "\n".join(problems)


def _add(x, v):
    return x + v


def test_the_check_sees_a_constant_argument():
    from numba import njit

    add = njit(_add)
    caller = njit(lambda x: add(x, 1))
    [(callee, args)] = _calls(caller, (types.int64,))
    assert callee is add and isinstance(args[1], types.Literal)
