"""Pick one configuration from measurements and the user's limits.

The rule is short enough to state in the answer: drop every configuration
that breaks a limit; of the rest, take the one whose worst measure is
closest to the best any of them achieved (the smallest "worst ratio to the
best"), so no cost is traded away for another without bound.  Ties go to
the smaller peak RAM.

The reason given then compares the choice with every configuration
measured, on every measure the table shows, and names each one on which
the choice is not the best, with its value, the best and the ratio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from .compare import Measurement
from ..errors import InvalidArgumentError
from ..units import format_bytes, format_ms


@dataclasses.dataclass(frozen=True)
class Metric:
    field: str
    name: str
    lower_is_better: bool
    show: Callable[[float], str]


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f} M writes/s"


def _cpu(x: float) -> str:
    return f"{x:.2f} s"


# What the choice is made on.
METRICS = (
    Metric("ram_peak_bytes", "peak RAM", True, format_bytes),
    Metric("query_oldest_ms", "cold query of the oldest checkpoint", True, format_ms),
    Metric("checkpoint_max_ms", "worst checkpoint", True, format_ms),
    Metric("writes_per_s", "mark throughput", False, _rate),
    Metric("disk_bytes", "disk", True, format_bytes),
)
# What the reason compares: every measure of the table.
SHOWN = (
    METRICS[3],
    Metric("checkpoint_p50_ms", "median checkpoint", True, format_ms),
    METRICS[2],
    Metric("query_newest_ms", "cold query of the newest checkpoint", True, format_ms),
    METRICS[1],
    METRICS[0],
    Metric("ram_steady_bytes", "steady RAM", True, format_bytes),
    METRICS[4],
    Metric("cpu_s", "CPU time", True, _cpu),
)
_BY_FIELD = {m.field: m for m in SHOWN}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the user can afford; None: no limit."""

    max_ram: int | None = None
    max_query_ms: float | None = None
    max_checkpoint_ms: float | None = None
    min_writes_per_s: float | None = None
    #: Only sync-mode configurations qualify: answers exact after a crash.
    require_exact_after_crash: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.require_exact_after_crash, bool):
            raise InvalidArgumentError(
                f"require_exact_after_crash must be a bool, got {self.require_exact_after_crash!r}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None or field.name == "require_exact_after_crash":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgumentError(f"{field.name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{field.name} must be positive and finite, got {value}")

    def checks(self) -> list[tuple[Metric, float, str]]:
        """(metric, bound, flag) for every limit given."""
        pairs = [
            ("ram_peak_bytes", self.max_ram, "--max-ram"),
            ("query_oldest_ms", self.max_query_ms, "--max-query-ms"),
            ("checkpoint_max_ms", self.max_checkpoint_ms, "--max-checkpoint-ms"),
            ("writes_per_s", self.min_writes_per_s, "--min-writes-per-s"),
        ]
        return [(_BY_FIELD[f], bound, flag) for f, bound, flag in pairs if bound is not None]

    def given(self) -> bool:
        """Whether any limit was given."""
        return bool(self.checks()) or self.require_exact_after_crash

    def describe(self) -> str:
        parts = [f"{flag} {metric.show(bound)}" for metric, bound, flag in self.checks()]
        if self.require_exact_after_crash:
            parts.append("--require-exact-after-crash")
        return ", ".join(parts)


#: Why a configuration breaks --require-exact-after-crash.
NOT_EXACT = "lazy durability (a crash loses the marks in RAM: answers are no longer exact)"


def violations(m: Measurement, limits: Limits) -> list[str]:
    """Each limit the measurement breaks, as 'peak RAM 80.0 MiB > 32.0 MiB'."""
    out = []
    if limits.require_exact_after_crash and m.durability != "sync":
        out.append(NOT_EXACT)
    for metric, bound, _ in limits.checks():
        value = getattr(m, metric.field)
        broken = value > bound if metric.lower_is_better else value < bound
        if broken:
            sign = ">" if metric.lower_is_better else "<"
            out.append(f"{metric.name} {metric.show(value)} {sign} {metric.show(bound)}")
    return out


@dataclasses.dataclass(frozen=True)
class Advice:
    choice: Measurement | None
    #: Why, in one sentence: the rule, then each measure on which the
    #: choice is not the best (also in ``worse``, one item each).
    reason: str
    worse: tuple[str, ...] = ()


def _ratios(m: Measurement, pool: Sequence[Measurement]) -> dict[str, float]:
    """How far each of m's measures is from the best in the pool (>= 1)."""
    out = {}
    for metric in METRICS:
        values = [getattr(x, metric.field) for x in pool]
        mine = getattr(m, metric.field)
        best = min(values) if metric.lower_is_better else max(values)
        if metric.lower_is_better:
            out[metric.field] = mine / best if best > 0 else (1.0 if mine <= 0 else math.inf)
        else:
            out[metric.field] = best / mine if mine > 0 else (1.0 if best <= 0 else math.inf)
    return out


def recommend(results: Sequence[Measurement], limits: Limits) -> Advice:
    measured = [m for m in results if m.ok]
    if not measured:
        return Advice(None, "no configuration completed its replay, so there is nothing to recommend")
    fitting = [m for m in measured if not violations(m, limits)]
    if not fitting and limits.require_exact_after_crash and not any(m.durability == "sync" for m in measured):
        return Advice(
            None,
            "--require-exact-after-crash admits only sync-mode configurations, and none was measured "
            "(compare with --durability sync or lazy,sync)",
        )
    if not fitting:
        if limits.require_exact_after_crash:
            measured = [m for m in measured if m.durability == "sync"]

        def overshoot(m: Measurement) -> float:
            worst = 1.0
            for metric, bound, _ in limits.checks():
                value = getattr(m, metric.field)
                worst = max(worst, value / bound if metric.lower_is_better else bound / max(value, 1e-12))
            return worst

        closest = min(measured, key=overshoot)
        return Advice(
            None,
            f"no configuration meets {limits.describe()}; the closest is {closest.label} "
            f"({'; '.join(violations(closest, limits))})",
        )
    scored = sorted(fitting, key=lambda m: (max(_ratios(m, fitting).values()), m.ram_peak_bytes))
    choice = scored[0]
    meets = f"meets {limits.describe()}" if limits.given() else "no limits were given"
    if len(fitting) == 1:
        why = f"{meets}, and it is the only configuration that does"
    else:
        names = ", ".join(m.name for m in METRICS)
        of = f"of the {len(fitting)} that do" if limits.given() else f"of the {len(fitting)} measured"
        why = f"{meets}; {of}, its worst ratio to the best on {names} is the smallest"
    worse = _against_the_best(choice, measured)
    if not worse:
        return Advice(choice, f"{why}; of all {len(measured)} measured it is the best on every measure")
    summary = f"against all {len(measured)} measured it is worse than the best on {len(worse)} measures"
    return Advice(choice, f"{why}; {summary}: {'; '.join(worse)}", tuple(worse))


def _against_the_best(choice: Measurement, measured: Sequence[Measurement]) -> list[str]:
    """Each measure of the table on which ``choice`` is not the best of
    ``measured``: its value, the best's, and how far apart."""
    worse = []
    for metric in SHOWN:
        pick = min if metric.lower_is_better else max
        best = pick(measured, key=lambda m: getattr(m, metric.field))
        mine, top = getattr(choice, metric.field), getattr(best, metric.field)
        if mine == top or best is choice:
            continue
        worse.append(f"{metric.name} {metric.show(mine)}, {_how_far(mine, top, metric)} "
                     f"({metric.show(top)}, {best.label})")
    return worse


def _how_far(mine: float, best: float, metric: Metric) -> str:
    """'2.6x the best', '4% over the best', '20% under the best', or a
    difference when the best is not positive."""
    if metric.lower_is_better:
        if best <= 0:
            return f"{metric.show(mine - best)} more than the best"
        ratio = mine / best
        if ratio < 1.1:
            return f"{_percent(ratio - 1)} over the best"
        return f"{ratio:.1f}x the best" if ratio < 10 else f"{ratio:.0f}x the best"
    if mine <= 0:
        return "none, against the best"
    return f"{_percent(1 - mine / best)} under the best"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%" if fraction >= 0.005 else f"{fraction * 100:.1f}%"
