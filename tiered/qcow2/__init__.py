"""QEMU qcow2 persistent dirty bitmaps and tiered checkpoints (docs/qcow2.md).

:func:`read_bitmaps` reads an image's bitmap metadata (read only: tiered
never writes qcow2 metadata itself); :func:`import_bitmaps` turns the
bitmaps into a volume whose checkpoints answer ``changed_since(B)`` with
bitmap B; :func:`export_bitmaps` writes checkpoints into a qcow2 image as
persistent bitmaps through QEMU's own tools.
"""

from __future__ import annotations

from .exporter import export_bitmaps
from .format import Bitmap, Qcow2Image, read_bitmaps
from .importer import ImportPlan, ImportReport, apply_import, import_bitmaps, plan_import

__all__ = [
    "Bitmap", "ImportPlan", "ImportReport", "Qcow2Image", "apply_import", "export_bitmaps", "import_bitmaps",
    "plan_import", "read_bitmaps",
]
