"""Check one volume: its record, every checkpoint, every page decoded
with the volume's geometry, the page-key digest and the journal, each
item on its own so that every problem is found, not only the first.

Each problem also notes what it costs (which periods lose their tracking,
what a repair deletes) in the volume's :class:`VolumeScan`;
:mod:`tiered.fsck.plan` turns that into record changes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import PAGE_SEGMENTS, SEG_CHUNKS, Strategy
from ..errors import CorruptionError, TieredError
from ..integrity import TAGS, _is_number, _valid_name, check_history, check_record
from ..storage import codec
from ..storage.environment import Storage
from ..storage.journal import decode_entry
from ..storage.keys import key_digest
from .report import Problem, VolumeReport


@dataclasses.dataclass
class VolumeScan:
    """What the scan found in one volume, and what it costs."""

    report: VolumeReport
    key: bytes
    record: dict[str, Any] | None = None
    strategy: Strategy | None = None
    #: Every key of the volume by database (keys of the right length).
    keys: dict[str, list[bytes]] = dataclasses.field(default_factory=dict)
    #: Checkpoints whose record reads well: generation -> name.
    names: dict[int, str] = dataclasses.field(default_factory=dict)
    #: Checkpoint keys by generation.
    checkpoint_keys: dict[int, bytes] = dataclasses.field(default_factory=dict)
    #: Page keys by (tag, generation).
    tables: dict[tuple[bytes, int], list[bytes]] = dataclasses.field(default_factory=dict)
    # -- costs ------------------------------------------------------------
    #: Checkpoints of a generation up to this lose their tracking.
    lose: int = 0
    drop_pages: set[bytes] = dataclasses.field(default_factory=set)
    drop_tables: set[tuple[bytes, int]] = dataclasses.field(default_factory=set)
    drop_checkpoints: set[int] = dataclasses.field(default_factory=set)
    reset_fold: bool = False
    clear_journal: bool = False
    fix_counts: bool = False


def read_record(scan: VolumeScan, value: bytes | None, version: int) -> None:
    vol_id = scan.report.id
    try:
        if value is None:
            raise CorruptionError("vanished")
        record = codec.unpack_json(value, scan.key, version, f"volume record of id {vol_id}")
        strategy = check_record(vol_id, record, version)
    except CorruptionError as exc:
        scan.report.unreadable = True
        scan.report.problems.append(Problem(
            "volumes", str(exc), scan.key.hex(),
            repair="remove the volume and all its keys, only with remove_unreadable"))
        # The name, if the payload still parses, helps whoever reads the report.
        try:
            scan.report.name = json.loads(bytes(value[codec.HEADER.size:])).get("name")  # type: ignore[index]
            if not isinstance(scan.report.name, str):
                scan.report.name = None
        except Exception:
            scan.report.name = None
        return
    scan.record, scan.strategy = record, strategy
    scan.report.name = record["name"]
    scan.report.mode = strategy.mode
    from ..volume import stored_generation_id

    scan.report.generation_id = stored_generation_id(record)


def scan_unreadable(scan: VolumeScan, storage: Storage, txn: Any, version: int) -> None:
    """Checksums only: without a record there is no geometry to decode with."""
    for key in scan.keys["checkpoints"]:
        try:
            codec.unpack_json(txn.get(key, db=storage.checkpoints), key, version, "checkpoint")
        except CorruptionError as exc:
            scan.report.problems.append(Problem("checkpoints", str(exc), key.hex(),
                                                generation=int.from_bytes(key[8:], "big")))
    for key in scan.keys["pages"]:
        value = txn.get(key, db=storage.pages)
        kind = value[3] if len(value) > 3 else -1
        try:
            if kind not in (codec.KIND_BITS_PAGE, codec.KIND_GENS_PAGE):
                raise CorruptionError(f"stored kind {kind} is not a page")
            codec.unwrap(value, kind, key, version, "page")
        except CorruptionError as exc:
            scan.report.problems.append(_page_problem(key, str(exc), {}))
    for key in scan.keys["journal"]:
        try:
            codec.unwrap(txn.get(key, db=storage.journal), codec.KIND_JOURNAL, key, version, "journal entry")
        except CorruptionError as exc:
            scan.report.problems.append(Problem("journal", str(exc), key.hex(), entry=int.from_bytes(key[8:], "big")))


def _page_problem(key: bytes, what: str, names: dict[int, str], repair: str = "") -> Problem:
    tag = key[8:9].decode("latin-1")
    gen = int.from_bytes(key[9:17], "big")
    page = int.from_bytes(key[17:25], "big")
    checkpoint = names.get(gen) if tag == "W" else None
    return Problem("pages", what, key.hex(), tag=tag, generation=gen, checkpoint=checkpoint, page=page, repair=repair)


def scan_volume(scan: VolumeScan, storage: Storage, txn: Any, version: int) -> None:
    from ..strategies import gens_dtype

    record, strategy = scan.record, scan.strategy
    assert record is not None and strategy is not None
    gen = record["generation"]
    report = scan.report
    problems = report.problems
    everything = f"lose the tracking of every checkpoint (lost_generation = {gen})"

    def lose_all() -> None:
        scan.lose = max(scan.lose, gen)

    # -- checkpoints ----------------------------------------------------
    readable: list[tuple[int, dict[str, Any]]] = []
    bad: list[tuple[int, str]] = []
    for key in scan.keys["checkpoints"]:
        g = int.from_bytes(key[8:], "big")
        scan.checkpoint_keys[g] = key
        try:
            rec = codec.unpack_json(txn.get(key, db=storage.checkpoints), key, version, "stored record")
        except CorruptionError as exc:
            bad.append((g, str(exc)))
            continue
        if not 1 <= g <= gen:
            bad.append((g, f"checkpoint generation {g} lies outside [1, the volume's generation {gen}]"))
        elif not _valid_name(rec.get("name")) or not _is_number(rec.get("created")):
            bad.append((g, "malformed checkpoint record"))
        else:
            readable.append((g, rec))
    # Two checkpoints of one name: neither can be told from the other.
    by_name: dict[str, list[int]] = {}
    for g, rec in readable:
        by_name.setdefault(rec["name"], []).append(g)
    good = [(g, rec) for g, rec in readable if len(by_name[rec["name"]]) == 1]
    for g, rec in readable:
        if len(by_name[rec["name"]]) > 1:
            bad.append((g, f"two checkpoints are named {rec['name']!r} (generations {by_name[rec['name']]})"))
    scan.names = {g: rec["name"] for g, rec in good}
    for g, what in sorted(bad):
        scan.drop_checkpoints.add(g)
        problems.append(Problem("checkpoints", what, scan.checkpoint_keys[g].hex(), generation=g,
                                repair="delete the checkpoint; every other answer stays"))
    if "checkpoints" in record and record["checkpoints"] != len(scan.keys["checkpoints"]):
        scan.fix_counts = True
        problems.append(Problem(
            "volumes", f"the record counts {record['checkpoints']} checkpoints, the store holds "
            f"{len(scan.keys['checkpoints'])} (a checkpoint key was lost, moved or added)", scan.key.hex(),
            repair="count the checkpoints the store holds"))
    # A writeset belongs to a period a checkpoint can ask about, damaged
    # checkpoints included: a repair that deletes one deletes the
    # writesets left below the oldest that remains.
    lowest = min((g for g in scan.checkpoint_keys if 1 <= g <= gen), default=None)

    # -- pages --------------------------------------------------------
    n_chunks = -(-record["size"] // record["granularity"])
    n_segments = -(-n_chunks // SEG_CHUNKS)
    n_pages = -(-n_segments // PAGE_SEGMENTS)
    dtype = gens_dtype(strategy)
    allowed = TAGS[strategy.mode]
    digest = 0
    for key in scan.keys["pages"]:
        digest ^= key_digest(key)
        tag, g, page = key[8:9], int.from_bytes(key[9:17], "big"), int.from_bytes(key[17:25], "big")
        scan.tables.setdefault((tag, g), []).append(key)
        shown = tag.decode("latin-1")
        what = None
        if tag not in allowed:
            what = f"a page of table {shown!r}, which its {strategy.describe()} does not use"
        elif tag != b"W" and g != 0:
            what = f"a page of table {shown!r} under generation {g}, not 0"
        elif tag == b"W" and (lowest is None or not lowest <= g < gen):
            what = f"a writeset of period {g}, which no live checkpoint covers"
        elif page >= n_pages:
            what = f"page {page} lies beyond the volume's {n_pages} pages"
        if what is not None:
            lose_all()
            scan.drop_pages.add(key)
            problems.append(_page_problem(key, what, scan.names, repair=f"delete it; {everything}"))
            continue
        value = txn.get(key, db=storage.pages)
        what_value = "stored page"
        try:
            if tag == b"G":
                codec.decode_gens_page(value, page, dtype, what_value, key=key, version=version, n_segments=n_segments)
            else:
                codec.decode_bits_page(value, page, what_value, key=key, version=version, n_segments=n_segments)
        except Exception as exc:  # noqa: BLE001 - whatever a decoder meets is damage to report
            problems.append(_page_problem(key, str(exc) or type(exc).__name__, scan.names,
                                          repair=_damaged_page(scan, tag, g, key)))
    if "pages_digest" in record and record["pages_digest"] != digest:
        lose_all()
        scan.fix_counts = True
        problems.append(Problem(
            "volumes", "the keys of its stored pages are not those it wrote (a page key was changed, lost or added)",
            scan.key.hex(), repair=f"rewrite the digest of the page keys; {everything}"))

    # -- journal --------------------------------------------------------
    _scan_journal(scan, storage, txn, version, n_chunks, lose_all, everything)

    # -- what the volume's open checks say, as a safety net ---------------
    if not problems:
        tables = sorted(scan.tables)
        try:
            check_history(report.id, record, strategy, good, tables, digest)
        except TieredError as exc:
            lose_all()
            scan.fix_counts = True
            problems.append(Problem("volumes", str(exc), scan.key.hex(), repair=everything))


def _damaged_page(scan: VolumeScan, tag: bytes, g: int, key: bytes) -> str:
    """Note what a damaged page costs; the repair it calls for, as text."""
    record = scan.record
    assert record is not None
    gen = record["generation"]
    if tag == b"W":
        scan.lose = max(scan.lose, g)
        scan.drop_tables.add((tag, g))
        return f"delete writeset W/{g}; checkpoints of generation <= {g} lose their tracking"
    if tag == b"A":
        scan.lose = max(scan.lose, gen)
        scan.drop_tables.add((tag, g))
        return f"delete the active snapshot; every checkpoint loses its tracking (lost_generation = {gen})"
    if record["strategy"]["mode"] == "multi-bit":
        # Any generation of any chunk of the page may be gone: every period.
        scan.lose = max(scan.lose, gen)
        scan.drop_pages.add(key)
        return f"delete the page; every checkpoint loses its tracking (lost_generation = {gen})"
    # Hybrid: the array holds the folded periods (<= folded_through); a fold
    # in progress has rewritten some of its pages, so it starts again.
    folded = int(record.get("folded_through", 0))
    scan.lose = max(scan.lose, folded)
    scan.drop_tables.add((tag, g))
    scan.reset_fold = True
    return (f"delete the generation array (restart any fold); checkpoints of generation <= {folded} "
            "(the folded periods) lose their tracking")


def _scan_journal(scan: VolumeScan, storage: Storage, txn: Any, version: int, n_chunks: int, lose_all: Any,
                  everything: str) -> None:
    record = scan.record
    assert record is not None
    gen = record["generation"]
    first, last, count = (int(record.get(f, 0)) for f in ("journal_from", "journal_last", "journal_count"))
    strict = record["strategy"]["mode"] != "multi-bit"  # a bitmap journal holds one period
    found: list[Problem] = []
    seen, prev = 0, first - 1
    for key in scan.keys["journal"]:
        seq = int.from_bytes(key[8:], "big")
        what, period = None, None
        if not count:
            what = "a journal entry, but the record names none"
        elif seq <= prev or seq > last or (seen == 0 and seq != first) or seen == count:
            what = f"journal entry {seq} is not among the {count} entries {first}..{last} the record names"
        else:
            try:
                period, _ = decode_entry(txn.get(key, db=storage.journal), key, version, n_chunks, "stored entry")
                if period > gen or period < 1 or (strict and period != gen):
                    what = f"journal entry {seq} holds marks of period {period}; the volume is in period {gen}"
            except CorruptionError as exc:
                what = str(exc)
            seen += 1
            prev = seq
        if what is not None:
            found.append(Problem("journal", what, key.hex(), entry=seq, generation=period,
                                 checkpoint=scan.names.get(period) if period is not None else None))
    if not found and (seen != count or (count and prev != last)):
        found.append(Problem("journal", f"the record names {count} journal entries {first}..{last}; "
                             f"the store holds {seen}", scan.key.hex()))
    if found:
        lose_all()
        scan.clear_journal = True
        for p in found:
            scan.report.problems.append(dataclasses.replace(p, repair=f"delete the journal; {everything}"))
