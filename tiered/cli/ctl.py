"""``tiered ctl``: ask a running ``tiered serve --control PATH``.

    tiered ctl SOCKET checkpoint NAME | remove NAME | list | stats | flush [--json]

The server holds the store open for writing, so checkpoints of a served
volume are made through it.
"""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, UsageError, add_json_argument, iso_utc, write_json, write_table

OPS = ("checkpoint", "remove", "list", "stats", "flush")  # the ops of tiered.nbd.control

_NAMED = ("checkpoint", "remove")


def add_ctl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("socket", metavar="SOCKET", help="the control socket of `tiered serve --control`")
    parser.add_argument("op", metavar="OP", choices=OPS, help=", ".join(OPS))
    parser.add_argument("name", metavar="NAME", nargs="?", help="checkpoint name (checkpoint, remove)")
    add_json_argument(parser)


def cmd_ctl(args: argparse.Namespace) -> int:
    if (args.op in _NAMED) != (args.name is not None):
        raise UsageError(f"{args.op} {'needs' if args.op in _NAMED else 'takes no'} a checkpoint NAME")
    from ..nbd.control import ControlClient

    client = ControlClient(args.socket)
    calls = {
        "checkpoint": lambda: {"checkpoint": client.checkpoint(args.name)},
        "remove": lambda: client.remove(args.name),
        "list": lambda: {"checkpoints": client.list()},
        "stats": lambda: {"stats": client.stats()},
        "flush": client.flush,
    }
    reply = calls[args.op]() or {}
    if args.json:
        write_json(reply)
    elif args.op == "list":
        write_table(("NAME", "CREATED"), ((c["name"], iso_utc(c["created"])) for c in reply["checkpoints"]))
    elif args.op == "stats":
        stats = dict(reply["stats"])
        server = stats.pop("server")
        rows = [*stats.items(), *((f"server.{key}", value) for key, value in server.items())]
        for key, value in rows:
            text = str(value).lower() if isinstance(value, bool) else value
            sys.stdout.write(f"{key + ':':<26}{text}\n")
    return EXIT_OK
