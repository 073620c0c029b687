"""The agent directory, read server-side from the lobby room.

Online agents sit in the lobby with audio off and publish their presence in
their participant attributes; the service reads them with the server API.
(An agent's app sees the same directory live through
:meth:`softphone.client.lobby.AgentLobby.directory`.)
"""

from __future__ import annotations

from softphone.domain.identifiers import validate_identity, validate_room_name
from softphone.errors import NotFoundError
from softphone.protocol import (
    PRESENCE_ATTRIBUTE,
    PRESENCES,
    AgentEntry,
)
from softphone.server.room_admin import ParticipantInfo, RoomAdmin


def _entry(p: ParticipantInfo) -> AgentEntry:
    presence = p.attributes.get(PRESENCE_ATTRIBUTE, "away")
    return AgentEntry(
        identity=p.identity,
        name=p.name or p.identity,
        presence=presence if presence in PRESENCES else "away",
    )


class AgentDirectory:
    """Who is online, and how available, according to the lobby room.

    Args:
        rooms: Server API access.
        lobby_room: The lobby's room name.
    """

    def __init__(self, *, rooms: RoomAdmin, lobby_room: str) -> None:
        self._rooms = rooms
        self.lobby_room = validate_room_name(lobby_room, "lobby_room")

    async def list(self) -> list[AgentEntry]:
        """Every agent in the lobby, sorted by identity (an absent lobby is empty)."""
        try:
            people = await self._rooms.list_participants(self.lobby_room)
        except NotFoundError:
            return []
        agents = [_entry(p) for p in people if p.attributes.get("role") == "agent"]
        return sorted(agents, key=lambda a: a.identity)

    async def get(self, identity: str) -> AgentEntry:
        """One agent.

        Raises:
            NotFoundError: The agent is not online (not in the lobby).
        """
        validate_identity(identity)
        try:
            p = await self._rooms.get_participant(self.lobby_room, identity)
        except NotFoundError:
            raise NotFoundError("agent not online", details={"identity": identity}) from None
        if p.attributes.get("role") != "agent":
            raise NotFoundError("agent not online", details={"identity": identity})
        return _entry(p)
