"""The HTTP client of the backend: the remote :class:`TransferService`.

The workstation holds only its own API key; tokens come from the backend.
Every non-2xx answer is raised as :class:`~softphone.errors.BackendError`
with the backend's code and message; transport failures too (status 503,
retryable).
"""

from __future__ import annotations

from typing import Any

import httpx

from softphone.config import Secret
from softphone.domain.transfer import TransferSnapshot
from softphone.errors import BackendError, ConfigError
from softphone.protocol import (
    AgentEntry,
    RoomEntry,
    TokenGrant,
    TokenRoleName,
    TransferRequest,
    TransferService,
    TransferTicket,
)


class RemoteTransferService(TransferService):
    """:class:`TransferService` over HTTP to ``softphone-backend``.

    Args:
        base_url: The backend URL (``backend_url``).
        api_key: This user's API key (``backend_api_key``).
        timeout_s: Timeout of ordinary requests (long-polls add their wait).
    """

    def __init__(self, *, base_url: str, api_key: Secret | None, timeout_s: float = 15.0) -> None:
        super().__init__()
        if not base_url:
            raise ConfigError("the remote transfer service needs backend_url")
        if api_key is None or not api_key.get():
            raise ConfigError("the backend needs an API key: set SOFTPHONE_BACKEND_API_KEY")
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key.get()}"},
            timeout=timeout_s,
        )
        self._seen: dict[str, int] = {}

    async def _call(
        self, method: str, path: str, *, json: Any = None, params: Any = None, wait_s: float = 0
    ) -> Any:
        try:
            res = await self._http.request(
                method, path, json=json, params=params, timeout=wait_s or self._timeout_s
            )
        except httpx.TimeoutException as exc:
            limit = wait_s or self._timeout_s
            raise BackendError(
                504, "timeout", f"the backend did not answer within {limit:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(503, "unreachable", "the backend could not be reached") from exc
        if res.status_code >= 400:
            try:
                body = res.json()
                code, message = str(body["code"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {res.status_code}"
            raise BackendError(res.status_code, code, message)
        return res.json()

    def _snapshot(self, data: Any) -> TransferSnapshot:
        snap = TransferSnapshot.from_dict(data)
        if snap.version > self._seen.get(snap.transfer_id, 0):
            self._seen[snap.transfer_id] = snap.version
            self.emit("transfer_changed", snap)
        return snap

    async def start_transfer(self, request: TransferRequest) -> TransferTicket:
        """See :meth:`TransferService.start_transfer`."""
        ticket = TransferTicket.from_dict(
            await self._call("POST", "/v1/transfers", json=request.to_dict())
        )
        self._snapshot(ticket.transfer.to_dict())
        return ticket

    async def accept(self, transfer_id: str, *, agent: str) -> TokenGrant:
        """See :meth:`TransferService.accept`."""
        return TokenGrant.from_dict(await self._call("POST", f"/v1/transfers/{transfer_id}/accept"))

    async def decline(self, transfer_id: str, *, agent: str, reason: str = "") -> TransferSnapshot:
        """See :meth:`TransferService.decline`."""
        data = await self._call(
            "POST", f"/v1/transfers/{transfer_id}/decline", json={"reason": reason}
        )
        return self._snapshot(data)

    async def complete(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.complete`."""
        # The move is bounded by the service's own timeouts (move, then bring the agent).
        data = await self._call("POST", f"/v1/transfers/{transfer_id}/complete", wait_s=60.0)
        return self._snapshot(data)

    async def cancel(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.cancel`."""
        return self._snapshot(await self._call("POST", f"/v1/transfers/{transfer_id}/cancel"))

    async def status(self, transfer_id: str) -> TransferSnapshot:
        """See :meth:`TransferService.status`."""
        return self._snapshot(await self._call("GET", f"/v1/transfers/{transfer_id}"))

    async def wait_for_change(
        self, transfer_id: str, *, after_version: int, timeout_s: float = 10.0
    ) -> TransferSnapshot:
        """See :meth:`TransferService.wait_for_change`."""
        data = await self._call(
            "GET",
            f"/v1/transfers/{transfer_id}",
            params={"after_version": after_version, "wait_s": timeout_s},
            wait_s=timeout_s + self._timeout_s,
        )
        return self._snapshot(data)

    async def list_agents(self) -> list[AgentEntry]:
        """See :meth:`TransferService.list_agents`."""
        return [AgentEntry(**a) for a in await self._call("GET", "/v1/agents")]

    async def list_rooms(self) -> list[RoomEntry]:
        """See :meth:`TransferService.list_rooms`."""
        return [RoomEntry(**r) for r in await self._call("GET", "/v1/rooms")]

    async def mint_token(self, *, identity: str, room: str, role: TokenRoleName) -> TokenGrant:
        """See :meth:`TransferService.mint_token` (only the key's own identity and role)."""
        data = await self._call(
            "POST", "/v1/tokens", json={"identity": identity, "room": room, "role": role}
        )
        return TokenGrant.from_dict(data)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()
