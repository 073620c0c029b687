"""Signed commands: the service's signature, bound to one method, recipient, room and time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from livekit import rtc

from softphone.client.commands import REFUSED, CommandGuard
from softphone.config import Secret, load_settings
from softphone.errors import ConfigError, ValidationError
from softphone.protocol import (
    RPC_MOVE,
    RPC_OFFER,
    STANDBY_ADMIT,
    ServiceInfo,
    b64url_encode,
    verify_command,
)
from softphone.server.command_signer import CommandSigner

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0


def _signer(seed: bytes | None = None) -> CommandSigner:
    return CommandSigner(
        Secret(b64url_encode(seed)) if seed is not None else None, clock=lambda: NOW
    )


def _verify(signer: CommandSigner, payload: str, **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "public_key_b64": signer.public_key_b64(),
        "method": RPC_MOVE,
        "me": "caller-1",
        "room": "call-1",
        "now": NOW + 1,
    }
    args.update(kw)
    return verify_command(payload, **args)  # type: ignore[arg-type]


def test_a_signed_command_gives_its_body() -> None:
    signer = _signer()
    payload = signer.sign(RPC_MOVE, to="caller-1", room="call-1", body={"room": "xfer-1"})
    assert _verify(signer, payload) == {"room": "xfer-1"}
    room_wide = signer.sign(RPC_MOVE, to="*", room="call-1", body={"x": 1})
    assert _verify(signer, room_wide) == {"x": 1}


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"me": "caller-2"}, "another recipient"),
        ({"room": "call-2"}, "another room"),
        ({"method": RPC_OFFER}, "another method"),
        ({"now": NOW + 60 + 31}, "expired"),
        ({"public_key_b64": _signer().public_key_b64()}, "bad signature"),
    ],
)
def test_a_replayed_or_foreign_command_is_refused(kw: dict[str, object], why: str) -> None:
    signer = _signer()
    payload = signer.sign(RPC_MOVE, to="caller-1", room="call-1", body={"room": "xfer-1"})
    with pytest.raises(ValidationError, match=why):
        _verify(signer, payload, **kw)


def test_a_tampered_or_unsigned_command_is_refused() -> None:
    signer = _signer()
    payload = json.loads(signer.sign(RPC_MOVE, to="caller-1", room="call-1", body={"a": 1}))
    payload["cmd"] = payload["cmd"].replace('"a":1', '"a":2')
    with pytest.raises(ValidationError, match="bad signature"):
        _verify(signer, json.dumps(payload))
    unsigned = json.dumps({"method": RPC_MOVE, "to": "caller-1", "room": "call-1", "body": {}})
    for bad in ("", "not json", unsigned, json.dumps({"cmd": 1, "sig": "x"})):
        with pytest.raises(ValidationError):
            _verify(signer, bad)


def test_the_key_comes_from_its_setting_and_never_shows() -> None:
    seed = os.urandom(32)
    a, b = _signer(seed), _signer(seed)
    assert a.public_key_b64() == b.public_key_b64() != _signer().public_key_b64()
    payload = a.sign(RPC_MOVE, to="caller-1", room="call-1", body={})
    assert _verify(b, payload) == {}
    assert b64url_encode(seed) not in repr(a) + payload
    for bad in ("short", b64url_encode(os.urandom(31)), "%%%"):
        with pytest.raises(ConfigError):
            CommandSigner(Secret(bad))


def test_the_signing_key_is_a_secret_setting(tmp_path: Path) -> None:
    seed = b64url_encode(os.urandom(32))
    env = {"SOFTPHONE_HOME": str(tmp_path), "SOFTPHONE_COMMAND_SIGNING_KEY": seed}
    settings = load_settings(env=env)
    assert settings.command_signing_key == Secret(seed)
    assert seed not in repr(settings)
    profile = tmp_path / "profiles" / "default"
    profile.mkdir(parents=True)
    (profile / "settings.json").write_text(json.dumps({"command_signing_key": seed}))
    with pytest.raises(ConfigError, match="secret"):
        load_settings(env={"SOFTPHONE_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "admit",
    [
        "agent-b",
        ["agent b"],
        [1],
        [""],
        [f"agent-{i}" for i in range(5)],
        {"agent-b": True},
    ],
)
def test_a_standby_admitting_anything_but_a_few_identities_is_refused(admit: object) -> None:
    guard = CommandGuard(ServiceInfo("ws://127.0.0.1:7880", _signer().public_key_b64(), "lobby"))
    assert guard.admitted({}) == []
    assert guard.admitted({STANDBY_ADMIT: ["agent-b"]}) == ["agent-b"]
    with pytest.raises(rtc.RpcError, match=REFUSED):
        guard.admitted({STANDBY_ADMIT: admit})
