"""Where the service writes a call's chain of custody: the interface both stores offer.

The transfer orchestrator records every call it creates, every step of every
transfer, the summaries it hands over and the end of the call. On one
workstation (embedded mode) that goes to the profile's SQLite history
(:class:`~softphone.store.history.HistoryStore`); a scaled-out service's
replicas all write to one PostgreSQL database
(:class:`~softphone.store.records.PostgresRecords`). Both satisfy
:class:`CustodyLog`, so the orchestrator takes either.
"""

from __future__ import annotations

from typing import Any, Protocol

from softphone.domain.summary import SummaryCard


class CustodyLog(Protocol):
    """The writes the service makes to a call's record.

    Every method is one transaction: once it returns, the write survives a
    crash. Failures are :class:`~softphone.errors.HistoryError` (``retryable``
    when the store was unreachable) or :class:`~softphone.errors.ValidationError`.
    Times are seconds since the epoch; ``None`` means now.
    """

    async def start_call(
        self,
        room: str,
        *,
        call_id: str | None = None,
        direction: str = "inbound",
        started_at: float | None = None,
    ) -> str:
        """Record a new call in ``room`` and return its id (``call_id`` if given)."""
        ...

    async def add_participant(
        self, call_id: str, identity: str, role: str, joined_at: float | None = None
    ) -> None:
        """Record that ``identity`` is a party of the call as ``role`` (caller, agent, ...)."""
        ...

    async def end_call(self, call_id: str, ended_at: float | None = None) -> None:
        """Mark the call as ended."""
        ...

    async def add_summary(self, call_id: str, card: SummaryCard) -> int:
        """Store a summary card of the call; returns its row id."""
        ...

    async def add_transfer_event(
        self,
        call_id: str,
        transfer_id: str,
        phase: str,
        *,
        from_agent: str = "",
        to_agent: str = "",
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> int:
        """Store one step of a transfer (the chain of custody); returns its row id."""
        ...
