"""What a repair changes, from what the scan found: pure, no storage.

The model (docs/design.md, "Corruption"): a volume answers "changed since
X" with the whole region, flagged ``exact=False``, whenever ``gen(X) <=
lost_generation``.  So a damaged value is deleted and ``lost_generation``
raised over every period whose writes it may have held; the answers of
later checkpoints never read it again.  Deleting a checkpoint whose own
record is damaged keeps every other answer: its period's writes stay in
the stored writesets or array, where the remaining checkpoints find them,
as after :meth:`tiered.Volume.remove_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from ..storage.keys import key_digest
from .scan import StoreScan
from .volumes import VolumeScan


@dataclasses.dataclass
class VolumePlan:
    #: Keys to delete, by database.
    delete: dict[str, list[bytes]]
    #: The new volume record (None: leave it, or the volume goes).
    record: dict[str, Any] | None
    #: Whether the whole volume goes (unreadable record, when asked).
    remove: bool = False


def plan_volume(scan: VolumeScan, remove_unreadable: bool) -> VolumePlan | None:
    """The changes that repair one volume (None: nothing to do), and the
    report's account of them."""
    report = scan.report
    if report.clean:
        return None
    if scan.record is None:
        if not remove_unreadable:
            return None  # the report says it cannot be repaired
        report.actions.append("remove the volume and every key it has (its record is unreadable)")
        return VolumePlan({db: list(keys) for db, keys in scan.keys.items()}, None, remove=True)
    record = scan.record
    gen = record["generation"]
    old_lost = record["lost_generation"]
    delete: dict[str, set[bytes]] = {"checkpoints": set(), "pages": set(), "journal": set()}
    actions = report.actions
    # Checkpoints whose record is damaged.
    for g in sorted(scan.drop_checkpoints):
        delete["checkpoints"].add(scan.checkpoint_keys[g])
        actions.append(f"delete the checkpoint of generation {g}")
    remaining = sorted(g for g in scan.checkpoint_keys if g not in scan.drop_checkpoints)
    # Damaged pages and tables.
    for tag, g in sorted(scan.drop_tables):
        keys = scan.tables.get((tag, g), [])
        delete["pages"].update(keys)
        actions.append(f"delete table {tag.decode('latin-1')}/{g} ({len(keys)} page{'s' * (len(keys) != 1)})")
    for key in sorted(scan.drop_pages - delete["pages"]):
        delete["pages"].add(key)
        actions.append(f"delete page {key[8:9].decode('latin-1')}/{int.from_bytes(key[9:17], 'big')}/"
                       f"{int.from_bytes(key[17:25], 'big')}")
    if scan.clear_journal and scan.keys["journal"]:
        delete["journal"].update(scan.keys["journal"])
        actions.append(f"delete the journal ({len(scan.keys['journal'])} entries)")
    changes: dict[str, Any] = {}
    if not remaining:
        # No checkpoint is left to ask about anything: forget all history.
        delete["pages"].update(k for keys in scan.tables.values() for k in keys)
        delete["journal"].update(scan.keys["journal"])
        delete["checkpoints"].update(scan.checkpoint_keys.values())
        changes.update(lost_generation=0, unflushed=False, journal_from=0, journal_last=0, journal_count=0)
        if "superset_generation" in record:
            changes["superset_generation"] = 0
        if "exact_from" in record:
            changes["exact_from"] = 0
        if record["strategy"]["mode"] == "hybrid":
            changes.update(folded_through=0, fold_upto=0, fold_next=0)
        actions.append("no checkpoint remains: forget all history")
    else:
        # Writesets below the oldest checkpoint left answer nothing.
        for (tag, g), keys in sorted(scan.tables.items()):
            if tag == b"W" and g < remaining[0] and not set(keys) <= delete["pages"]:
                delete["pages"].update(keys)
                actions.append(f"delete writeset W/{g}, older than every remaining checkpoint")
        lost = min(max(old_lost, scan.lose), gen)
        if lost != old_lost:
            changes["lost_generation"] = lost
            actions.append(f"lost_generation {old_lost} -> {lost}: answers since a checkpoint of generation "
                           f"<= {lost} become the whole volume, flagged exact=False")
            report.lost_checkpoints = [scan.names[g] for g in remaining if old_lost < g <= lost and g in scan.names]
        if scan.clear_journal:
            changes.update(journal_from=0, journal_last=0, journal_count=0)
        if scan.reset_fold and (record.get("fold_upto") or record.get("fold_next")):
            changes.update(fold_upto=0, fold_next=0)
            actions.append("restart the fold in progress")
    report.removed_checkpoints = [
        scan.names.get(g, f"<generation {g}>") for g in sorted(set(
            int.from_bytes(k[8:], "big") for k in delete["checkpoints"]))
    ]
    kept_pages = [k for keys in scan.tables.values() for k in keys if k not in delete["pages"]]
    digest = 0
    for key in kept_pages:
        digest ^= key_digest(key)
    changes["checkpoints"] = len(scan.checkpoint_keys) - len(delete["checkpoints"])
    changes["pages_digest"] = digest
    changes["generation_id"] = str(uuid.uuid4())
    if scan.fix_counts:
        actions.append("count the checkpoints and digest the page keys the store now holds")
    actions.append("give the volume a new generation id")
    return VolumePlan({db: sorted(keys) for db, keys in delete.items()}, {**record, **changes})


def plan_store(scan: StoreScan) -> list[str]:
    """The store-level changes, as text for the report."""
    actions = []
    if scan.drop:
        actions.append(f"delete {len(scan.drop)} key{'s' * (len(scan.drop) != 1)} of no readable volume")
    if scan.counter is not None:
        actions.append(f"write the volume counter {scan.counter}")
    return actions
