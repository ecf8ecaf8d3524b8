"""Replaying writes to measure a configuration: synthetic workloads
(:mod:`.workloads`), block-trace readers (:mod:`.traces`), the write batches
both produce (:mod:`.batches`), ``tiered compare`` (:mod:`.compare`), its
advisor, report and plot, and process-memory measurement (:mod:`.memory`).
"""
