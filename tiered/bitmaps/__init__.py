"""The sparse segmented tables in RAM and their numba kernels.

:mod:`.table` is the Python face (``SegmentTable``, ``Spans``): it validates,
sizes and grows arrays.  :mod:`.kernels` holds the directory and the marking
kernels of the write path, :mod:`.span_kernels` the merging and extent
kernels over span lists.  Kernels only loop.
"""
