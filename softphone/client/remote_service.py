"""The HTTP client of the backend: the remote :class:`TransferService`.

The workstation holds only its own API key; tokens come from the backend.
Requests are built and answers parsed with the backend's own models
(:mod:`softphone.http_models`), so a request the backend would refuse is
refused here with the same answer, and an answer that does not fit the
schema is an error rather than a half-read object. Every non-2xx answer is
raised as :class:`~softphone.errors.BackendError` with the backend's code and
message; transport failures too (status 503, retryable), and answers that
are not what the schema says (status 502).

Several backend replicas: given a list of base URLs, a request that cannot
even connect to one (refused, connect timeout: nothing was sent, so trying
again elsewhere is safe for every method) goes to the next; the replica that
answered is asked first next time. An answer, whatever its status, is never
sent elsewhere: a 4xx is the service's word.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pydantic

from softphone.config import Secret
from softphone.domain.transfer import TransferSnapshot
from softphone.errors import BackendError, ConfigError
from softphone.http_client import async_client
from softphone.http_models import (
    MAX_BODY_BYTES,
    MAX_SEGMENTS,
    AgentOut,
    CallOut,
    CallRequestBody,
    CallTicketOut,
    DeclineBody,
    ErrorBody,
    RequestBody,
    ResponseBody,
    RoomOut,
    ServiceInfoOut,
    TokenOut,
    TokenRequestBody,
    TransferOut,
    TransferRequestBody,
    TransferTicketOut,
    validation_message,
)
from softphone.protocol import (
    AgentEntry,
    CallInfo,
    CallTicket,
    RoomEntry,
    ServiceInfo,
    SupervisorMode,
    TokenGrant,
    TokenRoleName,
    TransferRequest,
    TransferService,
    TransferTicket,
)

_Out = TypeVar("_Out", bound=ResponseBody)
log = logging.getLogger(__name__)


def _seg(value: str) -> str:
    """``value`` as one path segment (an id never changes the route)."""
    return quote(value, safe="")


def _invalid(exc: pydantic.ValidationError) -> BackendError:
    """The backend's answer to the same body, without asking it."""
    return BackendError(400, "invalid_input", validation_message(exc))


class RemoteTransferService(TransferService):
    """:class:`TransferService` over HTTP to ``softphone-backend``.

    Args:
        base_url: The backend URL (``backend_url``), or the URLs of several
            replicas of one backend, tried in turn when one cannot be reached.
        api_key: This user's API key (``backend_api_key``).
        timeout_s: Timeout of ordinary requests (long-polls add their wait).
    """

    def __init__(
        self, *, base_url: str | Sequence[str], api_key: Secret | None, timeout_s: float = 15.0
    ) -> None:
        super().__init__()
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self._bases = [u.rstrip("/") for u in urls if u]
        if not self._bases:
            raise ConfigError("the remote transfer service needs backend_url")
        for url in self._bases:
            if httpx.URL(url).scheme not in ("http", "https"):
                raise ConfigError("backend_url must be an http:// or https:// URL")
        if api_key is None or not api_key.get():
            raise ConfigError("the backend needs an API key: set SOFTPHONE_BACKEND_API_KEY")
        self._timeout_s = timeout_s
        # The replica asked first: the last one that answered.
        self._current = 0
        self._http = async_client(
            headers={"Authorization": f"Bearer {api_key.get()}"},
            timeout=timeout_s,
        )
        self._seen: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        """The replica asked first now."""
        return self._bases[self._current]

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        headers: dict[str, str] | None,
        params: dict[str, Any] | None,
        limit_s: float,
    ) -> httpx.Response:
        """Send to the replica that answered last, then to the others while none can be reached.

        Raises:
            httpx.HTTPError: The last failure (no replica could be reached, or
                one failed after the request was sent).
        """
        count = len(self._bases)
        for attempt in range(count):
            index = (self._current + attempt) % count
            try:
                res = await self._http.request(
                    method,
                    self._bases[index] + path,
                    content=content,
                    headers=headers,
                    params=params,
                    timeout=limit_s,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout):
                # Not even connected: nothing was sent, so another replica
                # may take it (safe for every method). Any later failure may
                # have reached the service: never sent twice.
                if attempt == count - 1:
                    raise
                log.info("backend replica unreachable; trying the next", extra={"index": index})
                continue
            self._current = index
            return res
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: RequestBody | None = None,
        params: dict[str, Any] | None = None,
        wait_s: float = 0,
    ) -> Any:
        """Send a request; the answer's JSON, or BackendError."""
        content = None
        headers = None
        if body is not None:
            content = body.model_dump_json(exclude_none=True).encode()
            headers = {"Content-Type": "application/json"}
        try:
            res = await self._send(
                method,
                path,
                content=content,
                headers=headers,
                params=params,
                limit_s=wait_s or self._timeout_s,
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
                err = ErrorBody.model_validate_json(res.content)
                code, message = err.code, err.message
            except pydantic.ValidationError:
                code, message = "http_error", f"HTTP {res.status_code}"
            raise BackendError(res.status_code, code, message)
        try:
            return json.loads(res.content)
        except ValueError as exc:
            raise BackendError(502, "bad_answer", "the backend's answer is not JSON") from exc

    @staticmethod
    def _parse(model: type[_Out], data: Any) -> _Out:
        """``data`` as ``model``, or BackendError (502) if it does not fit the schema."""
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise BackendError(
                502,
                "bad_answer",
                f"the backend's answer does not fit the schema: {validation_message(exc)}",
            ) from exc

    def _parse_list(self, model: type[_Out], data: Any) -> list[_Out]:
        if not isinstance(data, list):
            raise BackendError(502, "bad_answer", "the backend's answer is not a list")
        return [self._parse(model, item) for item in data]

    def _snapshot(self, data: Any) -> TransferSnapshot:
        snap = self._parse(TransferOut, data).to_domain()
        if snap.version > self._seen.get(snap.transfer_id, 0):
            self._seen[snap.transfer_id] = snap.version
            self.emit("transfer_changed", snap)
        return snap

    @staticmethod
    def _transfer_body(request: TransferRequest) -> TransferRequestBody:
        """The request body: the latest segments that fit the backend's bounds.

        A long call's transcript may exceed what the backend accepts; the
        summary needs the latest part, so the oldest segments are dropped.

        Raises:
            BackendError: A field is bad (400, as the backend would answer).
        """
        try:
            body = TransferRequestBody.from_domain(request)
        except pydantic.ValidationError as exc:
            raise _invalid(exc) from None
        segments = body.transcript[-MAX_SEGMENTS:]
        while True:
            body = body.model_copy(update={"transcript": segments})
            size = len(body.model_dump_json(exclude_none=True).encode())
            if size <= MAX_BODY_BYTES or not segments:
                return body
            # Drop the oldest share that is over, at least one segment.
            over = (size - MAX_BODY_BYTES) / size
            segments = segments[max(1, int(len(segments) * over) + 1) :]

    async def start_transfer(self, request: TransferRequest) -> TransferTicket:
        """See :meth:`TransferService.start_transfer`."""
        data = await self._call("POST", "/v1/transfers", body=self._transfer_body(request))
        ticket = self._parse(TransferTicketOut, data).to_domain()
        self._snapshot(data["transfer"])
        return ticket

    async def accept(self, transfer_id: str, *, agent: str) -> TokenGrant:
        """See :meth:`TransferService.accept`."""
        data = await self._call("POST", f"/v1/transfers/{_seg(transfer_id)}/accept")
        return self._parse(TokenOut, data).to_domain()

    async def decline(self, transfer_id: str, *, agent: str, reason: str = "") -> TransferSnapshot:
        """See :meth:`TransferService.decline`."""
        try:
            body = DeclineBody(reason=reason)
        except pydantic.ValidationError as exc:
            raise _invalid(exc) from None
        data = await self._call("POST", f"/v1/transfers/{_seg(transfer_id)}/decline", body=body)
        return self._snapshot(data)

    async def complete(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.complete`."""
        # The move is bounded by the service's own timeouts (move, then bring the agent).
        data = await self._call("POST", f"/v1/transfers/{_seg(transfer_id)}/complete", wait_s=60.0)
        return self._snapshot(data)

    async def cancel(self, transfer_id: str, *, agent: str) -> TransferSnapshot:
        """See :meth:`TransferService.cancel`."""
        return self._snapshot(await self._call("POST", f"/v1/transfers/{_seg(transfer_id)}/cancel"))

    async def status(self, transfer_id: str) -> TransferSnapshot:
        """See :meth:`TransferService.status`."""
        return self._snapshot(await self._call("GET", f"/v1/transfers/{_seg(transfer_id)}"))

    async def wait_for_change(
        self, transfer_id: str, *, after_version: int, timeout_s: float = 10.0
    ) -> TransferSnapshot:
        """See :meth:`TransferService.wait_for_change`."""
        data = await self._call(
            "GET",
            f"/v1/transfers/{_seg(transfer_id)}",
            params={"after_version": after_version, "wait_s": timeout_s},
            wait_s=timeout_s + self._timeout_s,
        )
        return self._snapshot(data)

    async def list_agents(self) -> list[AgentEntry]:
        """See :meth:`TransferService.list_agents`."""
        data = await self._call("GET", "/v1/agents")
        return [a.to_domain() for a in self._parse_list(AgentOut, data)]

    async def list_rooms(self) -> list[RoomEntry]:
        """See :meth:`TransferService.list_rooms` (supervisor keys only)."""
        data = await self._call("GET", "/v1/rooms")
        return [r.to_domain() for r in self._parse_list(RoomOut, data)]

    async def mint_token(
        self,
        *,
        identity: str,
        room: str,
        role: TokenRoleName,
        supervisor_mode: SupervisorMode = "listen",
    ) -> TokenGrant:
        """See :meth:`TransferService.mint_token` (only the key's own identity and role)."""
        try:
            body = TokenRequestBody(
                room=room,
                identity=identity,
                role=role,
                supervisor_mode=supervisor_mode if role == "supervisor" else None,
            )
        except pydantic.ValidationError as exc:
            raise _invalid(exc) from None
        data = await self._call("POST", "/v1/tokens", body=body)
        return self._parse(TokenOut, data).to_domain()

    async def create_call(self, *, caller: str, agent: str, requester: str) -> CallTicket:
        """See :meth:`TransferService.create_call` (``requester`` is always the key's identity)."""
        try:
            body = CallRequestBody(caller=caller, agent=agent)
        except pydantic.ValidationError as exc:
            raise _invalid(exc) from None
        data = await self._call("POST", "/v1/calls", body=body)
        return self._parse(CallTicketOut, data).to_domain()

    async def list_calls(self, *, identity: str, role: TokenRoleName) -> list[CallInfo]:
        """See :meth:`TransferService.list_calls` (the key's own identity and role)."""
        data = await self._call("GET", "/v1/calls")
        return [c.to_domain() for c in self._parse_list(CallOut, data)]

    async def end_call(self, call_id: str, *, identity: str) -> CallInfo:
        """See :meth:`TransferService.end_call` (as the key's own identity)."""
        data = await self._call("POST", f"/v1/calls/{_seg(call_id)}/end")
        return self._parse(CallOut, data).to_domain()

    async def service_info(self) -> ServiceInfo:
        """See :meth:`TransferService.service_info`."""
        return self._parse(ServiceInfoOut, await self._call("GET", "/v1/service")).to_domain()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()
