"""One agent's window in a process of its own, clicking its side of a warm transfer.

The deployed layout of ``max_loop_stall_agent_ms`` (``bench/app.py``): Agent A
and Agent B each run this in their own process against the backend (its
keys and lobby come from the environment, as for the app); the caller is
the bench. A waits for the assigned call and for B in the lobby, starts the
transfer, and completes it once B is in the consultation; B accepts the
offer. Each prints ``STALL <ms>``: the worst lateness of a 10 ms timer on
its own event loop from its first click to the end of the transfer.

Run as ``python -m bench._agent_stall a|b IDENTITY PROFILE BACKEND_URL [TARGET]``.
With ``AGENT_STALL_SLOW_MS`` set, a thread samples the main thread's stack
every 2 ms and each stall of that many ms is printed (``SLOW``) with the
stacks most sampled during it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from softphone.app import build_windows
from softphone.config import load_settings
from softphone.ui.shell import close_window_resources, freeze_heap, run_qt

TICK_S = 0.01
TIMEOUT_S = 120.0


async def until(cond: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Wait for ``cond``; a TimeoutError names ``what``."""
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


class StackSampler:
    """The main thread's stack every 2 ms, to name what held the loop in a stall.

    Also the three-window bench's ``--slow-callbacks`` (``bench/app.py``).
    """

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, tuple[str, ...]]] = collections.deque(
            maxlen=50000
        )
        self._main = threading.main_thread().ident
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            frame = sys._current_frames().get(self._main or 0)
            stack: list[str] = []
            while frame is not None and len(stack) < 10:
                where = "/".join(frame.f_code.co_filename.rsplit("/", 2)[-2:])
                stack.append(f"{where}:{frame.f_lineno} {frame.f_code.co_name}")
                frame = frame.f_back
            self.samples.append((time.monotonic(), tuple(stack)))
            time.sleep(0.002)

    def report(self, late_ms: float, since: float, step: str = "") -> None:
        """Print (stderr) the stacks most sampled since ``since``, a stall of ``late_ms``."""
        window = [stack for at, stack in list(self.samples) if at >= since]
        busy = [st for st in window if st and "run_forever" not in st[0]]
        where = f"[{step}] " if step else ""
        print(
            f"SLOW {where}{late_ms:.1f} ms late: {len(busy)} of {len(window)} samples busy",
            file=sys.stderr,
        )
        for stack, n in collections.Counter(busy).most_common(3):
            print(f"SLOW   {n} x " + " <- ".join(stack), file=sys.stderr)


class LoopWatch:
    """The worst lateness of a 10 ms sleep on this loop while it runs."""

    def __init__(self) -> None:
        self.worst_ms = 0.0
        self._task: asyncio.Task[None] | None = None
        slow = os.environ.get("AGENT_STALL_SLOW_MS")
        self._slow_ms = float(slow) if slow else None
        self._sampler = StackSampler() if self._slow_ms is not None else None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(TICK_S)
            late = (time.monotonic() - started - TICK_S) * 1000
            self.worst_ms = max(self.worst_ms, late)
            if self._sampler is not None and self._slow_ms is not None and late >= self._slow_ms:
                self._sampler.report(late, started)

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.worst_ms


async def side_a(window: Any, target: str, watch: LoopWatch) -> None:
    """Start the transfer to ``target`` and complete it."""
    await until(lambda: window.call_panel.in_call, "A in the call")
    await until(lambda: window.agent.caller_identity() is not None, "A seeing the caller")
    await until(lambda: (target, "available") in window.transfer_panel.agents(), "B available")
    watch.start()
    window.transfer_panel.target.setText(target)
    window.transfer_panel.start_btn.click()
    panel = window.transfer_panel
    await until(lambda: panel.snapshot is not None and panel.snapshot.phase == "consulting", "B")
    await until(lambda: panel.complete_btn.isEnabled(), "complete enabled")
    panel.complete_btn.click()
    await until(lambda: window.controller.call is None, "A leaving the call")


async def side_b(window: Any, watch: LoopWatch) -> None:
    """Accept the offer and stay until the call is B's."""
    await until(lambda: window.offer_panel.offer is not None, "the offer")
    watch.start()
    window.offer_panel.accept_btn.click()
    await until(lambda: window.controller.call is not None, "B in the call")


def main() -> None:
    side, identity, profile, backend = sys.argv[1:5]
    target = sys.argv[5] if len(sys.argv) > 5 else ""
    settings = load_settings(
        {
            "role": "agent",
            "identity": identity,
            "profile": profile,
            "backend_url": backend,
            "live_transcript": False,
        }
    )

    async def run() -> None:
        watch = LoopWatch()
        async with contextlib.AsyncExitStack() as stack:
            (window,) = await build_windows(settings, stack)
            window.show()
            freeze_heap()  # as run_until_closed does once the window is shown
            print("READY", flush=True)
            if side == "a":
                await side_a(window, target, watch)
            else:
                await side_b(window, watch)
            await asyncio.sleep(0.5)
            print(f"STALL {await watch.stop():.1f}", flush=True)
            window.close()
            await close_window_resources(window)

    run_qt(run)


if __name__ == "__main__":
    main()
