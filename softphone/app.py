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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, get_args

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
    import numpy as np

    from softphone.client.context import AppContext
    from softphone.media.devices import Microphone
    from softphone.media.scripted_voice import Party, ScriptedCall
    from softphone.ui.views.agent_window import AgentWindow
    from softphone.ui.views.caller_window import CallerWindow

ScriptMode = Literal["auto", "caller", "both", "off"]
# How long the scripted call waits for the call to be up and A's transcriber to
# be ready (loading the model takes seconds on a busy machine).
SCRIPT_READY_S = 90.0
MIC_DRAIN_S = 1.2  # a closed microphone's backlog (at most 1 s) reaches its source meanwhile

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
    demo.add_argument(
        "--scripted",
        choices=list(get_args(ScriptMode)),
        default="auto",
        help="play a scripted support call into the microphones: auto (each party without"
        " a microphone), caller (the caller; you are Agent A), both, off (default: auto)",
    )
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
                "livekit_api_key": base.livekit_api_key or None,
                "livekit_api_secret": base.livekit_api_secret,
                "backend_url": base.backend_url or None,
                "theme": base.theme,
                "log_level": base.log_level,
                # A's live transcript is what the summary in B's offer is made of.
                "live_transcript": base.live_transcript,
                "lobby_room": base.lobby_room,
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
    scripted: ScriptMode = "off",
) -> list[Any]:
    """Build the window(s) of one instance, opening their services on ``stack``.

    In the demo the caller places a call to Agent A through the service (its
    registry gives the room), A joins it, and both agents go online in the
    lobby, so a warm transfer is one click away. With ``scripted`` (see
    :class:`DemoScript`) a scripted support call is then spoken into the
    caller's (and A's) microphone.
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
        if scripted != "off":
            script = DemoScript(caller=caller, agent=a, mode=scripted)
            caller.closables.append(script)  # closed first, before the windows' devices
            script.start()
    return windows


def run_windows(
    settings: Settings,
    *,
    demo: bool = False,
    supervisor: bool = False,
    scripted: ScriptMode = "auto",
) -> None:
    """Open the window(s) and run until they are all closed; then stop everything."""
    from softphone.ui.shell import run_qt, run_until_closed

    async def build(stack: AsyncExitStack) -> list[Any]:
        return await build_windows(
            settings, stack, demo=demo, supervisor=supervisor, scripted=scripted
        )

    started = time.monotonic()

    def shown(at: float) -> None:
        log.info("windows ready", extra={"ms": round((at - started) * 1000)})
        print(f"softphone: window ready in {(at - started) * 1000:.0f} ms", file=sys.stderr)

    run_qt(lambda: run_until_closed(build, on_shown=shown), theme=settings.theme)


class DemoScript:
    """The demo's scripted support call, spoken into the caller's (and Agent A's) microphone.

    Once the call is up (both joined, A hears the caller, A's live transcript
    ready), :data:`~softphone.media.scripted_voice.DEMO_CALL` is rendered
    (espeak-ng, cached) and played: each scripted party's turns go into its
    window's microphone source, in step, so A's live transcript fills and the
    summary in B's offer is made of a real call. Who is scripted:

    - ``auto``: each of the caller and A that has no microphone;
    - ``caller``: the caller (you are Agent A and answer in its pauses);
    - ``both``: the caller and A.

    A party scripted although it has a microphone stops capturing from it.

    Args:
        caller: The caller's window.
        agent: Agent A's window.
        mode: Who is scripted.
    """

    def __init__(self, *, caller: CallerWindow, agent: AgentWindow, mode: ScriptMode) -> None:
        self.caller = caller
        self.agent = agent
        self.mode = mode
        self.call: ScriptedCall | None = None
        self.parties: tuple[str, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Wait for the call in the background, then play the script."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-script")
            self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("the scripted demo call failed", exc_info=task.exception())

    def _ready(self) -> bool:
        caller_call, agent_call = self.caller.controller.call, self.agent.controller.call
        if caller_call is None or agent_call is None:
            return False
        if not (caller_call.session.connected and agent_call.session.connected):
            return False
        # A subscribed to the caller's track, so the first words reach its transcript.
        caller_id = self.caller.controller.identity
        return any(t.identity == caller_id for t in agent_call.session.remote_tracks())

    def _choose(self) -> dict[Party, Microphone]:
        """The scripted parties and their window's microphone."""
        chosen: dict[Party, Microphone] = {}
        parties: tuple[tuple[Party, CallerWindow | AgentWindow], ...] = (
            ("caller", self.caller),
            ("agent", self.agent),
        )
        for party, window in parties:
            mic = window.controller.devices.mic
            if mic is None:
                continue
            wanted = (
                self.mode == "both"
                or (self.mode == "caller" and party == "caller")
                or (self.mode == "auto" and mic.device_name is None)
            )
            if wanted:
                chosen[party] = mic
        return chosen

    def _agent_heard(self, pcm: np.ndarray) -> None:
        # A real microphone reaches A's own transcript through its taps, which
        # only captured audio passes; the scripted voice is given to it here.
        live = self.agent.agent.live
        call = self.agent.controller.call
        if live is None or call is None or call.session.muted:
            return
        leg = "consult" if "consult" in self.agent.controller.legs else "call"
        live.feed(self.agent.controller.identity, pcm, leg=leg)

    async def _run(self) -> None:
        from softphone.errors import MediaError
        from softphone.media.scripted_voice import ScriptedCall, render_script

        # Rendered (first run only: cached after) while the call comes up.
        rendering = asyncio.ensure_future(asyncio.to_thread(render_script))
        rendering.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen: no warning
        try:
            deadline = time.monotonic() + SCRIPT_READY_S
            if not await _until(self._ready, deadline):
                log.warning("the scripted demo call did not start: the call never came up")
                return
            chosen = self._choose()
            if not chosen:
                return
            if self.agent.context.settings.live_transcript:
                # Else the first turns would be said before A's transcript listens.
                await _until(lambda: self.agent.agent.live is not None, deadline)
            script = await rendering
        except MediaError as exc:
            self.caller.show_warning(f"No scripted call: {exc.message}")
            return
        finally:
            rendering.cancel()  # cancelled or failed while waiting: no result is awaited
        if any(mic.device_name is not None for mic in chosen.values()):
            for mic in chosen.values():
                mic.close_stream()  # the script is this party's microphone now
            # Its last captured blocks are still on their way into the source.
            await asyncio.sleep(MIC_DRAIN_S)
        self.parties = tuple(chosen)
        self.call = ScriptedCall(
            script,
            sources={p: m.source for p, m in chosen.items()},
            listeners={"agent": self._agent_heard} if "agent" in chosen else None,
        )
        minutes = f"{script.duration_s:.0f} s"
        self.caller.set_demo_note(
            f"Demo: a scripted caller speaks for you ({minutes})."
            if "caller" in chosen
            else "Demo: speak as the caller in the pauses."
        )
        self.agent.set_demo_note(
            f"Demo: a scripted agent answers the caller ({minutes}). Then transfer the call."
            if "agent" in chosen
            else "Demo: answer the scripted caller in its pauses, then transfer the call."
        )
        for party in chosen:
            window = self.caller if party == "caller" else self.agent
            # Instead of "no microphone found": what this window sends now.
            window.call_panel.input_state.setText("Scripted voice (demo)")
        self.call.start()
        await self.call.wait()

    async def aclose(self) -> None:
        """Stop the script (and the wait for the call)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.call is not None:
            await self.call.aclose()


async def _until(cond: Callable[[], bool], deadline: float) -> bool:
    """Poll ``cond`` until it holds (True) or monotonic time passes ``deadline`` (False)."""
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


Rect = tuple[int, int, int, int]  # x, y, width, height
# What a window manager adds around a window (title bar, borders): windows are
# moved by their frame's corner but sized by their content.
FRAME_TOP = 32
FRAME_SIDE = 2
GAP = 4


def demo_layout(area: Rect, min_widths: Sequence[int]) -> list[Rect]:
    """Where the demo's windows go on a screen: frames side by side, none off the screen.

    The caller's window (first) takes a narrow column, the two agents share
    the rest; a fourth window (the supervisor) shares the caller's column
    below it when the screen is tall enough, else lies over it.

    Args:
        area: The screen's available geometry.
        min_widths: Each window's minimum frame width (3, or 4 with a supervisor).

    Returns:
        One frame rectangle per window (frame included, see :data:`FRAME_TOP`).
    """
    x0, y0, width, height = area
    count = len(min_widths)
    columns = min(count, 3)
    if columns < 3:
        caller_w = (width - GAP * (columns - 1)) // columns
    else:
        caller_w = max(min_widths[0], min(480, width // 4))
    rest = (width - caller_w - GAP * (columns - 1)) // max(1, columns - 1)
    rects = [(x0, y0, caller_w, height)]
    x = x0 + caller_w + GAP
    for _ in range(columns - 1):
        rects.append((x, y0, rest, height))
        x += rest + GAP
    if count > 3:
        half = (height - GAP) // 2
        if half >= 560:  # both the caller and the supervisor fit in half a column
            rects[0] = (x0, y0, caller_w, half)
            rects.append((x0, y0 + half + GAP, caller_w, half))
        else:
            rects.append((x0 + 40, y0 + 40, min(760, width - 40), height - 40))
    return rects


def _place(windows: Sequence[Any], area: Rect | None = None) -> None:
    """Lay the demo's windows side by side on the screen (``area``: its available geometry)."""
    from PySide6.QtCore import Qt

    if area is None:
        from softphone.ui.shell import application

        screen = application().primaryScreen().availableGeometry()
        area = (screen.x(), screen.y(), screen.width(), screen.height())
    mins = [w.minimumSizeHint().width() + 2 * FRAME_SIDE for w in windows]
    for w, (x, y, width, height) in zip(windows, demo_layout(area, mins), strict=True):
        w.move(x, y)
        w.resize(width - 2 * FRAME_SIDE, height - FRAME_TOP - FRAME_SIDE)
        # The event log is a glance: most of a short window goes to the call.
        w.resizeDocks([w.log_dock], [max(90, height // 7)], Qt.Orientation.Vertical)


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
            run_windows(settings, demo=True, supervisor=args.supervisor, scripted=args.scripted)
        elif args.headless:
            asyncio.run(run_headless(settings))
        else:
            run_windows(settings)
    except SoftphoneError as exc:
        print(f"softphone: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
