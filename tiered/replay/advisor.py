"""Pick one configuration from measurements and the user's limits.

The rule is short enough to state in the answer: drop every configuration
that breaks a limit; of the rest, take the one whose worst measure is
closest to the best any of them achieved (the smallest "worst ratio to the
best"), so no cost is traded away for another without bound.  Ties go to
the smaller peak RAM.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from .compare import Measurement
from ..errors import InvalidArgumentError


@dataclasses.dataclass(frozen=True)
class Metric:
    field: str
    name: str
    lower_is_better: bool
    show: Callable[[float], str]


def _bytes(n: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n:.0f} bytes"


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 1 else f"{x:.2f} ms"


def _rate(x: float) -> str:
    return f"{x / 1e6:.1f} M writes/s"


METRICS = (
    Metric("ram_peak_bytes", "peak RAM", True, _bytes),
    Metric("query_oldest_ms", "cold query of the oldest checkpoint", True, _ms),
    Metric("checkpoint_max_ms", "worst checkpoint", True, _ms),
    Metric("writes_per_s", "mark throughput", False, _rate),
    Metric("disk_bytes", "disk", True, _bytes),
)
_BY_FIELD = {m.field: m for m in METRICS}
# Closer to the best than this is a tie: the machine's noise is larger.
NEAR_BEST = 1.05


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the user can afford; None: no limit."""

    max_ram: int | None = None
    max_query_ms: float | None = None
    max_checkpoint_ms: float | None = None
    min_writes_per_s: float | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
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

    def describe(self) -> str:
        return ", ".join(f"{flag} {metric.show(bound)}" for metric, bound, flag in self.checks())


def violations(m: Measurement, limits: Limits) -> list[str]:
    """Each limit the measurement breaks, as 'peak RAM 80.0 MiB > 32.0 MiB'."""
    out = []
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
    reason: str


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
    if not fitting:
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
    ratios = _ratios(choice, fitting)
    weakest = max(ratios, key=lambda f: ratios[f])
    metric = _BY_FIELD[weakest]
    meets = f"meets {limits.describe()}" if limits.checks() else "no limits were given"
    if len(fitting) == 1:
        reason = f"{meets}, and it is the only configuration that does"
    elif ratios[weakest] < NEAR_BEST:
        reason = f"{meets}; of the {len(fitting)} candidates it is the best, or within 5% of it, on every measure"
    else:
        pick = min if metric.lower_is_better else max
        best = pick(fitting, key=lambda m: getattr(m, weakest))
        reason = (
            f"{meets}; of the {len(fitting)} candidates it stays closest to the best on every measure: "
            f"its weakest is {metric.name}, {metric.show(getattr(choice, weakest))}, "
            f"{ratios[weakest]:.1f}x that of {best.label} ({metric.show(getattr(best, weakest))})"
        )
    return Advice(choice, reason)
