"""Find every damaged or inconsistent value and key of a store, in one read
(or write) transaction, without stopping at the first.

This module walks the store: the ``meta`` records, every key of every
database grouped by volume (keys of malformed length, keys of a volume
that has no record), and hands each volume to :mod:`tiered.fsck.volumes`,
which checks its values as the store reads them (envelope, checksum over
key and payload, every page decoded with the volume's geometry) and
cross-checks them as :mod:`tiered.integrity` does when a volume opens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import CorruptionError, VolumeNotFoundError
from ..storage import codec
from ..storage.environment import Storage
from ..storage.journal import JOURNAL_KEY_SIZE
from ..storage.keys import CHECKPOINT_KEY_SIZE, PAGE_KEY_SIZE, VOLUME_KEY_SIZE
from ..storage.versions import FORMAT_KEY, read_format
from .report import CheckReport, Problem, VolumeReport
from .volumes import VolumeScan, read_record, scan_unreadable, scan_volume

NEXT_VOLUME_KEY = b"next_volume"
#: The databases that hold per-volume keys, and the length of their keys.
VOLUME_DBS = {"checkpoints": CHECKPOINT_KEY_SIZE, "pages": PAGE_KEY_SIZE, "journal": JOURNAL_KEY_SIZE}


@dataclasses.dataclass
class StoreScan:
    report: CheckReport
    volumes: list[VolumeScan]
    version: int
    #: Keys a repair deletes that belong to no readable volume: (db, key).
    drop: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    #: The volume counter a repair writes (None: it is fine).
    counter: int | None = None
    #: Why the store cannot be repaired at all (None: it can).
    refuse: str | None = None


def _keys(txn: Any, db: Any) -> list[bytes]:
    return [bytes(k) for k in txn.cursor(db).iternext(keys=True, values=False)]


def scan_store(storage: Storage, txn: Any, only: str | None = None) -> StoreScan:
    """Check everything (``only``: one volume, and no store-level check but
    the format record); never raises CorruptionError, reports it."""
    report = CheckReport(path=storage.path, format=None)
    version = codec.FORMAT_VERSION
    refuse = None
    try:
        version = read_format(storage, txn)
        report.format = version
    except CorruptionError as exc:
        report.store_problems.append(Problem("meta", str(exc), FORMAT_KEY.hex()))
        refuse = "the store format record is damaged"
    result = StoreScan(report, [], version, refuse=refuse)
    dbs = {"checkpoints": storage.checkpoints, "pages": storage.pages, "journal": storage.journal}
    # Every per-volume key, grouped by volume id: keys only, nothing decoded.
    owned: dict[str, dict[bytes, list[bytes]]] = {}
    for name, db in dbs.items():
        groups: dict[bytes, list[bytes]] = {}
        for key in _keys(txn, db) if db is not None else []:
            if len(key) != VOLUME_DBS[name]:
                if only is None:
                    _store_drop(result, name, key, f"key of {len(key)} bytes, not {VOLUME_DBS[name]}")
                continue
            groups.setdefault(key[:8], []).append(key)
        owned[name] = groups
    volume_keys = []
    for key in _keys(txn, storage.volumes):
        if len(key) != VOLUME_KEY_SIZE:
            if only is None:
                _store_drop(result, "volumes", key, f"key of {len(key)} bytes, not {VOLUME_KEY_SIZE}")
            continue
        volume_keys.append(key)
    names: dict[str, int] = {}
    for key in volume_keys:
        vol_id = int.from_bytes(key, "big")
        scan = VolumeScan(VolumeReport(id=vol_id, name=None), key)
        scan.keys = {name: owned[name].get(key, []) for name in dbs}
        read_record(scan, txn.get(key, db=storage.volumes), version)
        if scan.record is not None:
            name = scan.record["name"]
            if name in names and only is None:
                result.report.store_problems.append(Problem(
                    "volumes", f"two volume records name {name!r} (ids {names[name]} and {vol_id})", key.hex()))
            names.setdefault(name, vol_id)
        result.volumes.append(scan)
    if only is not None:
        result.volumes = [s for s in result.volumes if s.report.name == only]
        if not result.volumes:
            raise VolumeNotFoundError(f"store has no volume {only!r}")
    for scan in result.volumes:
        if scan.record is not None:
            scan_volume(scan, storage, txn, version)
        else:
            scan_unreadable(scan, storage, txn, version)
        report.volumes.append(scan.report)
    if only is None:
        present = set(volume_keys)
        for name, groups in owned.items():
            for prefix, keys in groups.items():
                if prefix in present:
                    continue
                report.store_problems.append(Problem(
                    name, f"{len(keys)} key{'s' * (len(keys) != 1)} of volume id {int.from_bytes(prefix, 'big')}, "
                    "which has no volume record", prefix.hex(), repair="delete them"))
                result.drop += [(name, k) for k in keys]
        _scan_meta(result, storage, txn, version, volume_keys, owned)
    return result


def _store_drop(result: StoreScan, db: str, key: bytes, what: str) -> None:
    result.report.store_problems.append(Problem(db, what, key.hex(), repair="delete it"))
    result.drop.append((db, key))


def _scan_meta(result: StoreScan, storage: Storage, txn: Any, version: int, volume_keys: list[bytes],
               owned: dict[str, dict[bytes, list[bytes]]]) -> None:
    ids = [int.from_bytes(k, "big") for k in volume_keys]
    for groups in owned.values():
        ids += [int.from_bytes(p, "big") for p in groups]
    top = max(ids, default=0)
    for key in _keys(txn, storage.meta):
        if key == FORMAT_KEY:
            continue
        if key != NEXT_VOLUME_KEY:
            _store_drop(result, "meta", key, "unknown key")
    value = txn.get(NEXT_VOLUME_KEY, db=storage.meta)
    problem = None
    if value is None:
        problem = "the volume counter is missing"
    else:
        try:
            next_id = codec.unpack_json(value, NEXT_VOLUME_KEY, version, "volume counter").get("id")
            if not isinstance(next_id, int) or isinstance(next_id, bool) or not top < next_id < 1 << 63:
                problem = f"volume counter {next_id!r} is not above every volume id (and below 2**63)"
        except CorruptionError as exc:
            problem = str(exc)
    if problem is not None:
        result.counter = top + 1
        result.report.store_problems.append(
            Problem("meta", problem, NEXT_VOLUME_KEY.hex(), repair=f"write the counter {top + 1}"))


