"""What a window needs from the app: settings, the server URL, token minting, services.

Built by the composition root (``softphone.app``) and handed to every window;
holds no Qt. In embedded mode it mints tokens itself (it has the LiveKit API
secret of the local or configured server); with a backend the transfer
service's client mints them and the workstation holds no secret.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from softphone.config import Settings
from softphone.errors import ConfigError
from softphone.server.room_admin import RoomAdmin
from softphone.server.token_minter import SupervisorMode, TokenMinter, TokenRole
from softphone.store.history import HistoryStore


@dataclasses.dataclass
class AppContext:
    """Services shared by the windows of one app instance.

    Attributes:
        settings: The profile's settings.
        url: The LiveKit URL clients connect to.
        history: The profile's call history.
        minter: Mints tokens (embedded mode only).
        admin: Server API access (embedded mode only): rooms and participants.
        transfer: The ``TransferService`` (embedded or remote), once available.
    """

    settings: Settings
    url: str
    history: HistoryStore
    minter: TokenMinter | None = None
    admin: RoomAdmin | None = None
    transfer: Any | None = None

    async def token(
        self,
        *,
        role: TokenRole,
        identity: str,
        room: str,
        supervisor_mode: SupervisorMode = "listen",
    ) -> str:
        """A token for ``identity`` in ``room`` with the grants of ``role``.

        Raises:
            ValidationError: Bad identity or room name.
            ConfigError: Nothing here can mint tokens for this role.
        """
        if self.minter is not None:
            return self.minter.mint(
                role=role, identity=identity, room=room, supervisor_mode=supervisor_mode
            ).token
        if self.transfer is not None and role in ("caller", "agent"):
            grant = await self.transfer.mint_token(identity=identity, room=room, role=role)
            return str(grant.token)
        raise ConfigError(
            f"cannot get a {role} token: run embedded, or give the backend a key for this role"
        )
