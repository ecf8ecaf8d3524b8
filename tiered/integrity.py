"""Cross-checks of what a volume's stored values mean, run when it opens.

A checksum proves that a value is the one written under its key; it cannot
prove that the values agree with each other.  Before a volume decodes
anything, its record, its checkpoints and its page catalog (keys only: the
check is O(catalog) and decodes no page) are checked against each other:

* the record has every field, of the right type and range, and its id is
  its key's;
* checkpoint generations lie in [1, generation], names are valid and unique,
  and (format 2) there are as many as the record counts: a checkpoint whose
  key lost its volume id would otherwise just vanish;
* (format 2) the digest of the page keys is the one the record holds: a
  page whose key changed is missing from where queries look for it, and a
  region query would never read the page that now fails its checksum;
* page tags are those the strategy uses (one-bit: ``W``, ``A``; multi-bit:
  ``G``; hybrid: all three), ``A`` and ``G`` pages have generation 0, and a
  ``W`` page belongs to a sealed period a live checkpoint can still ask
  about: from the oldest live checkpoint's generation up to, not including,
  the current one.  (Pages beyond the volume are refused while the catalog
  loads, :mod:`tiered.storage.pages`.)

And when the store opens, every checkpoint and page key must belong to a
volume that has a record (:func:`check_owned`): a lost record would
otherwise make its volume vanish.

Any mismatch is a :class:`~tiered.errors.CorruptionError` naming the volume
and what is wrong, so a volume whose history could answer wrongly never
answers at all.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

from .checks import check_geometry
from .config import GEN_WIDTHS, MAX_GEN_32, MAX_NAME_BYTES, MODES, Strategy, max_generation
from .errors import CorruptionError, TieredError

#: Page tags each strategy stores (docs/format.md).
TAGS = {"one-bit": {b"W", b"A"}, "multi-bit": {b"G"}, "hybrid": {b"W", b"A", b"G"}}
ONE_BIT_MAX_GEN = (1 << 63) - 1


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _valid_name(name: object) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


def check_record(vol_id: int, record: dict[str, Any], version: int) -> Strategy:
    """Check a volume record read under the key of ``vol_id`` from a store
    of format ``version``; return the strategy it stores."""
    label = f"volume {record.get('name')!r} (id {vol_id})" if isinstance(record.get("name"), str) else f"volume id {vol_id}"

    def bad(msg: str) -> CorruptionError:
        return CorruptionError(f"{label}: stored record {msg}")

    if record.get("id") != vol_id or not _is_int(record.get("id")):
        raise bad(f"has id {record.get('id')!r} under the key of volume {vol_id}")
    if not _valid_name(record.get("name")):
        raise bad(f"has an invalid name {record.get('name')!r}")
    for field in ("size", "granularity", "generation", "lost_generation"):
        if not _is_int(record.get(field)):
            raise bad(f"field {field!r} is {record.get(field)!r}, not an integer")
    try:
        check_geometry(record["size"], record["granularity"])
    except TieredError as exc:
        raise bad(f"has an impossible geometry: {exc}") from None
    if not _is_number(record.get("created")):
        raise bad(f"field 'created' is {record.get('created')!r}, not a time")
    for field in ("unflushed", "dirty"):
        if field in record and not isinstance(record[field], bool):
            raise bad(f"field {field!r} is {record[field]!r}, not a bool")
    if version >= 2:
        # Format 2 names the flag "unflushed" and counts what the keys hold.
        if "dirty" in record or "unflushed" not in record:
            raise bad("names its unflushed flag as format 1 did")
        for field in ("checkpoints", "pages_digest"):
            v = record.get(field)
            if not _is_int(v) or not 0 <= v < 1 << 64:
                raise bad(f"field {field!r} is {v!r}, not a count")
    stored = record.get("strategy")
    if not isinstance(stored, dict) or stored.get("mode") not in MODES:
        raise bad(f"has an unknown strategy {stored!r}")
    if set(stored) - {"mode", "width", "recent"} or (
        "width" in stored and stored["width"] not in GEN_WIDTHS
    ) or ("recent" in stored and not (_is_int(stored["recent"]) and stored["recent"] >= 1)):
        raise bad(f"has an invalid strategy {stored!r}")
    try:
        strategy = Strategy(**stored)
    except (TieredError, TypeError) as exc:
        raise bad(f"has an invalid strategy {stored!r}: {exc}") from None
    gen = record["generation"]
    top = {"one-bit": ONE_BIT_MAX_GEN, "hybrid": MAX_GEN_32}.get(strategy.mode) or max_generation(strategy.width)
    if not 0 <= gen <= top:
        raise bad(f"has generation {gen}, outside [0, {top}] for its {strategy.describe()}")
    if not 0 <= record["lost_generation"] <= gen:
        raise bad(f"has lost_generation {record['lost_generation']} outside [0, generation {gen}]")
    superset = record.get("superset_generation", 0)
    if not _is_int(superset) or not 0 <= superset <= gen:
        raise bad(f"has superset_generation {superset!r} outside [0, generation {gen}]")
    if record.get("durability", "lazy") not in ("lazy", "sync"):
        raise bad(f"has an unknown durability {record.get('durability')!r}")
    if "generation_id" in record:
        try:
            uuid.UUID(record["generation_id"])
        except (TypeError, ValueError, AttributeError):
            raise bad(f"has an invalid generation id {record['generation_id']!r}") from None
    journal = [record.get(f, 0) for f in ("journal_from", "journal_last", "journal_count")]
    if not all(_is_int(v) and 0 <= v < 1 << 63 for v in journal):
        raise bad(f"has an invalid journal range {journal}")
    first, last, count = journal
    if (count == 0) != (first == 0 and last == 0) or (count and not (first <= last and count <= last - first + 1)):
        raise bad(f"has an inconsistent journal range {journal}")
    if count and not (record.get("unflushed") and record.get("durability") == "sync"):
        raise bad("has journal entries but is not an unflushed sync-mode volume")
    limits = {"exact_from": gen + 1, "folded_through": gen, "fold_upto": gen, "fold_next": None}
    for field, most in limits.items():
        if field not in record:
            continue
        v = record[field]
        if not _is_int(v) or v < 0 or (most is not None and v > most):
            raise bad(f"field {field!r} is {v!r}, outside [0, {most if most is not None else 'any'}]")
    return strategy


def check_history(
    vol_id: int,
    record: dict[str, Any],
    strategy: Strategy,
    checkpoints: list[tuple[int, dict[str, Any]]],
    tables: Iterable[tuple[bytes, int]],
    pages_digest: int,
) -> None:
    """Check a volume's checkpoints (generation and stored record, in key
    order), its stored tables ((tag, generation) of the page catalog) and
    the digest of its page keys against its record (already checked by
    :func:`check_record`)."""
    label = f"volume {record['name']!r} (id {vol_id})"
    gen = record["generation"]
    if "checkpoints" in record and record["checkpoints"] != len(checkpoints):
        raise CorruptionError(
            f"{label}: the record counts {record['checkpoints']} checkpoints, the store holds {len(checkpoints)}"
        )
    if "pages_digest" in record and record["pages_digest"] != pages_digest:
        raise CorruptionError(
            f"{label}: the keys of its stored pages are not those it wrote (a page key was changed, "
            "lost or added)"
        )
    names: set[str] = set()
    for g, rec in checkpoints:
        if not 1 <= g <= gen:
            raise CorruptionError(
                f"{label}: checkpoint generation {g} lies outside [1, the volume's generation {gen}]"
            )
        name = rec.get("name")
        if not _valid_name(name) or not _is_number(rec.get("created")):
            raise CorruptionError(f"{label}: checkpoint of generation {g} has a malformed record")
        if name in names:
            raise CorruptionError(f"{label}: two checkpoints are named {name!r}")
        names.add(name)
    oldest = checkpoints[0][0] if checkpoints else None
    allowed = TAGS[strategy.mode]
    for tag, g in tables:
        shown = tag.decode("latin-1")
        if tag not in allowed:
            raise CorruptionError(
                f"{label}: stores pages of table {shown!r}/{g}, which its {strategy.describe()} does not use"
            )
        if tag != b"W":
            if g != 0:
                raise CorruptionError(f"{label}: stores pages of table {shown!r} under generation {g}, not 0")
        elif oldest is None or not oldest <= g < gen:
            raise CorruptionError(
                f"{label}: stores a writeset of period {g}, which no live checkpoint covers "
                + (f"(live periods: [{oldest}, {gen}))" if oldest is not None else "(no live checkpoint)")
            )


def check_owned(vol_ids: Iterable[int], owners: Iterable[bytes], what: str) -> None:
    """Check that every key of the ``checkpoints`` or ``pages`` database
    (``what``), given as the distinct volume ids its keys start with
    (``owners``, 8 bytes each), belongs to a volume that has a record.

    Removing a volume deletes its keys in the transaction that deletes its
    record, so keys of a volume without one mean that its record was lost
    (its key deleted or changed): the volume, its checkpoints and its
    history would otherwise just vanish from the store, with no checksum
    ever failing.  Costs one seek per volume, not a read per key.
    """
    known = set(vol_ids)
    for owner in owners:
        if len(owner) != 8:
            raise CorruptionError(f"the store holds a {what} key {owner.hex()} too short to name a volume")
        vol_id = int.from_bytes(owner, "big")
        if vol_id not in known:
            raise CorruptionError(
                f"the store holds {what} of volume id {vol_id}, which has no volume record: "
                "that volume's record was lost"
            )
