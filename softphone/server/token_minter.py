"""Access tokens for each role, with least-privilege grants.

Implements the role table of DESIGN.md. Only the service layer holds the API
secret and mints tokens; every token is bound to one identity and one room and
lives for minutes.

| role       | publish                       | subscribe | data | hidden | own attributes |
|------------|-------------------------------|-----------|------|--------|----------------|
| caller     | microphone                    | yes       | yes (RPC answers) | no | no     |
| agent      | microphone                    | yes       | yes  | no     | yes (presence) |
| supervisor | nothing (listen); mic (whisper, barge) | yes | no | listen only | no |
| caller, standby | microphone (kept muted, subscribers: none) | no | no | no | no |

The caller keeps data publishing because its app answers the service's
``transfer.standby`` and ``transfer.move`` RPCs, and an RPC answer is a data
packet: livekit-server 1.13.5 drops every data packet (acknowledgements and
answers included) from a participant without ``canPublishData``, so the
service's RPC then fails after two seconds although the app obeyed
(measured). What a caller sends on a data topic or by RPC is not trusted
instead: the apps obey only commands signed by the service
(:mod:`softphone.client.commands`). A supervisor answers no RPC and sends no
data, so it gets none; nor does a standby caller (commands reach the caller
in its call room).

A standby caller is connected to a transfer room ahead of the move: it cannot
hear (no subscribe) or send data, and its app publishes its mic there muted
and with track subscription permissions that admit only the agent taking the
call (named in the signed standby command), who so subscribes to the muted
track during the consult: the moment of the move needs no negotiation.
Completing the transfer gives it the caller's permissions
(:meth:`TokenMinter.permission`) through the server API, and the app then
unmutes and admits everyone. It is visible while waiting: a hidden
participant's tracks never reach anyone, even after it is made visible
(livekit-server 1.13.5).

A whispering supervisor is visible to the room's clients (a hidden participant's
tracks reach nobody), and restricts who may subscribe to its mic with track
subscription permissions, so the caller cannot hear it.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Literal

from livekit import api
from livekit.protocol import models

from softphone.config import Secret
from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.errors import ConfigError, ValidationError

TokenRole = Literal["caller", "agent", "supervisor"]
SupervisorMode = Literal["listen", "whisper", "barge"]
ROLES: tuple[TokenRole, ...] = ("caller", "agent", "supervisor")
MIN_TTL_S = 1
SOURCES = {"microphone": models.TrackSource.MICROPHONE}
MAX_TTL_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    """A minted token with what it grants, so it can be re-minted when expired."""

    token: str = dataclasses.field(repr=False)
    identity: str
    room: str
    role: TokenRole
    expires_at: float

    def expired(self, margin_s: float = 5.0) -> bool:
        """True if the token expires within ``margin_s`` seconds."""
        return time.time() + margin_s >= self.expires_at


class TokenMinter:
    """Mints role-scoped LiveKit access tokens.

    Args:
        api_key: LiveKit API key.
        api_secret: LiveKit API secret.
        default_ttl_s: Lifetime of tokens when a call does not name one.
    """

    def __init__(self, *, api_key: str, api_secret: Secret, default_ttl_s: int = 600) -> None:
        if not api_key or not api_secret.get():
            raise ConfigError("minting tokens needs LIVEKIT_API_KEY and LIVEKIT_API_SECRET")
        self._api_key = api_key
        self._api_secret = api_secret
        self._default_ttl_s = default_ttl_s

    def mint(
        self,
        *,
        role: TokenRole,
        identity: str,
        room: str,
        ttl_s: float | None = None,
        name: str = "",
        attributes: dict[str, str] | None = None,
        supervisor_mode: SupervisorMode = "listen",
        standby: bool = False,
    ) -> IssuedToken:
        """Mint a token for one identity in one room.

        Args:
            role: caller, agent or supervisor; decides the grants.
            identity: The participant identity the token is bound to.
            room: The only room the token can join.
            ttl_s: Lifetime in seconds (default: the minter's).
            name: Display name.
            attributes: Initial participant attributes.
            supervisor_mode: For supervisors: listen (hidden, publishes nothing),
                whisper or barge (visible, may publish the mic).
            standby: For callers: the standby grant (hidden; no publish,
                subscribe or data) of a caller waiting to be moved.

        Raises:
            ValidationError: A bad role, identity, room, TTL or mode.
        """
        if role not in ROLES:
            raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
        validate_identity(identity)
        validate_room_name(room)
        ttl = self._default_ttl_s if ttl_s is None else ttl_s
        if not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise ValidationError("ttl_s", f"must be between {MIN_TTL_S} and {MAX_TTL_S} seconds")
        if supervisor_mode not in ("listen", "whisper", "barge"):
            raise ValidationError("supervisor_mode", "must be listen, whisper or barge")
        if standby and role != "caller":
            raise ValidationError("standby", "only a caller can be on standby")
        grants = self._grants(role, room, supervisor_mode, standby=standby)
        token = (
            api.AccessToken(self._api_key, self._api_secret.get())
            .with_identity(identity)
            .with_name(name or identity)
            .with_ttl(datetime.timedelta(seconds=ttl))
            .with_grants(grants)
            .with_attributes({"role": role, **(attributes or {})})
        )
        return IssuedToken(
            token=token.to_jwt(),
            identity=identity,
            room=room,
            role=role,
            expires_at=time.time() + ttl,
        )

    @classmethod
    def permission(cls, role: TokenRole) -> models.ParticipantPermission:
        """The in-room permission of ``role`` (what a standby caller is given on the move)."""
        if role not in ROLES:
            raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
        g = cls._grants(role, "any", "listen")
        return models.ParticipantPermission(
            can_subscribe=bool(g.can_subscribe),
            can_publish=bool(g.can_publish),
            can_publish_data=bool(g.can_publish_data),
            can_publish_sources=[SOURCES[s] for s in g.can_publish_sources or []],
            hidden=bool(g.hidden),
            can_update_metadata=bool(g.can_update_own_metadata),
        )

    @staticmethod
    def _grants(
        role: TokenRole, room: str, mode: SupervisorMode, *, standby: bool = False
    ) -> api.VideoGrants:
        mic_only = ["microphone"]
        if standby:  # the caller's grant, deaf and mute to data (its app keeps the mic muted)
            caller = TokenMinter._grants("caller", room, mode)
            return dataclasses.replace(caller, can_subscribe=False, can_publish_data=False)
        if role == "supervisor":
            speaking = mode in ("whisper", "barge")
            return api.VideoGrants(
                room_join=True,
                room=room,
                can_subscribe=True,
                can_publish_data=False,
                can_publish=speaking,
                can_publish_sources=mic_only if speaking else [],
                hidden=mode == "listen",
                can_update_own_metadata=False,
            )
        return api.VideoGrants(
            room_join=True,
            room=room,
            can_subscribe=True,
            can_publish_data=True,
            can_publish=True,
            can_publish_sources=mic_only,
            can_update_own_metadata=role == "agent",
        )
