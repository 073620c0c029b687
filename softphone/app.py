"""Composition root and command line of the softphone.

- ``softphone [--role caller|agent|supervisor] ...`` opens the window of one
  role (Qt on a qasync loop).
- ``softphone --headless ...`` joins the room with no window, for scripted
  scenarios; it runs until interrupted.
- ``softphone demo`` starts the local LiveKit server once and opens a caller,
  Agent A and Agent B (``--supervisor``: and a supervisor) wired to one call.
- ``softphone server`` starts a local LiveKit server and prints its URL and
  ready-made tokens for a caller and an agent.

Only ``softphone.ui`` imports Qt, and only when a window mode runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from softphone import __version__
from softphone.config import FIELDS, Secret, Settings, load_settings
from softphone.errors import ConfigError, SoftphoneError
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.logs import PrivateRotatingLog as PrivateRotatingLog  # was defined here
from softphone.logs import setup_logging
from softphone.media.recording import repair_directory
from softphone.protocol import TransferService
from softphone.server.token_minter import TokenMinter
from softphone.store.history import HistoryStore

if TYPE_CHECKING:
    from softphone.client.context import AppContext

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
    parser.add_argument(
        "--call-agent", dest="call_agent", help=FIELDS["call_agent"].metadata["help"]
    )
    parser.add_argument("--url", dest="livekit_url", help=FIELDS["livekit_url"].metadata["help"])
    parser.add_argument(
        "--backend", dest="backend_url", help=FIELDS["backend_url"].metadata["help"]
    )
    parser.add_argument("--log-level", dest="log_level", help=FIELDS["log_level"].metadata["help"])
    parser.add_argument("--theme", choices=["light", "dark"], help=FIELDS["theme"].metadata["help"])
    parser.add_argument(
        "--headless",
        action="store_true",
        help="no window: join --room as --role and run until interrupted (scripted scenarios)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="start a local LiveKit server and open a caller, Agent A and Agent B on one call",
    )
    demo.add_argument("--supervisor", action="store_true", help="also open a supervisor window")
    server = sub.add_parser(
        "server", help="start a local LiveKit server and print its URL and ready-made tokens"
    )
    server.add_argument("--room", dest="room", default=None, help="room the tokens are for")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings with the command line's values on top of every other source."""
    overrides: dict[str, Any] = {
        k: getattr(args, k, None)
        for k in (
            "profile",
            "role",
            "identity",
            "room",
            "call_agent",
            "livekit_url",
            "backend_url",
            "log_level",
            "theme",
        )
    }
    return load_settings(overrides)


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


@dataclasses.dataclass
class LiveKitAccess:
    """Where clients connect and, in embedded mode, the key and secret to mint tokens."""

    url: str
    api_key: str = ""
    api_secret: Secret | None = None


@asynccontextmanager
async def livekit_access(settings: Settings) -> AsyncIterator[LiveKitAccess]:
    """The configured LiveKit server, or a local one started for the app's lifetime."""
    if settings.livekit_url:
        yield LiveKitAccess(
            settings.livekit_url, settings.livekit_api_key, settings.livekit_api_secret
        )
        return
    if settings.backend_url:  # the backend names its LiveKit server (service_info)
        yield LiveKitAccess("")
        return
    settings.ensure_dirs()
    binary = await asyncio.to_thread(ensure_server_binary, settings.livekit_server_bin)
    server = LocalLiveKitServer(binary=binary, log_path=settings.logs_dir / "livekit-server.log")
    async with server:
        yield LiveKitAccess(server.url, server.api_key, server.api_secret)


async def open_context(
    settings: Settings,
    access: LiveKitAccess,
    stack: AsyncExitStack,
    *,
    transfer: Any | None = None,
) -> AppContext:
    """Build the services of one window on ``stack``: history, tokens, server API, transfers.

    Args:
        settings: The window's profile.
        access: The LiveKit server.
        stack: Closes everything opened here, in reverse order.
        transfer: A transfer service to share (the demo's windows share one).
    """
    from softphone.client.context import AppContext

    settings.ensure_dirs()
    # Recordings cut by a crash get valid headers again; in a worker thread,
    # so a large recordings folder never delays the window.
    repair = asyncio.ensure_future(asyncio.to_thread(repair_directory, settings.recordings_path))
    stack.push_async_callback(_report_repair, repair)
    history = await stack.enter_async_context(HistoryStore(settings.history_path))
    context = AppContext(settings=settings, url=access.url, history=history, transfer=transfer)
    if context.transfer is None:
        context.transfer = await open_transfer_service(settings, access, history, stack)
    if not context.url:
        context.url = (await context.service_info()).livekit_url
    return context


async def _report_repair(repair: asyncio.Future[list[Any]]) -> None:
    try:
        fixed = await repair
    except OSError:
        log.warning("could not check the recordings folder for interrupted files")
        return
    if fixed:
        log.info("repaired recordings cut short by a crash", extra={"files": len(fixed)})


async def open_transfer_service(
    settings: Settings, access: LiveKitAccess, history: HistoryStore, stack: AsyncExitStack
) -> TransferService | None:
    """The remote service with ``--backend``, else the embedded one (given the LiveKit secret).

    Embedded, this process is the service: it holds the secret, keeps the
    call registry and mints tokens for the parties of its calls only.
    """
    if settings.backend_url:
        from softphone.client.context import remote_transfer_service

        return await stack.enter_async_context(remote_transfer_service(settings))
    if access.api_secret is None or not access.api_key:
        return None
    from softphone.server.command_signer import CommandSigner
    from softphone.server.room_admin import RoomAdmin
    from softphone.server.token_minter import TokenMinter
    from softphone.server.transfer_orchestrator import TransferOrchestrator
    from softphone.speech.factory import make_offline_summarizer, make_summarizer

    rooms = await stack.enter_async_context(
        RoomAdmin(url=access.url, api_key=access.api_key, api_secret=access.api_secret)
    )
    return await stack.enter_async_context(
        TransferOrchestrator(
            url=access.url,
            rooms=rooms,
            minter=TokenMinter(
                api_key=access.api_key,
                api_secret=access.api_secret,
                default_ttl_s=settings.token_ttl_s,
            ),
            summarizer=make_summarizer(settings),
            fallback_summarizer=make_offline_summarizer(settings),
            lobby_room=settings.lobby_room,
            offer_timeout_s=settings.offer_timeout_s,
            history=history,
            signer=CommandSigner(settings.command_signing_key),
            # Every caller here is an app: A's app plays the hold tone itself.
            hold_audio=False,
        )
    )


def demo_settings(base: Settings) -> dict[str, Settings]:
    """The profiles of the demo's windows, derived from the base profile.

    Each window has its own profile (``<base>-caller``, ``-agent-a``, ...), so
    histories and device choices stay apart; the call room comes from the
    service when the demo creates its call.
    """
    out = {}
    for key, role, identity in (
        ("caller", "caller", "caller"),
        ("agent_a", "agent", "agent-a"),
        ("agent_b", "agent", "agent-b"),
        ("supervisor", "supervisor", "supervisor"),
    ):
        out[key] = load_settings(
            {
                "profile": f"{base.profile}-{key.replace('_', '-')}",
                "home": base.home,
                "role": role,
                "identity": identity,
                "livekit_url": base.livekit_url or None,
                "backend_url": base.backend_url or None,
                "theme": base.theme,
                "log_level": base.log_level,
            }
        )
    return out


async def build_windows(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    demo: bool = False,
    supervisor: bool = False,
    auto_join: bool = True,
) -> list[Any]:
    """Build the window(s) of one instance, opening their services on ``stack``.

    In the demo the caller places a call to Agent A through the service (its
    registry gives the room), A joins it, and both agents go online in the
    lobby, so a warm transfer is one click away.
    """
    from softphone.ui.views.agent_window import AgentWindow
    from softphone.ui.views.caller_window import CallerWindow
    from softphone.ui.views.supervisor_window import SupervisorWindow

    access = await stack.enter_async_context(livekit_access(settings))
    if not demo:
        context = await open_context(settings, access, stack)
        if settings.role == "supervisor":
            return [SupervisorWindow(context=context)]
        window: Any
        if settings.role == "caller":
            window = CallerWindow(context=context)
        else:
            window = AgentWindow(context=context)
            window.go_online()
        if settings.room and auto_join:  # --room: the room to join at start
            window.call_panel.join_btn.click()
        return [window]
    profiles = demo_settings(settings)
    first = await open_context(profiles["agent_a"], access, stack)
    contexts = {"agent_a": first}
    for key in ("caller", "agent_b", "supervisor"):
        if key != "supervisor" or supervisor:
            contexts[key] = await open_context(
                profiles[key], access, stack, transfer=first.transfer
            )
    caller = CallerWindow(context=contexts["caller"])
    a = AgentWindow(context=contexts["agent_a"], title="Agent A")
    b = AgentWindow(context=contexts["agent_b"], title="Agent B")
    windows: list[Any] = [caller, a, b]
    if supervisor:
        windows.append(SupervisorWindow(context=contexts["supervisor"]))
    _place(windows)
    a.go_online()
    b.go_online()
    if auto_join:
        service = contexts["caller"].service()
        ticket = await service.create_call(
            caller=profiles["caller"].effective_identity,
            agent=profiles["agent_a"].effective_identity,
            requester=profiles["caller"].effective_identity,
        )
        for w in (caller, a):
            w.call_panel.room_edit.setText(ticket.call.room)
            w.call_panel.join_btn.click()
    return windows


def run_windows(settings: Settings, *, demo: bool = False, supervisor: bool = False) -> None:
    """Open the window(s) and run until they are all closed; then stop everything."""
    from softphone.ui.shell import run_qt, run_until_closed

    async def build(stack: AsyncExitStack) -> list[Any]:
        return await build_windows(settings, stack, demo=demo, supervisor=supervisor)

    started = time.monotonic()

    def shown(at: float) -> None:
        log.info("windows ready", extra={"ms": round((at - started) * 1000)})
        print(f"softphone: window ready in {(at - started) * 1000:.0f} ms", file=sys.stderr)

    run_qt(lambda: run_until_closed(build, on_shown=shown), theme=settings.theme)


def _place(windows: Sequence[Any]) -> None:
    """Lay the demo's windows side by side on the screen."""
    x = 0
    for w in windows:
        w.move(x, 0)
        x += min(w.width(), 640) + 10


async def run_headless(settings: Settings) -> None:
    """Join ``settings.room`` (a caller with none places a call) with no window, until interrupted."""
    from softphone.client.call_controller import CallController

    if not settings.room and settings.role != "caller":
        raise ConfigError("--headless needs --room (a call this identity is a party of)")
    async with AsyncExitStack() as stack:
        access = await stack.enter_async_context(livekit_access(settings))
        context = await open_context(settings, access, stack)
        calls = CallController(context=context, role=settings.role)
        stack.push_async_callback(calls.aclose)
        room = settings.room
        if not room:  # a caller with no room places a call to --call-agent
            ticket = await context.service().create_call(
                caller=calls.identity, agent=settings.call_agent, requester=calls.identity
            )
            room = ticket.call.room
        leg = await calls.join(room, publish=settings.role != "supervisor")
        mic = calls.devices.mic
        print(
            f"joined {leg.room_name} as {calls.identity} "
            f"(microphone: {mic.device_name if mic and mic.device_name else 'none'})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        leg.session.on("disconnected", lambda _d: stop.set())
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
        elif args.command == "demo":
            run_windows(settings, demo=True, supervisor=args.supervisor)
        elif args.headless:
            asyncio.run(run_headless(settings))
        else:
            run_windows(settings)
    except SoftphoneError as exc:
        print(f"softphone: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
