"""Files at rest are the user's only: profile directories 0700, files 0600.

Each test runs under a permissive umask (0o022, the common default), so a
file or directory created with the default mode would be readable by other
users, and starts from what an older version left behind (a 0755 directory,
a 0644 file), which must be tightened too.
"""

from __future__ import annotations

import os
import stat
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from softphone.config import Settings, load_settings, save_settings
from softphone.infra.local_server import LocalLiveKitServer
from softphone.infra.server_binary import ensure_server_binary
from softphone.media.recording import CallRecorder
from softphone.store.history import HistoryStore

pytestmark = pytest.mark.integration

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """Run the test with umask 0o022, whatever the process had."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of a fresh profile under ``tmp_path``."""
    return load_settings({"profile": "alice"}, env={"SOFTPHONE_HOME": str(tmp_path / "home")})


def test_profile_directories_and_settings_file_are_private(settings: Settings) -> None:
    # An older version left the profile directory world-readable.
    settings.profile_dir.mkdir(parents=True, mode=0o755)
    os.chmod(settings.profile_dir, 0o755)

    settings.ensure_dirs()
    for d in (settings.profile_dir, settings.logs_dir, settings.recordings_path):
        assert mode(d) == PRIVATE_DIR, d

    save_settings(settings, {"theme": "dark"})
    settings_files = [p for p in settings.profile_dir.iterdir() if p.is_file()]
    assert settings_files  # the settings file was written
    for p in settings_files:
        assert mode(p) == PRIVATE_FILE, p


async def test_history_database_and_its_sqlite_files_are_private(settings: Settings) -> None:
    settings.ensure_dirs()
    path = settings.history_path
    async with HistoryStore(path) as store:
        await store.start_call("room-1")
        # While open in WAL mode, SQLite keeps -wal and -shm beside the database.
        sidecars = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        for p in (path, *sidecars):
            assert p.exists(), p
            assert mode(p) == PRIVATE_FILE, p
    assert len(await _calls(path)) == 1


async def test_history_files_left_readable_by_an_older_version_are_tightened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite3"
    async with HistoryStore(path) as store:
        await store.start_call("room-1")
    files = [p for p in tmp_path.iterdir() if p.name.startswith(path.name)]
    for p in files:
        os.chmod(p, 0o644)
    async with HistoryStore(path) as store:
        await store.start_call("room-2")
        for p in tmp_path.iterdir():
            if p.name.startswith(path.name):
                assert mode(p) == PRIVATE_FILE, p


async def test_recordings_are_private(settings: Settings) -> None:
    # No directory exists yet: the recorder creates the recordings root too.
    root = settings.recordings_path
    async with (
        HistoryStore(settings.history_path) as store,
        CallRecorder(directory=root, call_id="call-1", history=store) as rec,
    ):
        path = await rec.open_track("caller-1", align=False)
        for _ in range(10):  # one second of 100 ms frames
            rec.feed("caller-1", np.full(4800, 1000, np.int16))
        await rec.flush()
    with wave.open(str(path), "rb") as w:
        assert w.getnframes() == 48000  # the audio really went to this file
    assert path.parent == root / "call-1"
    assert mode(root) == PRIVATE_DIR
    assert mode(path.parent) == PRIVATE_DIR
    assert mode(path) == PRIVATE_FILE

    # Reopening a file an older version left readable tightens it.
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)
    async with CallRecorder(directory=root, call_id="call-1") as rec:
        await rec.open_track("caller-1", align=False)
    assert mode(path.parent) == PRIVATE_DIR
    assert mode(path) == PRIVATE_FILE


async def test_local_server_log_is_private(settings: Settings) -> None:
    settings.ensure_dirs()
    log_path = settings.logs_dir / "livekit-server.log"
    log_path.write_text("from an older version\n")
    os.chmod(log_path, 0o644)
    async with LocalLiveKitServer(binary=ensure_server_binary(), log_path=log_path):
        pass
    assert "from an older version" in log_path.read_text()  # appended, not replaced
    assert log_path.stat().st_size > len("from an older version\n")  # the server wrote to it
    assert mode(log_path) == PRIVATE_FILE


async def _calls(path: Path) -> list[str]:
    async with HistoryStore(path) as store:
        return [c.id for c in await store.list_calls()]


def test_app_log_is_private_and_rotates(settings: Settings) -> None:
    import logging

    from softphone.app import PrivateRotatingLog

    settings.ensure_dirs()
    path = settings.logs_dir / "softphone.log"
    handler = PrivateRotatingLog(path)
    try:
        handler.emit(logging.makeLogRecord({"msg": "first"}))
        assert mode(path) == 0o600
        handler.doRollover()  # the new file after a rotation is private too
        handler.emit(logging.makeLogRecord({"msg": "second"}))
        assert mode(path) == 0o600
        assert mode(path.with_name("softphone.log.1")) == 0o600
    finally:
        handler.close()
