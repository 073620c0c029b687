"""Readiness (``GET /ready``): named async checks of what the backend needs.

Liveness (``GET /health``) says the process answers; readiness says it can
do its work now: LiveKit's server API answers (and, once the service keeps
its state there, Redis and PostgreSQL). Whoever builds a dependency adds a
check for it::

    readiness.add("livekit", lambda: rooms.list_rooms([PROBE_ROOM]))

A check is an async callable that raises when the dependency is not usable.
Each is bounded by a timeout; the result is shared by concurrent probes and
kept for a moment, so probes cannot flood a dependency. Failures are
reported by name only: no exception text (which might hold an address or a
credential) leaves the process, and the log gets the exception's class.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from softphone.errors import ConfigError

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[object]]
CheckState = Literal["ok", "failed", "timeout"]
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Readiness:
    """The backend's readiness checks.

    Args:
        timeout_s: How long one check may take before it counts as failed.
        cache_s: How long a result is reused by later probes.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        cache_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._clock = clock
        self._checks: dict[str, Check] = {}
        self._result: dict[str, CheckState] | None = None
        self._at = 0.0
        self._running: asyncio.Task[dict[str, CheckState]] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The checks, in the order they were added."""
        return tuple(self._checks)

    def add(self, name: str, check: Check) -> None:
        """Add a check (``name``: 1-32 of ``a-z0-9_``, unique).

        Raises:
            ConfigError: A bad or repeated name.
        """
        if not _NAME.match(name) or name in self._checks:
            raise ConfigError(f"readiness check {name!r}: a new name of a-z, 0-9 and _ is needed")
        self._checks[name] = check
        self._result = None

    async def check(self) -> dict[str, CheckState]:
        """Each check's state (run now, or shared with a probe in progress or just done)."""
        if self._result is not None and self._clock() - self._at < self.cache_s:
            return self._result
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run_all())
        task = self._running
        try:
            # Shielded: one impatient probe must not cancel the others' answer.
            return await asyncio.shield(task)
        finally:
            if task.done() and self._running is task:
                self._running = None

    async def _run_all(self) -> dict[str, CheckState]:
        names = list(self._checks)
        states = await asyncio.gather(*(self._run(n, self._checks[n]) for n in names))
        result = dict(zip(names, states, strict=True))
        self._result, self._at = result, self._clock()
        return result

    async def _run(self, name: str, check: Check) -> CheckState:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            log.warning("readiness check timed out", extra={"check": name})
            return "timeout"
        except Exception as exc:
            log.warning(
                "readiness check failed", extra={"check": name, "error": exc.__class__.__name__}
            )
            return "failed"
        return "ok"

    @staticmethod
    def ready(states: dict[str, CheckState]) -> bool:
        """Whether every check passed."""
        return all(s == "ok" for s in states.values())
