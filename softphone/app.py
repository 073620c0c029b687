"""Composition root and command line of the softphone.

``softphone server`` starts a local LiveKit server and prints its URL and
ready-made tokens for a caller and an agent; the window modes are added by
the UI layer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from softphone import __version__
from softphone.config import FIELDS, Settings, load_settings
from softphone.errors import SoftphoneError
from softphone.services.local_server import LocalLiveKitServer
from softphone.services.server_binary import ensure_server_binary
from softphone.services.token_minter import TokenMinter

log = logging.getLogger("softphone")


def build_parser() -> argparse.ArgumentParser:
    """The ``softphone`` command line."""
    parser = argparse.ArgumentParser(
        prog="softphone",
        description="Desktop softphone for contact-center agents, with warm transfer, on LiveKit.",
    )
    parser.add_argument("--version", action="version", version=f"softphone {__version__}")
    parser.add_argument("--profile", help=FIELDS["profile"].metadata["help"])
    parser.add_argument(
        "--role", choices=["caller", "agent", "supervisor"], help=FIELDS["role"].metadata["help"]
    )
    parser.add_argument("--identity", help=FIELDS["identity"].metadata["help"])
    parser.add_argument("--room", help=FIELDS["room"].metadata["help"])
    parser.add_argument("--url", dest="livekit_url", help=FIELDS["livekit_url"].metadata["help"])
    parser.add_argument(
        "--backend", dest="backend_url", help=FIELDS["backend_url"].metadata["help"]
    )
    parser.add_argument("--log-level", dest="log_level", help=FIELDS["log_level"].metadata["help"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    server = sub.add_parser(
        "server", help="start a local LiveKit server and print its URL and ready-made tokens"
    )
    server.add_argument("--room", dest="room", default=None, help="room the tokens are for")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings with the command line's values on top of every other source."""
    overrides: dict[str, Any] = {
        k: getattr(args, k, None)
        for k in ("profile", "role", "identity", "room", "livekit_url", "backend_url", "log_level")
    }
    return load_settings(overrides)


def setup_logging(settings: Settings) -> None:
    """Log to stderr and to the profile's log file."""
    settings.ensure_dirs()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in (
        logging.StreamHandler(),
        logging.FileHandler(settings.logs_dir / "softphone.log"),
    ):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    # httpx logs every request at INFO; URLs are noise in the agent's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def run_server(settings: Settings, room: str) -> None:
    """Start a local LiveKit server, print tokens, and run until interrupted."""
    binary = await asyncio.to_thread(ensure_server_binary, settings.livekit_server_bin)
    server = LocalLiveKitServer(binary=binary, log_path=settings.logs_dir / "livekit-server.log")
    async with server:
        minter = TokenMinter(
            api_key=server.api_key, api_secret=server.api_secret, default_ttl_s=settings.token_ttl_s
        )
        caller = minter.mint(role="caller", identity="caller", room=room)
        agent = minter.mint(role="agent", identity="agent-a", room=room)
        print(f"LiveKit server ready at {server.url} (log: {settings.logs_dir})")
        print(f"room: {room}")
        print(f"caller token: {caller.token}")
        print(f"agent token:  {agent.token}")
        print("Press Ctrl-C to stop.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``softphone`` command."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        settings = settings_from_args(args)
        setup_logging(settings)
        if args.command == "server":
            asyncio.run(run_server(settings, settings.room or "demo-call"))
        else:
            parser.print_help()
    except SoftphoneError as exc:
        print(f"softphone: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
