"""What is stored and how: the LMDB environment (:mod:`.environment`), its
keys (:mod:`.keys`), the checksummed envelope and page codec
(:mod:`.codec`, with the page-format kernels in :mod:`.page_kernels`),
format versions and the upgrade of format-1 stores (:mod:`.versions`), and
the lazily loaded, byte-bounded page cache (:mod:`.pages`).

Storage knows bytes and keys, never strategies.
"""
