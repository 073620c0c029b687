"""Run coroutines from Qt signals: keep a reference to each task, report failures.

Qt slots are plain functions; the work they start is asyncio, and widgets
have no ``async def`` of their own. A slot hands a coroutine (usually a
controller method) to :func:`run_task`, or connects a signal to
:func:`async_slot` around a coroutine function. Either way the task runs on
the qasync loop, is referenced until it ends, and an exception goes to the
``report`` callback (a non-modal message in the window) and to the log
instead of being lost. :func:`cancel_pending` cancels what is left at
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

from softphone.errors import SoftphoneError

log = logging.getLogger(__name__)

P = ParamSpec("P")
Report = Callable[[str], None]

_TASKS: set[asyncio.Task[Any]] = set()


def error_text(exc: BaseException) -> str:
    """What the user is told about ``exc``: our message, never a traceback."""
    if isinstance(exc, SoftphoneError):
        return exc.message
    return f"unexpected error ({exc.__class__.__name__}); details are in the log"


def run_task(
    coro: Coroutine[Any, Any, Any], *, report: Report | None = None, what: str = ""
) -> asyncio.Task[Any]:
    """Start ``coro`` on the running loop, keep it referenced, report its failure.

    Args:
        coro: The work to do.
        report: Called with a user-facing message if the work fails.
        what: A short name of the work, for the log.
    """
    task = asyncio.get_event_loop().create_task(coro)
    _TASKS.add(task)
    label = what or getattr(coro, "__qualname__", "task")

    def done(t: asyncio.Task[Any]) -> None:
        _TASKS.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            return
        if isinstance(exc, SoftphoneError):
            log.warning("%s failed: %s", label, exc.message, extra={"details": exc.details})
        else:
            log.error("%s failed", label, exc_info=exc)
        if report is not None:
            try:
                report(error_text(exc))
            except RuntimeError:  # the widget is already gone
                log.debug("could not report an error: window closed")

    task.add_done_callback(done)
    return task


def async_slot(
    fn: Callable[P, Coroutine[Any, Any, Any]], *, report: Report | None = None
) -> Callable[P, None]:
    """A slot that runs the coroutine function ``fn`` with the signal's arguments."""

    def slot(*args: P.args, **kwargs: P.kwargs) -> None:
        run_task(fn(*args, **kwargs), report=report, what=getattr(fn, "__qualname__", ""))

    return slot


def pending() -> list[asyncio.Task[Any]]:
    """Tasks started here that have not finished."""
    return [t for t in _TASKS if not t.done()]


async def cancel_pending() -> None:
    """Cancel and await every task still running (at shutdown)."""
    tasks = pending()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
