"""QEMU qcow2 persistent dirty bitmaps: tiered checkpoints written into a
qcow2 image through QEMU's own tools (docs/qcow2.md)."""

from .exporter import export_bitmaps

__all__ = [
    "export_bitmaps",
]
