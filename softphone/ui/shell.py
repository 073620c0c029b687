"""Start Qt on a qasync loop, show windows, and shut everything down when they close."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import qasync
import shiboken6
from PySide6.QtCore import QSocketNotifier
from PySide6.QtWidgets import QApplication

from softphone.config import Theme
from softphone.media.session import settle_abandoned
from softphone.ui.async_slot import cancel_pending
from softphone.ui.theme import apply_theme
from softphone.ui.views.role_window import RoleWindow

log = logging.getLogger(__name__)


class QtLoop(qasync.QEventLoop):  # type: ignore[misc]
    """qasync's event loop, with callbacks queued here and woken through a self-pipe.

    qasync runs every ``call_soon`` through a Qt timer of its own (start,
    fire, kill: the biggest share of the app's CPU in a call, where futures
    resolve by the hundred per second), and wakes the loop from other threads
    by emitting a Qt signal there. With PySide6 6.12 every such emit from a
    non-Qt thread drops one reference to ``True`` until the interpreter aborts
    ("bool_dealloc"), and the LiveKit SDK calls ``call_soon_threadsafe`` for
    every media event. Here both go into one ready queue: other threads only
    append to it and write a byte to a pipe; a ``QSocketNotifier`` on the main
    thread runs what is queued. No Qt call happens off the main thread. Timed
    callbacks (``call_later``) stay Qt timers.
    """

    def __init__(self, app: QApplication) -> None:
        super().__init__(app)
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._woken = False  # a wake-up byte is in the pipe for the ready queue
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._notifier = QSocketNotifier(self._rfd, QSocketNotifier.Type.Read)
        self._notifier.activated.connect(self._on_wakeup)
        # LiveKit's FFI threads keep calling in after close; the lock keeps them
        # from writing to a closed descriptor number that the OS may have
        # handed to another file or socket meanwhile.
        self._pipe_lock = threading.Lock()
        self._pipe_open = True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full pipe: a wake-up is pending
            os.write(self._wfd, b"\0")

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        if not self._woken:
            self._woken = True
            self._wake()
        return handle

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> None:
        with self._pipe_lock:
            if not self._pipe_open:
                return
            self._ready.append(asyncio.Handle(callback, args, self, context))  # deque: atomic
            self._wake()

    def run_forever(self) -> Any:
        self._wake()  # run what was queued while the loop was not running
        return super().run_forever()

    def _on_wakeup(self, *_: Any) -> None:
        self._woken = False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._rfd, 4096):
                pass
        if asyncio.events._get_running_loop() is not self:
            return  # Qt is processing events outside run_forever: keep them for it
        # Only what is queued now: callbacks queued by these run on the next
        # wake-up, after Qt has had its turn (input, painting, timers).
        debug = self.get_debug()
        for _i in range(len(self._ready)):
            handle = self._ready.popleft()
            if handle.cancelled():
                continue
            if not debug:
                handle._run()
                continue
            # Debug mode (PYTHONASYNCIODEBUG=1), as asyncio's own loop and
            # qasync's timers do: name every callback that held the loop.
            started = time.monotonic()
            handle._run()
            took = time.monotonic() - started
            if took >= self.slow_callback_duration:
                log.warning("Executing %r took %.3f seconds", handle, took)
        if self._ready and not self._woken:
            self._woken = True
            self._wake()

    def close(self) -> None:
        """Close the loop and destroy its Qt objects now, on this (the main) thread.

        qasync's timer object keeps Qt timers registered for callbacks that
        never ran (a cancelled ``sleep``). Left to Python, the closed loop is
        freed by whichever thread runs the garbage collector next, often a
        LiveKit or executor thread; Qt cannot unregister timers from another
        thread, so the next one to fire is delivered to freed memory (the
        segfault in ``QMetaObject::cast`` the UI tests hit now and then).
        """
        self._notifier.setEnabled(False)
        super().close()
        with self._pipe_lock:
            self._pipe_open = False
            self._ready.clear()
            for fd in (self._rfd, self._wfd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        for obj in (self._timer, self._notifier):
            if shiboken6.isValid(obj):
                shiboken6.delete(obj)


def freeze_heap() -> None:
    """Leave everything built so far (it lives as long as the windows) out of full GC passes.

    The cyclic collector's full passes over the app's objects stalled the
    event loop for 10-30 ms now and then (measured during a transfer).
    """
    gc.freeze()


WindowFactory = Callable[[contextlib.AsyncExitStack], Awaitable[Sequence[RoleWindow]]]


def application(theme: Theme = "light") -> QApplication:
    """The process's QApplication, created (and themed) on first use."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        app = QApplication(sys.argv[:1])
        app.setApplicationName("softphone")
        app.setQuitOnLastWindowClosed(False)  # we quit after closing services
    apply_theme(app, theme)
    return app


async def close_window_resources(window: RoleWindow) -> None:
    """Await ``aclose()`` of everything the window owns."""
    for obj in reversed(window.closables):
        closer: Any = getattr(obj, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.exception("closing a window resource failed")


async def run_until_closed(
    factory: WindowFactory, *, on_shown: Callable[[float], None] | None = None
) -> None:
    """Build windows with ``factory``, show them, and return once all are closed.

    Everything entered on the exit stack (servers, stores, services) is closed
    after the windows' own resources, so nothing outlives the app.

    Args:
        factory: Builds the windows; may enter resources on the stack.
        on_shown: Called with ``time.monotonic()`` once the windows are shown.
    """
    async with contextlib.AsyncExitStack() as stack:
        windows = list(await factory(stack))
        all_closed = asyncio.Event()
        open_windows = set(windows)

        def closed(w: RoleWindow) -> None:
            open_windows.discard(w)
            if not open_windows:
                all_closed.set()

        for w in windows:
            w.closed.connect(lambda w=w: closed(w))
            w.show()
        # SIGINT/SIGTERM close the windows, so the app shuts down the normal way.
        # (qasync has no add_signal_handler; Python runs the handler on the
        # main thread at the next bytecode, which Qt's timers provide.)
        previous = {
            sig: signal.signal(sig, lambda *_: [w.close() for w in list(open_windows)])
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        stack.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])
        freeze_heap()
        if on_shown is not None:
            on_shown(time.monotonic())
        try:
            await all_closed.wait()
        finally:
            for w in windows:
                await close_window_resources(w)
            await cancel_pending()


def run_qt(main: Callable[[], Awaitable[None]], *, theme: Theme = "light") -> None:
    """Run ``main()`` to completion on a qasync loop driving the Qt application."""
    app = application(theme)
    loop = QtLoop(app)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main())
    finally:
        with contextlib.suppress(Exception):
            # A room join left running when the loop stops makes the SDK panic.
            loop.run_until_complete(settle_abandoned())
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
