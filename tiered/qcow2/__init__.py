"""QEMU qcow2 persistent dirty bitmaps and tiered checkpoints (docs/qcow2.md).

:func:`read_bitmaps` reads an image's bitmap metadata (read only: tiered
never writes qcow2 metadata itself); :func:`import_bitmaps` turns the
bitmaps into a volume whose checkpoints answer ``changed_since(B)`` with
bitmap B.
"""

from __future__ import annotations

from .format import Bitmap, Qcow2Image, read_bitmaps
from .importer import ImportReport, import_bitmaps

__all__ = ["Bitmap", "ImportReport", "Qcow2Image", "import_bitmaps", "read_bitmaps"]
