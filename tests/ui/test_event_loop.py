"""The Qt event loop survives what LiveKit does to it: calls from other threads, late frees."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ui

# Runs in a child process: before the fix this segfaulted, which would take
# the whole test session down with it.
LATE_FREE = textwrap.dedent(
    """
    import asyncio, gc, sys, threading, time
    from PySide6.QtWidgets import QApplication
    from softphone.ui.shell import QtLoop

    app = QApplication(sys.argv[:1])
    loop = QtLoop(app)
    asyncio.set_event_loop(loop)

    async def scenario():
        # A sleep cancelled early leaves its Qt timer registered with qasync.
        sleeper = asyncio.ensure_future(asyncio.sleep(0.3))
        await asyncio.sleep(0.01)
        sleeper.cancel()

    loop.run_until_complete(scenario())
    loop.close()
    asyncio.set_event_loop(None)
    loop.cycle = loop  # only the cycle collector can free it now
    del loop
    gc.disable()
    freer = threading.Thread(target=gc.collect)  # freed off the main thread,
    freer.start()                                # as a LiveKit thread would
    freer.join()
    deadline = time.monotonic() + 0.8  # the orphaned timer would fire in here
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    print("survived")
    """
)


def test_a_closed_loop_freed_on_another_thread_leaves_no_timer_behind() -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-c", LATE_FREE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"rc={done.returncode}: {done.stderr[-2000:]}"
    assert "survived" in done.stdout


def test_calls_from_other_threads_after_close_are_dropped(qapp: object) -> None:
    import threading

    from softphone.ui.shell import QtLoop

    loop = QtLoop(qapp)  # type: ignore[arg-type]
    loop.close()
    calls: list[int] = []
    worker = threading.Thread(target=lambda: loop.call_soon_threadsafe(calls.append, 1))
    worker.start()
    worker.join()
    assert calls == []
    assert not loop._ready, "a closed loop must not queue work for nobody"


def test_debug_mode_names_a_callback_that_held_the_loop(
    qapp: object, caplog: pytest.LogCaptureFixture
) -> None:
    """PYTHONASYNCIODEBUG=1 finds what stalls the app's loop, as with asyncio's own loop."""
    import asyncio
    import time

    from softphone.ui.shell import QtLoop

    loop = QtLoop(qapp)  # type: ignore[arg-type]
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def hog() -> None:
        time.sleep(0.05)

    async def scenario() -> None:
        loop.call_soon(hog)
        loop.call_soon(lambda: None)
        await asyncio.sleep(0.1)

    try:
        with caplog.at_level("WARNING", logger="softphone.ui.shell"):
            loop.run_until_complete(scenario())
    finally:
        loop.close()
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert len(slow) == 1, slow
    assert "hog" in slow[0]
