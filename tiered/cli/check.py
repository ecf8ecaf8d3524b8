"""``tiered check``: verify every stored value and key of a store, report
what is damaged per volume and checkpoint, and with ``--repair`` contain
the damage (:mod:`tiered.fsck`)."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_DAMAGED, EXIT_OK, UsageError, add_json_argument, add_store_argument, write_json


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Exit status 0: nothing is damaged (after --repair: the repaired store checks clean); "
        f"{EXIT_DAMAGED}: damage was found (after --repair: some remains). Without --repair the store "
        "is opened read-only and never changed. --repair opens it as its single writer and changes it "
        "in one transaction: damaged values are deleted, the periods they held are marked lost (answers "
        "about them become the whole volume, flagged exact=False) and each repaired volume gets a new "
        "generation id."
    )
    add_store_argument(parser)
    parser.add_argument("volume", metavar="VOLUME", nargs="?", help="check only this volume")
    parser.add_argument("--repair", action="store_true", help="contain the damage (opens the store for writing)")
    parser.add_argument(
        "--remove-unreadable", action="store_true",
        help="with --repair: also remove volumes whose record is unreadable, with all their keys",
    )
    add_json_argument(parser)


def cmd_check(args: argparse.Namespace) -> int:
    from ..fsck import check

    if args.remove_unreadable and not args.repair:
        raise UsageError("--remove-unreadable needs --repair")
    report = check(args.store, args.volume, repair=args.repair, remove_unreadable=args.remove_unreadable)
    if args.json:
        write_json(report.to_dict())
    else:
        sys.stdout.write(report.render())
    final = report.after if report.after is not None else report
    return EXIT_OK if final.clean else EXIT_DAMAGED
