"""The pure parts of the backend's limits and readiness, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from softphone.backend.readiness import Readiness
from softphone.backend.speech_limits import KeyLimiter, SpeechLimits, SpeechRefused
from softphone.errors import ConfigError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: KeyLimiter, key: str) -> SpeechRefused:
    with pytest.raises(SpeechRefused) as info:
        limiter.acquire(key, busy_retry_after_s=7.2)
    return info.value


def test_rate_is_a_bucket_of_a_minutes_worth_that_refills() -> None:
    clock = Clock()
    limiter = KeyLimiter(concurrency=10, per_minute=6, clock=clock)
    for _ in range(6):
        limiter.acquire("agent-a")
        limiter.release("agent-a")
    err = refused(limiter, "agent-a")
    assert (err.status, err.reason, err.code) == (429, "rate", "rate_limited")
    assert err.retry_after_s == 10  # one request's worth refills in 60/6 s
    limiter.acquire("agent-b")  # another key has its own bucket
    clock.now += 9.0
    assert refused(limiter, "agent-a").retry_after_s == 1
    clock.now += 1.0
    limiter.acquire("agent-a")


def test_concurrency_per_key_does_not_spend_the_rate() -> None:
    clock = Clock()
    limiter = KeyLimiter(concurrency=1, per_minute=2, clock=clock)
    limiter.acquire("agent-a")
    for _ in range(5):
        err = refused(limiter, "agent-a")
        assert (err.status, err.reason, err.retry_after_s) == (429, "concurrency", 8)
    assert limiter.active("agent-a") == 1
    limiter.release("agent-a")
    limiter.release("agent-a")  # a second release changes nothing
    assert limiter.active("agent-a") == 0
    limiter.acquire("agent-a")  # the refusals spent no token: the second is still there
    limiter.release("agent-a")
    assert refused(limiter, "agent-a").reason == "rate"


@pytest.mark.parametrize(
    "field",
    [
        {"workers": 0},
        {"queue": -1},
        {"key_concurrency": 0},
        {"key_rate_per_min": 0.0},
        {"key_rate_per_min": float("nan")},
        {"upload_timeout_s": 0.0},
        {"job_timeout_s": float("inf")},
    ],
)
def test_limits_out_of_range_name_their_flag(field: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="--speech-"):
        SpeechLimits(**field)  # type: ignore[arg-type]


async def test_readiness_runs_checks_once_for_concurrent_probes_and_bounds_them() -> None:
    clock = Clock()
    calls = {"db": 0, "slow": 0, "bad": 0}
    gate = asyncio.Event()

    async def db() -> None:
        calls["db"] += 1
        await gate.wait()

    async def slow() -> None:
        calls["slow"] += 1
        await asyncio.sleep(3600)

    async def bad() -> None:
        calls["bad"] += 1
        raise ConnectionRefusedError("127.0.0.1:6379 password=hunter2")

    ready = Readiness(timeout_s=0.2, cache_s=5.0, clock=clock)
    ready.add("db", db)
    with pytest.raises(ConfigError):
        ready.add("db", db)
    with pytest.raises(ConfigError):
        ready.add("Bad Name", db)
    probes = [asyncio.create_task(ready.check()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*probes)
    assert results == [{"db": "ok"}] * 5
    assert calls["db"] == 1
    assert Readiness.ready(results[0])
    ready.add("slow", slow)
    ready.add("bad", bad)
    states = await ready.check()
    assert states == {"db": "ok", "slow": "timeout", "bad": "failed"}
    assert not Readiness.ready(states)
    await ready.check()  # within cache_s: not run again
    assert calls == {"db": 2, "slow": 1, "bad": 1}
    clock.now += 5.0
    await ready.check()
    assert calls == {"db": 3, "slow": 2, "bad": 2}
