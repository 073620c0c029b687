"""The one place service events become Qt signals on the main thread.

Services emit typed events (``EventEmitter``) from the asyncio loop or, for
device callbacks, from other threads. :class:`EventBridge` re-emits each as
``forwarded(source, name, payload)``; Qt queues a signal emitted off the main
thread, so slots always run on the main (qasync) thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtCore import QObject, Signal

from softphone.domain.events import EventEmitter


class EventBridge(QObject):
    """Forwards events of any number of emitters as one Qt signal.

    Signals:
        forwarded(str, str, object): source label, event name, payload.
    """

    forwarded = Signal(str, str, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._offs: dict[str, list[Callable[[], None]]] = {}

    def attach(self, source: str, emitter: EventEmitter[Any], events: Iterable[str]) -> None:
        """Forward ``events`` of ``emitter`` labelled ``source`` (replacing a previous one)."""
        self.detach(source)
        offs = []
        for name in events:

            def forward(payload: Any, _name: str = name) -> None:
                self.forwarded.emit(source, _name, payload)

            offs.append(emitter.on(name, forward))
        self._offs[source] = offs

    def detach(self, source: str) -> None:
        """Stop forwarding the events of ``source``."""
        for off in self._offs.pop(source, []):
            off()

    def detach_all(self) -> None:
        """Stop forwarding everything (window closing)."""
        for source in list(self._offs):
            self.detach(source)
