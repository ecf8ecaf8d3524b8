"""Apply a repair: one write transaction that scans the store again, plans
and makes every change, so a repair happens completely or not at all."""

from __future__ import annotations

from typing import Any

from ..errors import CorruptionError, TieredError
from ..storage import codec
from ..storage.environment import Storage
from .plan import plan_store, plan_volume
from .report import CheckReport
from .scan import NEXT_VOLUME_KEY, scan_store


def repair_storage(storage: Storage, only: str | None, remove_unreadable: bool) -> CheckReport:
    """Repair what a scan finds, in one transaction; the report of what was
    found and done, with ``after`` the check of the repaired store."""

    def body(txn: Any) -> CheckReport:
        # The scan runs inside the transaction it repairs (and again if the
        # map grows and LMDB retries it): nothing changes in between.
        scan = scan_store(storage, txn, only)
        if scan.refuse is not None:
            raise CorruptionError(f"store {storage.path!r} cannot be repaired: {scan.refuse}; nothing was changed")
        if scan.version != codec.FORMAT_VERSION and not scan.report.clean:
            raise TieredError(
                f"store {storage.path!r} is in format {scan.version}: open it for writing once to upgrade it, "
                "then repair it; nothing was changed"
            )
        dbs = {"checkpoints": storage.checkpoints, "pages": storage.pages, "journal": storage.journal,
               "volumes": storage.volumes, "meta": storage.meta}
        for vol in scan.volumes:
            plan = plan_volume(vol, remove_unreadable)
            if plan is None:
                continue
            for db, keys in plan.delete.items():
                for key in keys:
                    txn.delete(key, db=dbs[db])
            if plan.remove:
                txn.delete(vol.key, db=storage.volumes)
            elif plan.record is not None:
                txn.put(vol.key, codec.pack_json(plan.record, vol.key), db=storage.volumes)
                vol.report.new_generation_id = plan.record["generation_id"]
        scan.report.store_actions = plan_store(scan)
        for db, key in scan.drop:
            txn.delete(key, db=dbs[db])
        if scan.counter is not None:
            txn.put(NEXT_VOLUME_KEY, codec.pack_json({"id": scan.counter}, NEXT_VOLUME_KEY), db=storage.meta)
        return scan.report

    report = storage.write(body)
    report.repaired = True
    report.after = check_storage(storage, only)
    return report


def check_storage(storage: Storage, only: str | None) -> CheckReport:
    """Check, changing nothing; the report also says what a repair would do."""
    with storage.reading() as txn:
        scan = scan_store(storage, txn, only)
    for vol in scan.volumes:
        plan_volume(vol, remove_unreadable=False)
    scan.report.store_actions = plan_store(scan)
    return scan.report
