"""The subcommand registry and the entry point.

Each subcommand is an ``add_<name>_arguments`` function that declares its
options and a ``cmd_<name>`` function that runs it and returns an exit code;
COMMANDS lists them.  To add one, write those two functions in the module of
its group and append a Command to COMMANDS: main() needs no change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, NoReturn

from .common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, UsageError
from .check import add_check_arguments, cmd_check
from .compare import add_compare_arguments, cmd_compare
from .convert import add_convert_arguments, cmd_convert
from .inspect import (
    add_changed_arguments, add_volume_report_arguments, add_volumes_arguments, cmd_changed,
    cmd_checkpoints, cmd_stats, cmd_volumes,
)
from .ctl import add_ctl_arguments, cmd_ctl
from .qcow2 import add_qcow2_arguments, cmd_qcow2
from .serve import add_serve_arguments, cmd_serve
from .transfer import (
    add_backup_arguments, add_compact_arguments, add_dump_arguments, add_load_arguments, cmd_backup,
    cmd_compact, cmd_dump, cmd_load,
)

@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name, its one-line help and its two functions."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# The subcommand registry, in the order `tiered --help` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("volumes", "list the volumes of a store", add_volumes_arguments, cmd_volumes),
    Command(
        "checkpoints",
        "list the checkpoints of a volume, oldest first",
        add_volume_report_arguments,
        cmd_checkpoints,
    ),
    Command("changed", "map the ranges written since a checkpoint", add_changed_arguments, cmd_changed),
    Command("stats", "show the costs and counters of a volume", add_volume_report_arguments, cmd_stats),
    Command(
        "convert",
        "switch a volume to another strategy, keeping every checkpoint (opens the store for writing)",
        add_convert_arguments,
        cmd_convert,
    ),
    Command("dump", "write one volume's tracking state to a file or stdout", add_dump_arguments, cmd_dump),
    Command(
        "load",
        "add a volume from a dump, all or nothing (opens the store for writing)",
        add_load_arguments,
        cmd_load,
    ),
    Command("backup", "copy a whole store, consistent and compacted, while a writer works", add_backup_arguments, cmd_backup),
    Command(
        "compact",
        "shrink a store's data file to the space in use (needs the store to itself)",
        add_compact_arguments,
        cmd_compact,
    ),
    Command(
        "check",
        "verify every stored value of a store and report what is damaged; --repair contains it",
        add_check_arguments,
        cmd_check,
    ),
    Command(
        "compare",
        "replay a workload or trace through each strategy, measure the costs, and recommend one",
        add_compare_arguments,
        cmd_compare,
    ),
    Command(
        "serve",
        "export a volume's image over NBD with its dirty bitmaps (opens the store for writing)",
        add_serve_arguments,
        cmd_serve,
    ),
    Command(
        "ctl",
        "make or remove a checkpoint, or show stats, through a running server's control socket",
        add_ctl_arguments,
        cmd_ctl,
    ),
    Command(
        "qcow2",
        "import QEMU's persistent dirty bitmaps of a qcow2 image as checkpoints, or export checkpoints as bitmaps",
        add_qcow2_arguments,
        cmd_qcow2,
    ),
)


# -- entry point ---------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description=(
            "Change-block tracking: inspect a tiered store (read-only), check and repair it, "
            "convert a volume to another strategy, or compare the strategies on a workload."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command, turning expected failures into one-line errors."""
    # Imported here, not at module level, to keep this module's import free
    # of the package's modules: several of them pull in the engine.
    from ..errors import TieredError

    try:
        code = args.run(args)
        # Flush inside the try: a short output sits in the buffer, and a
        # closed pipe would otherwise surface at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly.  Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except UsageError as exc:
        # Arguments that cannot work together, found before any work: a
        # usage error like argparse's own.
        sys.stderr.write(f"{PROG}: error: {exc} (see '{PROG} {args.command} --help')\n")
        return EXIT_USAGE
    except (TieredError, OSError, ValueError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # --help, --version and usage errors: return their code, so that
        # main() always returns rather than exiting under a caller.
        code = exc.code
        return code if isinstance(code, int) else EXIT_OK if code is None else EXIT_USAGE
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
