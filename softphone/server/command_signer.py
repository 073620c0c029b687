"""Signs the commands the service sends to the apps (offers, moves, status, ...).

Server-initiated RPC and data carry no participant sender an app could trust
(the server gives RPCs a generated caller identity), so each command is
signed with the service's Ed25519 key and the apps check it against the public
half they get from :meth:`~softphone.protocol.TransferService.service_info`
(see :func:`softphone.protocol.verify_command` for the wire format).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from softphone.config import Secret
from softphone.errors import ConfigError, ValidationError
from softphone.protocol import b64url_decode, b64url_encode

DEFAULT_TTL_S = 60.0
SEED_BYTES = 32


class CommandSigner:
    """Holds the service's command key and signs commands with it.

    Args:
        seed: The private key as a base64url 32-byte seed
            (``SOFTPHONE_COMMAND_SIGNING_KEY``); None makes a new key, fine for
            one process (every app asks the service for the public key).
        clock: Wall clock for expiry times.

    Raises:
        ConfigError: The seed is not base64url of 32 bytes.
    """

    def __init__(
        self, seed: Secret | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        if seed is None:
            self._key = Ed25519PrivateKey.generate()
        else:
            try:
                raw = b64url_decode(seed.get().strip())
            except ValidationError:
                raw = b""
            if len(raw) != SEED_BYTES:
                raise ConfigError(
                    "command_signing_key: expected the base64url text of a 32-byte seed"
                )
            self._key = Ed25519PrivateKey.from_private_bytes(raw)
        self._clock = clock
        public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._public_b64 = b64url_encode(public)

    def __repr__(self) -> str:
        return f"CommandSigner(public_key={self._public_b64!r})"

    def public_key_b64(self) -> str:
        """The public key the apps verify with (base64url, 32 bytes)."""
        return self._public_b64

    def sign(
        self,
        method: str,
        *,
        to: str,
        room: str,
        body: dict[str, Any],
        ttl_s: float = DEFAULT_TTL_S,
    ) -> str:
        """The wire payload of one command.

        Args:
            method: The RPC method or data topic it is sent as.
            to: The recipient's identity, or ``"*"`` for everyone in ``room``.
            room: The room it is sent in.
            body: What the command says (JSON-ready).
            ttl_s: How long it stays valid.
        """
        text = json.dumps(
            {
                "method": method,
                "to": to,
                "room": room,
                "exp": round(self._clock() + ttl_s, 3),
                "nonce": uuid.uuid4().hex,
                "body": body,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        sig = self._key.sign(text.encode())
        return json.dumps(
            {"cmd": text, "sig": b64url_encode(sig)}, separators=(",", ":"), ensure_ascii=False
        )
