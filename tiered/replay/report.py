"""What `tiered compare` prints: the table, the verdict, and the JSON."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any, TextIO

from .advisor import Advice, Limits
from .compare import Measurement, Recording
from ..units import format_bytes, format_ms, format_rate, format_size

HEADER = ("CONFIGURATION", "WRITES/S", "CKPT P50", "CKPT MAX", "Q NEWEST", "Q OLDEST",
          "RAM PEAK", "RAM STEADY", "DISK", "CPU")
# The columns a run that compares durabilities adds (see durability_columns).
DURABILITY_HEADER = ("SYNCED", "SYNCS/S", "REPLAY", "VS LAZY")


def durability_columns(durabilities: Sequence[str]) -> bool:
    """Whether the table shows the sync columns: when a configuration is not
    lazy, so that a run without --durability prints what it always did."""
    return any(d != "lazy" for d in durabilities)


def _durability_cells(m: Measurement) -> tuple[str, ...]:
    if m.durability == "lazy":
        return ("-", "-", _seconds(m.replay_s), "-")
    vs = "-" if m.replay_vs_lazy is None else f"{m.replay_vs_lazy:.2f}x"
    return (_fraction(m.sync_fraction), f"{m.syncs_per_s:,.0f}", _seconds(m.replay_s), vs)


def _seconds(s: float) -> str:
    return f"{s * 1e3:.1f}ms" if s < 1 else f"{s:.2f}s"


def _fraction(x: float) -> str:
    """A share of the writes: '12.3%', '0.05%', '0%'."""
    if x == 0:
        return "0%"
    return f"{x * 100:.1f}%" if x >= 0.01 else f"{x * 100:.3g}%"


def _row(m: Measurement, durability: bool = False) -> tuple[str, ...]:
    if not m.ok:
        return (m.label, f"failed: {m.error}")
    return (
        m.label,
        format_rate(m.writes_per_s),
        format_ms(m.checkpoint_p50_ms, ""),
        format_ms(m.checkpoint_max_ms, ""),
        format_ms(m.query_newest_ms, ""),
        format_ms(m.query_oldest_ms, ""),
        format_bytes(m.ram_peak_bytes, ""),
        format_bytes(m.ram_steady_bytes, ""),
        format_bytes(m.disk_bytes, ""),
        f"{m.cpu_s:.2f}s",
    ) + (_durability_cells(m) if durability else ())


# Wide enough for every cell but the label ("123.4MiB", "1234.5ms"), so that
# rows can be printed one by one, as each configuration finishes.
_CELL = 9


def column_widths(labels: Sequence[str], durability: bool = False) -> list[int]:
    """The columns' widths; ``durability``: with the sync columns."""
    header = HEADER + (DURABILITY_HEADER if durability else ())
    return [max(len(HEADER[0]), *map(len, labels))] + [max(_CELL, len(h)) for h in header[1:]]


def _has_durability(widths: Sequence[int]) -> bool:
    return len(widths) > len(HEADER)


def format_row(row: Sequence[str], widths: Sequence[int]) -> str:
    if len(row) < len(HEADER):  # a failure: one wide cell
        return f"{row[0].ljust(widths[0])}  {row[1]}"
    cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
    return "  ".join(cells)


def header_line(widths: Sequence[int]) -> str:
    return format_row(HEADER + (DURABILITY_HEADER if _has_durability(widths) else ()), widths)


def row_line(m: Measurement, widths: Sequence[int]) -> str:
    return format_row(_row(m, _has_durability(widths)), widths)


def write_table(out: TextIO, results: Sequence[Measurement]) -> None:
    widths = column_widths([m.label for m in results], durability_columns([m.durability for m in results]))
    out.write(header_line(widths) + "\n")
    for m in results:
        out.write(row_line(m, widths) + "\n")


def apply_command(m: Measurement, durability: bool = False) -> str:
    """The command that converts an existing volume to the chosen strategy
    (and durability: always for sync, and for lazy when ``durability``,
    i.e. when the run compared durabilities)."""
    extra = {"multi-bit": f" --width {m.width}", "hybrid": f" --recent {m.recent}"}.get(m.mode, "")
    if durability or m.durability != "lazy":
        extra += f" --durability {m.durability}"
    return f"tiered convert STORE VOLUME {m.mode}{extra}"


_DURABILITY_WHY = {
    "sync": "sync: a write waits for sync(token) only when it dirties a chunk new in the period, "
            "and answers stay exact after a crash",
    "lazy": "lazy: marks are never waited for, and a crash makes every answer since the older "
            "checkpoints cover the whole volume",
}


def write_verdict(out: TextIO, results: Sequence[Measurement], advice: Advice, problems: Sequence[str]) -> None:
    out.write(
        "\nWRITES/S: mark_many throughput (M = million).  CKPT: checkpoint() latency.  Q: changed_since\n"
        "after a reopen (cold cache).  RAM: measured growth of the process's anonymous memory (peak,\n"
        "and after the replay).  DISK: the volume's bytes in the store.  CPU: process CPU seconds.\n"
    )
    compared = durability_columns([m.durability for m in results])
    if compared:
        commit = [m.commit_ms for m in results if m.ok and m.durability == "sync"]
        batch = max((m.batch for m in results if m.ok), default=0)
        out.write(
            "SYNCED: writes that dirtied a chunk new in the period, so needed a sync (sync mode; one\n"
            f"sync(token) per batch of {batch:,} writes that needs one; WRITES/S counts the syncs' time).\n"
            "SYNCS/S: syncs per second of time spent syncing.  REPLAY: the replay's wall time; VS LAZY:\n"
            "over the lazy configuration's"
            + (f".  One small LMDB commit on this disk: {format_ms(float(sorted(commit)[len(commit) // 2]))}.\n"
               if commit else ".\n")
        )
    done = [m for m in results if m.ok]
    if problems:
        out.write("\nANSWERS DIFFER (a bug; please report it):\n")
        for p in problems:
            out.write(f"  {p}\n")
    elif done:
        by_granularity: dict[int, Measurement] = {}
        for m in done:
            by_granularity.setdefault(m.granularity, m)
        if len(by_granularity) == 1:
            same = f"All {len(done)} configurations gave the same answers"
        else:
            same = f"Configurations of the same granularity gave the same answers ({len(done)} configurations)"
        out.write(f"\n{same}.  Changed since the oldest checkpoint:\n")
        for granularity, m in by_granularity.items():
            # 16 bytes per extent: the answer's offset and length arrays, part of RAM PEAK.
            out.write(
                f"  at {format_size(granularity)} chunks: {format_bytes(m.changed_bytes)} in {m.extents:,} "
                f"extents ({format_bytes(m.extents * 16)} of answer arrays, counted in RAM PEAK)\n"
            )
    if advice.choice is None:
        out.write(f"\nNo recommendation: {advice.reason}.\n")
        return
    m = advice.choice
    if advice.worse:
        why, _, _ = advice.reason.partition(": ")
        out.write(f"\nRecommended: {m.label}\n  why: {why}:\n")
        for item in advice.worse:
            out.write(f"    {item}\n")
    else:
        out.write(f"\nRecommended: {m.label}\n  why: {advice.reason}.\n")
    if compared:
        out.write(f"  durability: {_DURABILITY_WHY.get(m.durability, m.durability)}\n")
    out.write(f"  apply to an existing volume: {apply_command(m, compared)}\n")
    out.write(
        f"  granularity is fixed when a volume is created (granularity={m.granularity}); the cache "
        f"budget is set when a volume is opened (Strategy(..., cache_bytes={m.cache_bytes})).\n"
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    # platform.processor() is empty on most Linux systems.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def document(
    rec: Recording, results: Sequence[Measurement], limits: Limits, advice: Advice, problems: Sequence[str]
) -> dict[str, Any]:
    chosen = None
    compared = durability_columns([m.durability for m in results])
    if advice.choice is not None:
        chosen = {"label": advice.choice.label, "apply": apply_command(advice.choice, compared)}
        if compared:
            chosen["durability"] = advice.choice.durability
    return {
        "workload": rec.description,
        "volume_size": rec.size,
        "writes": rec.writes,
        "checkpoints": len(rec.marks),
        "machine": machine(),
        "limits": {k: v for k, v in vars(limits).items() if v is not None and v is not False},
        "results": [m.to_dict() for m in results],
        "answers_agree": not problems,
        "disagreements": list(problems),
        "recommendation": chosen,
        "reason": advice.reason,
    }


def stopped_document(
    rec: Recording | None, results: Sequence[Measurement], limits: Limits, signal_name: str, configurations: int
) -> dict[str, Any]:
    """What ``--json`` writes when the run is stopped: the rows that finished."""
    doc: dict[str, Any] = {"stopped_by": signal_name, "configurations": configurations}
    if rec is not None:
        doc.update(workload=rec.description, volume_size=rec.size, writes=rec.writes, checkpoints=len(rec.marks))
    doc.update(
        machine=machine(),
        limits={k: v for k, v in vars(limits).items() if v is not None and v is not False},
        results=[m.to_dict() for m in results],
        recommendation=None,
        reason=f"stopped by {signal_name} after {len(results)} of {configurations} configurations",
    )
    return doc
