"""Log setup: JSON lines, request ids, masking of secrets, one private file per profile."""

from __future__ import annotations

import json
import logging
import stat
import sys
from pathlib import Path

import pytest

from softphone.config import Secret, load_settings
from softphone.logs import JsonFormatter, request_id, setup_logging

pytestmark = pytest.mark.integration

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYWxsZXItMSIsInZpZGVvIjp7fX0.c2lnbmF0dXJlLWJ5dGVz"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_each_profile_logs_json_lines_to_its_own_private_file(tmp_path: Path) -> None:
    root = logging.getLogger()
    level = root.level
    alice = load_settings({"profile": "alice", "home": str(tmp_path)}, env={})
    bob = load_settings({"profile": "bob", "home": str(tmp_path)}, env={})
    installed = setup_logging(alice)
    try:
        token = request_id.set("req-alice-1")
        try:
            logging.getLogger("softphone.test").info("joined", extra={"room": "call-1"})
        finally:
            request_id.reset(token)
        # Setting up again (another profile) replaces the handlers, it does not add more.
        installed = setup_logging(bob)
        logging.getLogger("softphone.test").warning("left")
    finally:
        for handler in installed:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
    alice_log = alice.logs_dir / "softphone.log"
    bob_log = bob.logs_dir / "softphone.log"
    assert alice_log != bob_log
    assert [(x["msg"], x.get("request_id"), x.get("room")) for x in _lines(alice_log)] == [
        ("joined", "req-alice-1", "call-1")
    ]
    assert [(x["msg"], x["level"]) for x in _lines(bob_log)] == [("left", "WARNING")]
    for settings, path in ((alice, alice_log), (bob, bob_log)):
        assert _mode(path) == 0o600
        assert _mode(settings.logs_dir) == 0o700


def test_secrets_are_masked_in_every_part_of_a_line() -> None:
    secret = "s3cr3t-" + "k" * 24
    api_key = "key-" + "a" * 28
    try:
        raise RuntimeError(f"upstream said: Authorization: Bearer {api_key} {JWT}")
    except RuntimeError:
        record = logging.LogRecord(
            "softphone.test", logging.ERROR, __file__, 1, "got %s", (JWT,), sys.exc_info()
        )
    record.__dict__.update(
        {
            "livekit_api_secret": Secret(secret),
            "token": JWT,
            "api_key": api_key,
            "detail": {"grant": JWT, "note": f"Bearer {api_key}"},
            "identity": "agent-a-1",
        }
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    for leak in (secret, api_key, JWT, JWT.split(".")[1]):
        assert leak not in line
    assert data["identity"] == "agent-a-1"  # what is not a secret stays
    assert data["token"] == data["api_key"] == data["livekit_api_secret"] == "[redacted]"
    assert data["msg"] == "got [redacted]"
    assert "RuntimeError" in str(data["exc"])
