"""The ``softphone`` command line: version, help, bad flags, and the server mode."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from softphone import __version__
from softphone.media.session import RtcSession

pytestmark = pytest.mark.integration


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOFTPHONE_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "softphone", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_version_and_help(tmp_path: Path) -> None:
    out = _run("--version", home=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"softphone {__version__}"
    out = _run("--help", home=tmp_path)
    assert out.returncode == 0
    for flag in ("--profile", "--role", "--identity", "--room", "--url", "--backend"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--role", "boss"], "invalid choice"),
        (["--profile", "../x", "server"], "profile:"),
        (["--url", "ftp://nowhere", "server"], "livekit_url"),
    ],
)
def test_bad_flags_are_clear_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    out = _run(*args, home=tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


async def test_server_mode_prints_working_tokens_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "SOFTPHONE_HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "softphone",
        "server",
        "--room",
        "cli-room",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Press Ctrl-C"):
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line, "the server command ended early"
        lines.append(line.decode().strip())
    text = "\n".join(lines)
    url = re.search(r"ready at (ws://\S+)", text)
    token = re.search(r"caller token: (\S+)", text)
    assert url and token
    async with RtcSession(url=url.group(1), token=token.group(1)) as session:
        assert session.room_name == "cli-room" and session.identity == "caller"
    server_pids = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert server_pids
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    for pid in server_pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
