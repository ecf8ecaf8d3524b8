"""What is stored and how: the LMDB environment (:mod:`.environment`, with
the data file's meta-page check in :mod:`.lmdbfile`), its keys
(:mod:`.keys`), the checksummed envelope and page codec (:mod:`.codec`, with
the page-format kernels in :mod:`.page_kernels` and :mod:`.gen_page_kernels`),
format versions and the upgrade of format-1 stores (:mod:`.versions`), the
lazily loaded, byte-bounded page cache (:mod:`.pages`), and the kernels that
fold writesets into a generation page (:mod:`.fold`) or scan one for a query
(:mod:`.scan_kernels`).

Storage knows bytes and keys, never strategies.
"""
