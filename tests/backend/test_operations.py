"""Operating the backend: /metrics, /ready, JSON logs with request ids and no secrets.

Everything runs against the real backend under uvicorn, with real LiveKit,
real RTC parties and real HTTP clients.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from softphone.domain.transcript import TranscriptSegment
from softphone.infra.local_server import LocalLiveKitServer, ServerPorts, free_port
from softphone.infra.server_binary import ensure_server_binary
from softphone.server.token_minter import TokenMinter
from tests.backend.conftest import metrics, sample, until
from tests.transfer.backend_process import BackendProcess
from tests.transfer.conftest import TransferEnv, clients_env, open_call

pytestmark = pytest.mark.integration

LOBBY = "lobby-operations"


@pytest.fixture(scope="module")
async def backend(
    livekit_server: LocalLiveKitServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BackendProcess]:
    # DEBUG: the widest log there is must still hold no secret.
    async with BackendProcess(
        livekit_server=livekit_server,
        workdir=tmp_path_factory.mktemp("operations"),
        lobby=LOBBY,
        offer_timeout_s=5.0,
        extra_args=("--log-level", "DEBUG"),
    ) as backend:
        yield backend


@pytest.fixture(scope="module")
async def env(
    backend: BackendProcess, livekit_server: LocalLiveKitServer, minter: TokenMinter
) -> AsyncIterator[TransferEnv]:
    async with clients_env(backend, url=livekit_server.url, minter=minter) as env:
        yield env


@pytest.fixture
async def http(backend: BackendProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=backend.url, timeout=60) as client:
        yield client


def bearer(backend: BackendProcess, identity: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {backend.keys[identity]}"}


def log_lines(backend: BackendProcess) -> list[dict[str, object]]:
    """The backend's log, every line parsed as JSON (a line that is not fails the test)."""
    lines = backend.log_path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def test_metrics_are_for_supervisor_and_service_keys_only(
    backend: BackendProcess, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/metrics")).status_code == 401
    res = await http.get("/metrics", headers={"Authorization": "Bearer " + "x" * 32})
    assert res.status_code == 401
    for identity in ("agent-a-300", "caller-300"):
        res = await http.get("/metrics", headers=bearer(backend, identity))
        assert res.status_code == 403, res.text
        assert res.json()["code"] == "forbidden"
        assert "softphone_" not in res.text
    for identity in ("supervisor-1", "gateway-1"):
        res = await http.get("/metrics", headers=bearer(backend, identity))
        assert res.status_code == 200, res.text
        assert "# TYPE softphone_active_calls gauge" in res.text
        assert "process_resident_memory_bytes" in res.text
    # A made-up method does not become a label value (one time series each).
    assert (await http.request("BREW", "/v1/calls")).status_code == 405
    values = await metrics(http, backend.keys["supervisor-1"])
    methods = {dict(labels).get("method") for name, labels in values if "http" in name}
    assert "other" in methods and "BREW" not in methods


async def test_metrics_count_calls_and_transfers(
    backend: BackendProcess, env: TransferEnv, http: httpx.AsyncClient
) -> None:
    key = backend.keys["supervisor-1"]
    before = await metrics(http, key)
    outcomes = "softphone_transfer_outcomes_total"
    offer = "softphone_transfer_offer_to_answer_seconds_count"
    audio = "softphone_transfer_complete_to_audio_seconds_count"
    async with open_call(env, prefix="metrics") as call:
        during = await metrics(http, key)
        assert sample(during, "softphone_active_calls") >= 1
        # B declines the first transfer: the caller returns to A.
        ticket = await call.a_call.transfer(
            caller=call.caller.identity, to_agent=call.b.identity, mode="cold"
        )
        offering = await metrics(http, key)
        assert sample(offering, "softphone_transfers", phase="offering") >= 1
        await call.b_lobby.decline((await call.next_offer()).transfer_id, "busy")
        snap = await call.a_service.wait_for_phase(ticket.transfer_id, ["returned"])
        assert snap.reason is not None and snap.reason.code == "declined"
        # The second one B takes, and the caller moves to B.
        ticket = await call.a_call.transfer(
            caller=call.caller.identity, to_agent=call.b.identity, mode="cold"
        )
        await call.b_lobby.accept((await call.next_offer()).transfer_id)
        snap = await call.a_service.wait_for_phase(
            ticket.transfer_id, ["completed", "returned"], timeout_s=30
        )
        assert snap.phase == "completed", snap
        after = await metrics(http, key)
    assert sample(after, outcomes, outcome="returned", reason="declined") == (
        sample(before, outcomes, outcome="returned", reason="declined") + 1
    )
    assert sample(after, outcomes, outcome="completed", reason="none") == (
        sample(before, outcomes, outcome="completed", reason="none") + 1
    )
    assert sample(after, offer) == sample(before, offer) + 1
    assert sample(after, audio) == sample(before, audio) + 1
    assert sample(after, "softphone_transfer_complete_to_audio_seconds_sum") > sample(
        before, "softphone_transfer_complete_to_audio_seconds_sum"
    )
    for phase in ("preparing", "offering", "consulting", "completing"):
        assert sample(after, "softphone_transfers", phase=phase) == 0
    assert sample(after, "softphone_active_calls") >= 1
    # Requests are timed by route template, never by id.
    routes = {
        dict(labels).get("route") for name, labels in after if name.startswith("softphone_http")
    }
    assert "/v1/transfers/{transfer_id}" in routes
    assert not any(r and ticket.transfer_id in r for r in routes)


async def test_request_ids_json_logs_and_no_secrets(
    backend: BackendProcess, livekit_server: LocalLiveKitServer, http: httpx.AsyncClient
) -> None:
    caller, gateway = "caller-301", "gateway-2"
    # A sane id is taken and answered; the orchestrator's lines carry it too.
    res = await http.post(
        "/v1/calls",
        json={"caller": caller, "agent": "agent-a-301"},
        headers={**bearer(backend, gateway), "X-Request-ID": "ops-call-301"},
    )
    assert res.status_code == 201, res.text
    assert res.headers["X-Request-ID"] == "ops-call-301"
    ticket = res.json()
    call_token = ticket["token"]["token"]
    res = await http.post(
        "/v1/tokens", json={"room": ticket["call"]["room"]}, headers=bearer(backend, caller)
    )
    assert res.status_code == 200, res.text
    caller_token = res.json()["token"]
    # An id that is not sane is replaced by a new one.
    for offered in ("has spaces in it", "x" * 65, "<script>", "ok;drop"):
        res = await http.get("/health", headers={"X-Request-ID": offered})
        assert res.headers["X-Request-ID"] != offered
        assert len(res.headers["X-Request-ID"]) == 32
    # Keys and tokens that get refused are not logged either.
    stranger = secrets.token_urlsafe(24)
    res = await http.get("/v1/calls", headers={"Authorization": f"Bearer {stranger}"})
    assert res.status_code == 401 and res.headers["X-Request-ID"]
    res = await http.post(
        "/v1/tokens",
        json={"room": "call-" + "0" * 32},
        headers={**bearer(backend, caller), "X-Request-ID": "ops-token-404"},
    )
    assert res.status_code == 404
    res = await http.post(
        "/v1/transfers",
        content=b"{" * 100,
        headers={**bearer(backend, "agent-a-301"), "Content-Type": "application/json"},
    )
    assert res.status_code == 400 and res.headers["X-Request-ID"]

    async def logged() -> bool:
        ids = {line.get("request_id") for line in log_lines(backend)}
        return {"ops-call-301", "ops-token-404"} <= ids

    await until(logged)
    lines = log_lines(backend)
    mine = [line for line in lines if line.get("request_id") == "ops-call-301"]
    assert {"request", "call created"} <= {str(line["msg"]) for line in mine}
    access = next(line for line in mine if line["msg"] == "request")
    assert (access["route"], access["status"]) == ("/v1/calls", 201)
    text = backend.log_path.read_text(encoding="utf-8")
    for identity in (caller, gateway, "agent-a-301", "supervisor-1"):
        assert backend.keys[identity] not in text
    for secret in (stranger, call_token, caller_token, livekit_server.api_secret.get()):
        assert secret not in text


async def test_ready_follows_livekit(tmp_path: Path) -> None:
    ports = ServerPorts(
        signal=free_port(), rtc_tcp=free_port(), rtc_udp=free_port(socket.SOCK_DGRAM)
    )
    lk = LocalLiveKitServer(
        binary=ensure_server_binary(), log_path=tmp_path / "livekit.log", ports=ports
    )
    async with (
        lk,
        BackendProcess(
            livekit_server=lk, workdir=tmp_path, lobby="lobby-ready", offer_timeout_s=3.0
        ) as backend,
        httpx.AsyncClient(base_url=backend.url, timeout=30) as http,
    ):

        async def state(status: int) -> bool:
            res = await http.get("/ready")
            return res.status_code == status

        await until(lambda: state(200))
        res = await http.get("/ready")
        assert res.json() == {"status": "ready", "checks": {"livekit": "ok", "redis": "ok"}}
        await lk.aclose()
        await until(lambda: state(503))
        res = await http.get("/ready")
        body = res.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["livekit"] in ("failed", "timeout")
        for leak in (lk.api_secret.get(), lk.api_key, str(ports.signal)):
            assert leak not in res.text
        # Liveness is another question: the process still answers.
        assert (await http.get("/health")).status_code == 200
        await lk.start()
        await until(lambda: state(200))


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_a_stopped_backend_stops_its_summary_worker(
    livekit_server: LocalLiveKitServer, minter: TokenMinter, tmp_path: Path
) -> None:
    """SIGTERM: uvicorn shuts down, then raises the signal again, so no exit hook
    runs; the lifespan stops the NER worker itself (before, the resource
    tracker reported "5 leaked semaphore objects" at every stop)."""
    backend = BackendProcess(
        livekit_server=livekit_server, workdir=tmp_path, lobby="lobby-stop", offer_timeout_s=5.0
    )
    async with backend:
        assert backend.pid is not None
        pid = backend.pid
        async with (
            clients_env(backend, url=livekit_server.url, minter=minter) as env,
            open_call(env, prefix="stop") as call,
        ):
            await call.a_call.transfer(
                caller=call.caller.identity,
                to_agent=call.b.identity,
                transcript=(
                    TranscriptSegment(call.caller.identity, 0.0, 3.0, "My order 12345 broke."),
                    TranscriptSegment(call.a.identity, 3.0, 6.0, "I will get you to returns."),
                ),
            )
            offer = await call.next_offer(timeout_s=60)
            assert offer.summary is not None
        workers = [c for c in _children(pid) if b"spawn_main" in _cmdline(c)]
        assert workers, "the summary came from the NER worker process"
    # Reaped once stopped (an orphan would linger until init reaps it).
    deadline = time.monotonic() + 5.0
    while [w for w in workers if Path(f"/proc/{w}").exists()] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    log = backend.log_path.read_text(encoding="utf-8")
    assert "leaked semaphore" not in log, log[-2000:]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
