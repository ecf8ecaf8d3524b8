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


def _row(m: Measurement) -> tuple[str, ...]:
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
    )


# Wide enough for every cell but the label ("123.4MiB", "1234.5ms"), so that
# rows can be printed one by one, as each configuration finishes.
_CELL = 9


def column_widths(labels: Sequence[str]) -> list[int]:
    return [max(len(HEADER[0]), *map(len, labels))] + [max(_CELL, len(h)) for h in HEADER[1:]]


def format_row(row: Sequence[str], widths: Sequence[int]) -> str:
    if len(row) < len(HEADER):  # a failure: one wide cell
        return f"{row[0].ljust(widths[0])}  {row[1]}"
    cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
    return "  ".join(cells)


def header_line(widths: Sequence[int]) -> str:
    return format_row(HEADER, widths)


def row_line(m: Measurement, widths: Sequence[int]) -> str:
    return format_row(_row(m), widths)


def write_table(out: TextIO, results: Sequence[Measurement]) -> None:
    widths = column_widths([m.label for m in results])
    out.write(header_line(widths) + "\n")
    for m in results:
        out.write(row_line(m, widths) + "\n")


def apply_command(m: Measurement) -> str:
    """The command that converts an existing volume to the chosen strategy."""
    extra = {"multi-bit": f" --width {m.width}", "hybrid": f" --recent {m.recent}"}.get(m.mode, "")
    return f"tiered convert STORE VOLUME {m.mode}{extra}"


def write_verdict(out: TextIO, results: Sequence[Measurement], advice: Advice, problems: Sequence[str]) -> None:
    out.write(
        "\nWRITES/S: mark_many throughput (M = million).  CKPT: checkpoint() latency.  Q: changed_since\n"
        "after a reopen (cold cache).  RAM: measured growth of the process's anonymous memory (peak,\n"
        "and after the replay).  DISK: the volume's bytes in the store.  CPU: process CPU seconds.\n"
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
    out.write(f"  apply to an existing volume: {apply_command(m)}\n")
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
    if advice.choice is not None:
        chosen = {"label": advice.choice.label, "apply": apply_command(advice.choice)}
    return {
        "workload": rec.description,
        "volume_size": rec.size,
        "writes": rec.writes,
        "checkpoints": len(rec.marks),
        "machine": machine(),
        "limits": {k: v for k, v in vars(limits).items() if v is not None},
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
        limits={k: v for k, v in vars(limits).items() if v is not None},
        results=[m.to_dict() for m in results],
        recommendation=None,
        reason=f"stopped by {signal_name} after {len(results)} of {configurations} configurations",
    )
    return doc
