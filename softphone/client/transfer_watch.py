"""Following one transfer at the service, and noticing when the service is gone.

A's app learns a transfer's progress from status data messages in the call
room, and B's app learns of a withdrawn offer by RPC in the lobby: both come
from the service. When the service dies nothing comes at all, and the apps
used to wait for ever (the caller heard nothing, A stayed muted, B's phone
rang on). :class:`TransferWatch` long-polls the transfer
(:meth:`TransferService.wait_for_change`), hands on every new snapshot, and
declares the service lost once it has not answered for ``lost_after_s``
(3 s): connection refused, timeouts and 5xx count; a 4xx is an answer (the
service is there and said no), except that a 404 for the transfer means the
service no longer knows it (``gone``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Literal

from softphone.domain.transfer import TransferSnapshot
from softphone.errors import BackendError, NotFoundError, SoftphoneError
from softphone.protocol import TransferService

log = logging.getLogger(__name__)

# The service counts as lost after this long without an answer.
LOST_AFTER_S = 3.0
# Each long-poll waits this long at the service for a change.
WATCH_WAIT_S = 2.0
# Pause after a failed request before the next one.
RETRY_S = 0.25


@dataclasses.dataclass(frozen=True)
class ServiceLost:
    """The service stopped answering about a transfer (or no longer knows it).

    Attributes:
        transfer_id: The transfer.
        phase: Its last known phase.
        kind: ``unreachable`` (no answer for ``silent_s``) or ``gone`` (404).
        silent_s: Seconds since the service last answered.
        message: What to tell the user.
    """

    transfer_id: str
    phase: str
    kind: Literal["unreachable", "gone"]
    silent_s: float
    message: str


def unreachable(exc: BaseException) -> bool:
    """Whether a failure means the service did not answer (as opposed to answering no)."""
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, BackendError):
        return exc.status >= 500
    return False


class TransferWatch:
    """Long-polls one transfer; calls ``on_snapshot`` for each new version and ``on_lost`` once.

    Stops by itself once the transfer is over (completed, returned, ended)
    or the service is lost; :meth:`aclose` stops it earlier.

    Args:
        service: The transfer service (embedded or remote).
        transfer_id: The transfer.
        on_snapshot: Called with every snapshot newer than the last.
        on_lost: Called once when the service is lost (:class:`ServiceLost`).
        after_version: The version already known.
        phase: The phase already known (for the lost report).
        lost_after_s: Silence after which the service counts as lost.
        wait_s: How long each long-poll waits at the service.
    """

    def __init__(
        self,
        *,
        service: TransferService,
        transfer_id: str,
        on_snapshot: Callable[[TransferSnapshot], object],
        on_lost: Callable[[ServiceLost], object],
        after_version: int = 0,
        phase: str = "",
        lost_after_s: float = LOST_AFTER_S,
        wait_s: float = WATCH_WAIT_S,
    ) -> None:
        self._service = service
        self.transfer_id = transfer_id
        self._on_snapshot = on_snapshot
        self._on_lost = on_lost
        self.version = after_version
        self.phase = phase
        self._lost_after_s = lost_after_s
        self._wait_s = wait_s
        self._task: asyncio.Task[None] | None = None
        self.lost: ServiceLost | None = None

    def start(self) -> TransferWatch:
        """Start watching in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    @property
    def running(self) -> bool:
        """Whether it is still watching."""
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        last_answer = time.monotonic()
        while True:
            try:
                # Bounded here, not only by the HTTP client: a hung service
                # must count as lost as promptly as a dead one.
                async with asyncio.timeout(self._wait_s + self._lost_after_s):
                    snap = await self._service.wait_for_change(
                        self.transfer_id, after_version=self.version, timeout_s=self._wait_s
                    )
            except (TimeoutError, SoftphoneError) as exc:
                now = time.monotonic()
                if isinstance(exc, NotFoundError) or (
                    isinstance(exc, BackendError) and exc.status == 404
                ):
                    self._lose("gone", now - last_answer)
                    return
                if not unreachable(exc):
                    last_answer = now  # it answered, with a refusal: it is there
                    log.info("transfer watch refused", extra={"error": str(exc)})
                elif now - last_answer >= self._lost_after_s:
                    self._lose("unreachable", now - last_answer)
                    return
                # Tried again at the latest when the silence reaches the limit.
                left = last_answer + self._lost_after_s - now
                await asyncio.sleep(min(RETRY_S, max(left, 0.01)))
                continue
            last_answer = time.monotonic()
            if snap.version > self.version:
                self.version, self.phase = snap.version, snap.phase
                self._on_snapshot(snap)
            if not snap.active:
                return

    def _lose(self, kind: Literal["unreachable", "gone"], silent_s: float) -> None:
        message = (
            "the call service no longer knows this transfer"
            if kind == "gone"
            else f"the call service has not answered for {silent_s:.0f} s"
        )
        self.lost = ServiceLost(self.transfer_id, self.phase, kind, silent_s, message)
        log.warning(
            "call service lost during a transfer",
            extra={"transfer_id": self.transfer_id, "kind": kind},
        )
        self._on_lost(self.lost)

    async def aclose(self) -> None:
        """Stop watching."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
