"""``tiered qcow2 import`` and ``tiered qcow2 export``: move a backup chain
between QEMU's persistent dirty bitmaps in a qcow2 image and a volume.

    tiered qcow2 import IMAGE STORE VOLUME [--bitmaps A,B] [--order A,B] [--accept-inconsistent]
                        [--granularity G] [--strategy S] [--durability D] [--json]
    tiered qcow2 export STORE VOLUME IMAGE [--checkpoints A,B] [--replace] [--json]

``import`` reads the whole image before it opens the store (creating it if
missing), so a bad image leaves no trace; see docs/qcow2.md.
"""

from __future__ import annotations

import argparse
import sys

from .common import (
    EXIT_OK, UsageError, add_json_argument, add_store_argument, add_volume_argument, open_store,
    positive_size, warn, write_json,
)


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if any(not n for n in names):
        raise argparse.ArgumentTypeError(f"{text!r} holds an empty name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{text!r} names {twice[0]!r} twice")
    return names


def add_qcow2_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="qcow2_command", metavar="ACTION", required=True)

    imp = sub.add_parser(
        "import",
        help="make a volume whose checkpoints are the image's persistent bitmaps (opens the store for writing)",
        description="Create VOLUME in STORE with one checkpoint per persistent dirty bitmap of the qcow2 "
        "IMAGE, such that 'tiered changed STORE VOLUME B' answers bitmap B. All or nothing; the store "
        "is created if missing. The image is only read.",
    )
    imp.add_argument("image", metavar="IMAGE", help="the qcow2 image")
    add_store_argument(imp)
    add_volume_argument(imp)
    imp.add_argument("--bitmaps", type=_name_list, metavar="A,B,...",
                     help="import only these bitmaps (default: every usable one)")
    imp.add_argument("--order", type=_name_list, metavar="A,B,...",
                     help="the checkpoints' order, oldest first (default: by inclusion, else directory order)")
    imp.add_argument("--accept-inconsistent", action="store_true",
                     help="import bitmaps flagged in_use as 'everything changed' instead of refusing")
    imp.add_argument("--granularity", type=positive_size, metavar="G",
                     help="the volume's granularity (default: the finest of the bitmaps')")
    imp.add_argument("--strategy", default=None, choices=("one-bit", "multi-bit", "hybrid"),
                     help="the volume's strategy (default: the library's)")
    imp.add_argument("--durability", default="lazy", choices=("lazy", "sync"),
                     help="the volume's durability (default lazy)")
    add_json_argument(imp)
    imp.set_defaults(qcow2_run=cmd_qcow2_import)

    exp = sub.add_parser(
        "export",
        help="write a volume's checkpoints into a qcow2 image as persistent bitmaps",
        description="Write checkpoints of VOLUME into the qcow2 IMAGE as persistent dirty bitmaps "
        "of the same names (opens the store read-only).",
    )
    add_store_argument(exp)
    add_volume_argument(exp)
    exp.add_argument("image", metavar="IMAGE", help="the qcow2 image")
    exp.add_argument("--checkpoints", type=_name_list, metavar="A,B,...",
                     help="export only these checkpoints (default: all)")
    exp.add_argument("--replace", action="store_true", help="replace bitmaps of the same names in the image")
    add_json_argument(exp)
    exp.set_defaults(qcow2_run=cmd_qcow2_export)


def cmd_qcow2(args: argparse.Namespace) -> int:
    return args.qcow2_run(args)


def cmd_qcow2_import(args: argparse.Namespace) -> int:
    if args.bitmaps is not None and args.order is not None and set(args.bitmaps) != set(args.order):
        raise UsageError("--order must name exactly the bitmaps given to --bitmaps")
    import tiered

    from ..volume import check_name
    from ..qcow2.importer import apply_import, plan_import

    # The name and the whole image are checked before the store is opened
    # (or created): a refused import leaves no store behind.
    check_name(args.volume, "volume")
    plan = plan_import(
        args.image, bitmaps=args.bitmaps, order=args.order,
        accept_inconsistent=args.accept_inconsistent, granularity=args.granularity,
    )
    with tiered.open(args.store) as store:
        report = apply_import(store, args.volume, plan, strategy=args.strategy, durability=args.durability)
    if args.json:
        write_json(report.to_dict())
    else:
        for message in report.warnings:
            warn(message)
        sys.stdout.write(
            f"imported {len(report.checkpoints)} bitmap{'s' * (len(report.checkpoints) != 1)} of "
            f"{report.image} as volume {report.volume!r} (size {report.size}, granularity "
            f"{report.granularity}), oldest first:\n"
        )
        for name, exact in zip(report.checkpoints, report.exact):
            sys.stdout.write(f"  {name}  {'exact' if exact else 'superset (exact=false)'}\n")
    return EXIT_OK


def cmd_qcow2_export(args: argparse.Namespace) -> int:
    from ..qcow2.exporter import export_bitmaps

    with open_store(args.store) as store:
        vol = store.volume(args.volume)
        report = export_bitmaps(vol, args.image, checkpoints=args.checkpoints, replace=args.replace)
    if args.json:
        write_json(report)
    else:
        exported = report["exported"]
        sys.stdout.write(
            f"exported {len(exported)} checkpoint{'s' * (len(exported) != 1)} of volume {args.volume!r} "
            f"to {report['image']}: {', '.join(exported) or 'none'}\n"
        )
    return EXIT_OK
