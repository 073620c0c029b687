"""Commands only from the service: the apps' one gate for RPCs and data it sends.

Offers, withdrawals, standby, move, join and status reach an app as RPCs or
data messages; any participant in a room can send those too. The service
sends them from the server side (a data message with no participant sender,
an RPC from the server API, see :func:`from_server`) and signs each one
(:func:`softphone.protocol.verify_command`). :class:`CommandGuard` checks
both, and that a grant to join a room names the deployment's own LiveKit URL;
whatever fails is refused with no effect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from livekit import rtc

from softphone.domain.identifiers import validate_identity
from softphone.errors import ValidationError
from softphone.media.session import DataMessage, RtcSession
from softphone.protocol import STANDBY_ADMIT, ServiceInfo, TokenGrant, verify_command

log = logging.getLogger(__name__)

REFUSED = "not from the service"
# A standby caller admits the agent taking the call; a few more would be odd.
MAX_ADMITTED = 4


def from_server(session: RtcSession, inv: rtc.RpcInvocationData) -> bool:
    """Whether an RPC was sent by the server (the server API), not by a participant.

    livekit-server 1.13.5 gives its own RPCs one generated UUID as both
    request id and caller identity; a participant's RPC carries its identity
    and an id its SDK made up. The participant list alone does not tell: a
    participant that publishes nothing is announced to the others only in
    the next batch of updates, up to three seconds after it joined.
    """
    if inv.caller_identity in session.room.remote_participants:
        return False
    return inv.caller_identity == inv.request_id


def _refused() -> rtc.RpcError:
    return rtc.RpcError(rtc.RpcError.ErrorCode.APPLICATION_ERROR, REFUSED)


class CommandGuard:
    """Checks that a command comes from the service before an app obeys it.

    Args:
        info: What the service said about itself (its LiveKit URL and
            command key), from :meth:`TransferService.service_info`.
        clock: Wall clock for expiry.
    """

    def __init__(self, info: ServiceInfo, *, clock: Callable[[], float] = time.time) -> None:
        self.info = info
        self._clock = clock

    def rpc(self, session: RtcSession, inv: rtc.RpcInvocationData, method: str) -> dict[str, Any]:
        """The body of an RPC command received on ``session``.

        Raises:
            rtc.RpcError: Not signed by the service for this method, recipient
                and room, or sent by a participant (not obeyed).
        """
        try:
            body = self._verify(session, inv.payload, method)
        except ValidationError as exc:
            self._warn(method, inv.caller_identity, exc.message)
            raise _refused() from None
        if not from_server(session, inv):
            # A second fence: signed or not, a participant's RPC is not the service's.
            self._warn(method, inv.caller_identity, "sent by a participant")
            raise _refused()
        return body

    def data(self, session: RtcSession, msg: DataMessage, topic: str) -> dict[str, Any]:
        """The body of a data command received on ``session``.

        Raises:
            ValidationError: Sent by a participant, or not signed by the
                service for this topic, recipient and room (ignore it).
        """
        if msg.sender is not None:
            self._warn(topic, msg.sender, "sent by a participant")
            raise ValidationError("sender", REFUSED)
        try:
            return self._verify(session, msg.payload, topic)
        except ValidationError as exc:
            self._warn(topic, None, exc.message)
            raise ValidationError("payload", REFUSED) from None

    def grant(self, body: Mapping[str, Any]) -> TokenGrant:
        """The token grant a move, join or standby command carries.

        Raises:
            rtc.RpcError: Not a grant, or one for another LiveKit server.
        """
        try:
            grant = TokenGrant.from_dict(body)
        except (KeyError, TypeError, ValueError):
            self._warn("grant", None, "not a token grant")
            raise _refused() from None
        if grant.url != self.info.livekit_url:
            self._warn("grant", None, "names another LiveKit server")
            raise _refused()
        return grant

    def admitted(self, body: Mapping[str, Any]) -> list[str]:
        """Who a standby command lets subscribe to the caller's muted mic (nobody if unsaid).

        Raises:
            rtc.RpcError: Not a short list of identities.
        """
        admit = body.get(STANDBY_ADMIT, [])
        try:
            if not isinstance(admit, list) or len(admit) > MAX_ADMITTED:
                raise ValidationError(STANDBY_ADMIT, "must be a short list of identities")
            return [validate_identity(who, STANDBY_ADMIT) for who in admit]
        except ValidationError:
            self._warn("standby", None, "admits something other than identities")
            raise _refused() from None

    def _verify(self, session: RtcSession, payload: str | bytes, method: str) -> dict[str, Any]:
        return verify_command(
            payload,
            public_key_b64=self.info.command_key,
            method=method,
            me=session.identity,
            room=session.room_name,
            now=self._clock(),
        )

    @staticmethod
    def _warn(method: str, sender: str | None, why: str) -> None:
        log.warning("command %s refused: %s", method, why, extra={"sender": sender})
