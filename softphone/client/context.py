"""What a window needs from the app: settings, the server URL, history, the service.

Built by the composition root (``softphone.app``) and handed to every window;
holds no Qt and no LiveKit secret: tokens come from the transfer service
(embedded, or remote: :func:`remote_transfer_service` over every backend URL
of the settings), which mints them only for parties of a room.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from softphone.config import Settings
from softphone.errors import ConfigError
from softphone.protocol import ServiceInfo, SupervisorMode, TokenRoleName, TransferService
from softphone.store.history import HistoryStore

if TYPE_CHECKING:  # imported when used: embedded mode never needs the HTTP client's models
    from softphone.client.remote_service import RemoteTransferService


@dataclasses.dataclass
class AppContext:
    """Services shared by the windows of one app instance.

    Attributes:
        settings: The profile's settings.
        url: The LiveKit URL clients connect to.
        history: The profile's call history.
        transfer: The ``TransferService`` (embedded or remote), once available.
    """

    settings: Settings
    url: str
    history: HistoryStore
    transfer: TransferService | None = None
    _info: ServiceInfo | None = dataclasses.field(default=None, init=False, repr=False)

    def service(self) -> TransferService:
        """The transfer service.

        Raises:
            ConfigError: There is none (no backend and no LiveKit key here).
        """
        if self.transfer is None:
            raise ConfigError(
                "no call service: run embedded (with a LiveKit key and secret) or give --backend"
            )
        return self.transfer

    async def service_info(self) -> ServiceInfo:
        """The service's LiveKit URL and command key (asked once)."""
        if self._info is None:
            self._info = await self.service().service_info()
        return self._info

    async def token(
        self,
        *,
        role: TokenRoleName,
        identity: str,
        room: str,
        supervisor_mode: SupervisorMode = "listen",
    ) -> str:
        """A token for ``identity`` in ``room``, from the service, if it is a party there.

        Raises:
            ValidationError: Bad identity or room name.
            NotFoundError: Not a party of that room (or no such room).
            ConfigError: No service to ask.
        """
        grant = await self.service().mint_token(
            identity=identity, room=room, role=role, supervisor_mode=supervisor_mode
        )
        return grant.token


def remote_transfer_service(settings: Settings) -> RemoteTransferService:
    """The backend's transfer service for ``settings``, with the user's API key.

    Every URL of ``backend_url`` is handed on, in order: one backend, or the
    replicas of one, the next tried only when one cannot be reached. Use it
    as ``async with`` (it owns an HTTP connection pool).

    Raises:
        ConfigError: No backend URL, or no API key (``SOFTPHONE_BACKEND_API_KEY``).
    """
    from softphone.client.remote_service import RemoteTransferService

    return RemoteTransferService(base_url=settings.backend_urls, api_key=settings.backend_api_key)
