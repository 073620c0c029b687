"""A small typed event emitter, shared by every layer below the UI.

Event names are ``Literal`` strings and payloads are dataclasses; the UI
bridge is the only place that turns them into Qt signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

E = TypeVar("E", bound=str)
log = logging.getLogger(__name__)


class EventEmitter(Generic[E]):
    """Synchronous publish/subscribe keyed by event name.

    A listener that raises is logged and does not stop the others.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[Any], object]]] = {}

    def on(self, event: E, listener: Callable[[Any], object]) -> Callable[[], None]:
        """Call ``listener(payload)`` for every ``event``; returns a function that unsubscribes."""
        self._listeners.setdefault(event, []).append(listener)

        def off() -> None:
            listeners = self._listeners.get(event, [])
            if listener in listeners:
                listeners.remove(listener)

        return off

    def emit(self, event: E, payload: Any = None) -> None:
        """Deliver ``payload`` to every listener of ``event``."""
        for listener in list(self._listeners.get(event, ())):
            try:
                listener(payload)
            except Exception:
                log.exception("event listener failed", extra={"event": event})
