"""``tiered serve``: export a volume's image over NBD, with its dirty bitmaps.

    tiered serve STORE VOLUME --image PATH [--socket PATH | --bind ADDR --port N]
                 [--control PATH] [--readonly] [--create SIZE [--strategy S] [--durability D]]

Prints the export's URI on stdout once it listens; SIGTERM or SIGINT finish
the requests already read, close the volume cleanly and exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_OK, UsageError, add_store_argument, add_volume_argument, positive_size


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    add_volume_argument(parser)
    parser.add_argument("--image", required=True, metavar="PATH", help="the image file holding the volume's data")
    parser.add_argument("--socket", metavar="PATH", help="listen on this Unix socket")
    parser.add_argument("--bind", metavar="ADDR", help="listen on TCP at this address (with --port)")
    parser.add_argument("--port", type=int, metavar="N", help="TCP port (0: any free port)")
    parser.add_argument("--control", metavar="PATH",
                        help="serve a control socket here, for `tiered ctl` (checkpoints, stats); "
                        "default with --socket: its path plus .ctl")
    parser.add_argument("--readonly", action="store_true", help="export read-only (opens the store read-only)")
    parser.add_argument(
        "--create",
        type=positive_size,
        metavar="SIZE",
        help="create the volume and a sparse image of SIZE bytes where missing",
    )
    parser.add_argument("--strategy", default="hybrid", choices=("one-bit", "multi-bit", "hybrid"),
                        help="strategy of a volume made by --create (default hybrid)")
    parser.add_argument("--durability", default="sync", choices=("lazy", "sync"),
                        help="durability of a volume made by --create (default sync)")


def _check(args: argparse.Namespace) -> None:
    if (args.socket is None) == (args.port is None):
        raise UsageError("give either --socket PATH or --port N (with --bind ADDR)")
    if args.bind is not None and args.port is None:
        raise UsageError("--bind needs --port")
    if args.readonly and args.create is not None:
        raise UsageError("--create cannot make anything with --readonly")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a TCP port")


def cmd_serve(args: argparse.Namespace) -> int:
    _check(args)
    import asyncio
    import signal

    import tiered

    from ..errors import VolumeNotFoundError
    from ..nbd import Server

    store = tiered.open(args.store, readonly=args.readonly)
    try:
        try:
            vol = store.volume(args.volume)
        except VolumeNotFoundError:
            if args.create is None:
                raise
            vol = store.create_volume(
                args.volume, size=args.create, strategy=args.strategy, durability=args.durability
            )
        if args.create is not None and not os.path.exists(args.image):
            with open(args.image, "xb") as f:
                f.truncate(vol.size)

        async def main() -> None:
            server = Server(vol, args.image, readonly=args.readonly)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            try:
                if args.socket is not None:
                    uri = await server.listen_unix(args.socket)
                else:
                    uri = await server.listen_tcp(args.bind or "localhost", args.port)
                control = args.control
                if control is None and args.socket is not None:
                    control = args.socket + ".ctl"
                if control is not None:
                    await server.listen_control(control)
                sys.stdout.write(uri + "\n")
                sys.stdout.flush()
                await stop.wait()
            finally:
                await server.close()

        asyncio.run(main())
    finally:
        store.close()  # closes the volume cleanly: its marks are durable
    return EXIT_OK
