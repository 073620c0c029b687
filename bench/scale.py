"""Scaled-out service numbers: the real backend replicas on one Redis, under load and failures.

Usage: ``./dev bench scale [--json] [--only SECTION,...] [--runs N]``

Every section starts its own real parts (LiveKit server, Redis, backend
replicas under uvicorn as ``tests/transfer/backend_process.py`` runs them,
RTC clients playing tones) and is bounded in time: a section that fails or
overruns is null in the output, with the reason on stderr. Sections (ms
unless named):

The replicas are deployed as the README says: LiveKit's webhooks reach
each of them, and rooms are polled only every 2 s as a safety net.

- ``concurrent``: ``[{n, replicas, p50_ms, p95_ms, failures}]``, N (25)
  warm transfers at once, make-before-break, with one replica and then two
  (A's and B's apps asking different replicas first); from A calling
  ``complete()`` to B hearing the caller (``bench/_scale_concurrent.py``).
- ``failover_ms``: ``{p50, p95}``, two replicas; a warm transfer started
  through replica 1 (which drives it and holds its lease) is consulting when
  replica 1 is killed with SIGKILL; measured from the kill to the caller
  hearing a human again (A's voice, or B's). A's app
  (:class:`~softphone.client.agent_call.AgentCall`) lists both replicas.
  The surviving replica sees the dead one gone (nobody listens on its
  Redis request channel) within two looks 0.25 s apart and takes the
  transfer over (returning the caller to A) without waiting for its lease
  (``SOFTPHONE_LEASE_TTL_S``, default 10 s) to lapse; A's app would return
  to the caller by itself after 3 s without an answer. Replica 1 is started
  again (same port) between runs. A run whose caller hears nobody within
  ``FAILOVER_GIVE_UP_S`` counts at that bound.
- ``livekit_restart_gap_ms``: ``{p50, p95}``, from a killed LiveKit server
  being ready again to audio flowing both ways (``bench/livekit_restart.py``).
- ``backend_cpu_ms_per_transfer``: CPU time (user + system, from
  ``/proc/<pid>/stat``) of the two replica processes and their children
  across K sequential calls, each created, transferred once (warm, A to B)
  and ended by the apps, divided by K; idle work of the replicas in that
  time (lease renewal, polling) included.
- ``speech_under_load``: ``{tokens_p95_ms, speech_p95_ms, rejected}`` while
  50 speech uploads arrive at once (``bench/speech_load.py``).
- ``network``: ``{rtt_added_ms, caller_gap_ms, naive_caller_gap_ms,
  loss5_failures, loss10_failures, blackout2s_failures}`` (``bench/network.py``).

With ``--json`` one JSON object with exactly those six keys is printed;
details (lost runs, per-replica CPU, how each failover ended, how long each
section took) go to stderr. Without it, a readable table.

Each section runs in a child process of its own (``--section NAME``, with a
private ``TMPDIR``), killed with everything under it once over its time
limit: a section stuck in a call no timeout can interrupt (a deadlocked
fork, say) cannot hang the bench. The deployments (LiveKit, Redis,
replicas) are run by a host process holding no RTC client
(``bench/_scale_deployment.py``), which kills, restarts and measures the
replicas on request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._scale_concurrent import concurrent_row
from bench._scale_deployment import HostedDeployment, hosted_deployment
from bench.livekit_restart import livekit_restart_gap
from bench.speech_load import speech_under_load
from bench.transfer import A_HZ, B_HZ, Ears, Onset, _nan_to_none, pct
from softphone.client.remote_service import RemoteTransferService
from softphone.client.transfer_watch import LOST_AFTER_S
from softphone.config import Secret, Settings
from softphone.domain.transfer import TransferSnapshot
from softphone.media.hold import HOLD_FREQ_HZ
from softphone.protocol import TransferService
from softphone.server.token_minter import TokenMinter
from tests.transfer.backend_process import IDENTITIES
from tests.transfer.conftest import Call, TransferEnv, open_call

SECTIONS = (
    "concurrent",
    "failover_ms",
    "livekit_restart_gap_ms",
    "backend_cpu_ms_per_transfer",
    "speech_under_load",
    "network",
)
# Short names accepted by --only.
ALIASES = {
    "failover": "failover_ms",
    "livekit_restart": "livekit_restart_gap_ms",
    "cpu": "backend_cpu_ms_per_transfer",
    "speech": "speech_under_load",
}
LOBBY = "lobby-scale"
DEFAULT_LEASE_TTL_S = Settings.lease_ttl_s  # the dataclass default
# A failover run whose caller hears nobody by then is lost (counted at this bound).
FAILOVER_GIVE_UP_S = 30.0
# The caller on hold this long before the kill: the hold tone is heard, nobody else.
SETTLE_S = 1.0
# Seconds to wait for each step of setting a call up on a loaded machine.
STEP_TIMEOUT_S = 30.0
# Lines of the surviving replica's log shown after a lost failover run.
LOG_TAIL = 20
# Idle replicas measured this long before the CPU transfers (for the table).
IDLE_S = 5.0

# Time limits, so that a hung section cannot hang the bench.
ROW_LIMIT_S = 900.0
FAILOVER_LIMIT_PER_RUN_S = 150.0
RESTART_LIMIT_PER_RUN_S = 60.0
CPU_LIMIT_PER_TRANSFER_S = 90.0
SPEECH_LIMIT_S = 1500.0
NETWORK_LIMIT_PER_TRANSFER_S = 5 * 90.0
SETUP_LIMIT_S = 180.0


def note(text: str) -> None:
    """A detail for the reader, on stderr (stdout carries only the result)."""
    print(text, file=sys.stderr, flush=True)


def two(values: list[float]) -> dict[str, float | None]:
    """``{p50, p95}`` of ``values`` (nearest rank), null without any."""
    if not values:
        return {"p50": None, "p95": None}
    return {"p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1)}


# ---- the apps of a deployment ------------------------------------------------------------
@contextlib.asynccontextmanager
async def apps_env(dep: HostedDeployment) -> AsyncIterator[TransferEnv]:
    """The apps' view of a deployment: one HTTP client per identity, each listing every replica.

    A's app asks replica 1 first (so replica 1 drives A's transfers);
    everyone else asks the last replica first.
    """
    urls, keys = dep.urls, dep.keys
    clients: dict[str, RemoteTransferService] = {}

    def service_for(identity: str) -> TransferService:
        if identity not in clients:
            order = urls if identity.startswith("agent-a-") else urls[::-1]
            clients[identity] = RemoteTransferService(
                base_url=order, api_key=Secret(keys[identity]), timeout_s=STEP_TIMEOUT_S
            )
        return clients[identity]

    minter = TokenMinter(api_key=dep.api_key, api_secret=dep.api_secret)
    try:
        yield TransferEnv(
            kind="backend",
            url=dep.livekit_url,
            lobby=LOBBY,
            minter=minter,
            service_for=service_for,
        )
    finally:
        for client in clients.values():
            await client.aclose()


async def consulting(env: TransferEnv, call: Call) -> str:
    """Start a warm transfer of ``call`` from A to B and bring it to consulting; its id."""
    ticket = await call.a_call.transfer(caller=call.caller.identity, to_agent=call.b.identity)
    offer = await call.next_offer(timeout_s=STEP_TIMEOUT_S)
    await call.b_lobby.accept(offer.transfer_id)
    await call.a_service.wait_for_phase(
        ticket.transfer_id, ["consulting"], timeout_s=STEP_TIMEOUT_S
    )
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while call.a_call.consult is None:
        if time.monotonic() > deadline:
            raise TimeoutError("A's app did not join the consult")
        await asyncio.sleep(0.05)
    return ticket.transfer_id


# ---- sections -------------------------------------------------------------------------------
@dataclasses.dataclass
class Options:
    """What to run, and how much of it."""

    n: int = 25
    runs: int = 5
    cpu_transfers: int = 10
    network_transfers: int = 10
    uploads: int = 50
    lease_ttl_s: float | None = None


async def concurrent_section(opts: Options) -> list[dict[str, Any]]:
    """The ``concurrent`` rows: N transfers at once with one replica, then two."""
    rows = []
    for replicas in (1, 2):
        started = time.monotonic()
        try:
            async with hosted_deployment(
                replicas, lease_ttl_s=opts.lease_ttl_s, lobby=LOBBY
            ) as dep:
                row = await asyncio.wait_for(
                    concurrent_row(dep.urls, dep.keys, n=opts.n), ROW_LIMIT_S
                )
        except Exception as exc:  # this row is lost (every call failed); the next still runs
            why = f"over {ROW_LIMIT_S:.0f} s" if isinstance(exc, TimeoutError) else repr(exc)
            note(f"concurrent n={opts.n} replicas={replicas}: stopped ({why})")
            row = {"n": opts.n, "replicas": replicas, "p50_ms": None, "p95_ms": None}
            row["failures"] = opts.n
        note(f"concurrent n={opts.n} replicas={replicas}: {time.monotonic() - started:.0f} s")
        rows.append(row)
    return rows


@dataclasses.dataclass
class FailoverRun:
    """One kill of the driving replica."""

    ms: float | None
    how: str = ""
    error: str = ""
    killed: bool = False


async def failover_once(dep: HostedDeployment, env: TransferEnv) -> FailoverRun:
    """Kill replica 1 while the transfer it drives is consulting; time until a human is heard."""
    stage = "call setup"
    killed = False
    try:
        async with open_call(env, prefix="failover") as call:
            # Which came first: the service's "returned", or A's app giving up on it.
            marks: dict[str, float] = {}

            def changed(snap: TransferSnapshot) -> None:
                if snap.phase == "returned":
                    marks.setdefault("returned", time.monotonic())

            call.a_call.on("transfer_lost", lambda _: marks.setdefault("lost", time.monotonic()))
            call.a_call.on("transfer_changed", changed)
            stage = "transfer to consulting"
            await consulting(env, call)
            # The caller's ears in R1: Ears for the quiet check, then an
            # Onset per voice (reading stops at the first hit: cheap while waiting).
            onsets = [Onset(call.caller_session, f) for f in (A_HZ, B_HZ)]
            ears = Ears(call.caller_session)
            try:
                quiet_from = time.monotonic()
                await asyncio.sleep(SETTLE_S)
                if ears.first(A_HZ, quiet_from) or ears.first(B_HZ, quiet_from):
                    return FailoverRun(None, error="the caller heard a human before the kill")
                if ears.first(HOLD_FREQ_HZ, quiet_from) is None:
                    note("failover: no hold tone heard before the kill")
                await ears.aclose()
                stage = "after the kill"
                for onset in onsets:
                    onset.after = time.monotonic()  # nothing heard from here on is missed
                t0 = await dep.kill(0)
                killed = True
                done, _ = await asyncio.wait(
                    [o.found for o in onsets],
                    timeout=FAILOVER_GIVE_UP_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                heard = min(f.result() for f in done) if done else None
            finally:
                await ears.aclose()
                for onset in onsets:
                    await onset.aclose()
            if heard is None:
                why = _why_silent(call, marks, t0, onsets[0].read)
                return FailoverRun(None, error=why, killed=True)
            first = min(marks, key=marks.__getitem__) if marks else ""
            how = {
                "returned": "the surviving replica returned the caller to A",
                "lost": "A's app gave up on the service and took the caller back",
            }.get(first, "the caller heard a human")
            return FailoverRun((heard - t0) * 1000, how, killed=True)
    except Exception as exc:  # counted, with its stage
        return FailoverRun(None, error=f"{stage}: {exc!r}", killed=killed)


def _why_silent(
    call: Call, marks: dict[str, float], t0: float, read: dict[str, list[float]]
) -> str:
    """What A's app and the caller's session show after a run with nobody heard (for stderr).

    Both ends' view of A's tracks (the SDK's muted and subscribed flags), and
    what the caller's ears read on each track after the kill (frames, peak
    level of A's tone, RMS), tell a mute the server kept from a silent source.
    """
    last = call.a_call.last
    session = call.a_call.session
    caller_room = call.caller_session.room
    a_remote = caller_room.remote_participants.get(call.a.identity)
    at_caller = [
        f"{p.name} muted={p.muted} subscribed={p.subscribed}"
        for p in (a_remote.track_publications.values() if a_remote else ())
    ]
    at_a = [
        f"{p.name} muted={p.muted}"
        for p in session.room.local_participant.track_publications.values()
    ]
    frames = "; ".join(
        f"{k}: {n:.0f} frames, tone {lv:.0f}, rms {rms:.0f}" for k, (n, lv, rms) in read.items()
    )
    seen = ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in marks.items()) or "nothing"
    return (
        f"the caller heard nobody; A's app saw {seen}; last phase"
        f" {last.phase if last else None} ({last.reason if last else None});"
        f" A's mic muted {session.muted}, held {session.held};"
        f" the caller may listen {call.caller_session.may_listen};"
        f" A's tone player running {call.a.tone.running};"
        f" A's publications at A {at_a}, at the caller {at_caller}; the caller read {frames}"
    )


async def failover_section(opts: Options) -> dict[str, float | None]:
    """``failover_ms``: ``opts.runs`` kills of the driving replica (setup failures tried again)."""
    measured: list[float] = []
    lost = 0
    async with (
        hosted_deployment(2, lease_ttl_s=opts.lease_ttl_s, lobby=LOBBY) as dep,
        apps_env(dep) as env,
    ):
        note(
            f"failover: lease TTL {opts.lease_ttl_s or DEFAULT_LEASE_TTL_S:g} s"
            " (the lower bound of the takeover);"
            f" A's app gives up on a silent service after {LOST_AFTER_S:g} s"
        )
        attempts = 0
        while len(measured) + lost < opts.runs and attempts < 2 * opts.runs:
            attempts += 1
            run = await failover_once(dep, env)
            if run.ms is not None:
                measured.append(run.ms)
                note(f"failover run {attempts}: {run.ms:.0f} ms ({run.how})")
            elif run.killed:
                lost += 1
                note(
                    f"failover run {attempts}: lost ({run.error}); counted as {FAILOVER_GIVE_UP_S:g} s"
                )
                # The survivor's last words (its logs mask secrets), for the reader.
                tail = await dep.log_tail(1, LOG_TAIL)
                note("surviving replica's log, last lines:\n" + "\n".join(tail))
            else:
                note(f"failover run {attempts}: not measured ({run.error})")
            for i, running in enumerate(await dep.running()):
                if not running:
                    await dep.restart(i)
    return two(measured + [FAILOVER_GIVE_UP_S * 1000] * lost)


async def transfer_call(env: TransferEnv) -> bool:
    """One call from its creation to its end, with one warm transfer A to B; completed?"""
    async with open_call(env, prefix="cpu") as call:
        transfer_id = await consulting(env, call)
        snap = await call.a_service.complete(transfer_id, agent=call.a.identity)
        caller = env.service_for(call.caller.identity)
        # The caller hangs up: its app ends the call it placed.
        for info in await caller.list_calls(identity=call.caller.identity, role="caller"):
            await caller.end_call(info.call_id, identity=call.caller.identity)
        return snap.phase == "completed"


async def cpu_section(opts: Options) -> float | None:
    """``backend_cpu_ms_per_transfer``: replica CPU across K sequential calls, divided by K."""
    async with (
        hosted_deployment(2, lease_ttl_s=opts.lease_ttl_s, lobby=LOBBY) as dep,
        apps_env(dep) as env,
    ):
        await transfer_call(env)  # warm: first requests, imports, connections
        idle = await dep.cpu_s()
        await asyncio.sleep(IDLE_S)
        after_idle = await dep.cpu_s()
        idle_s = sum(after_idle.values()) - sum(idle.values())
        note(f"cpu: idle replicas {idle_s * 1000 / IDLE_S:.1f} ms/s in all")
        before = await dep.cpu_s()
        started = time.monotonic()
        completed = 0
        for i in range(opts.cpu_transfers):
            try:
                ok = await transfer_call(env)
            except Exception as exc:  # counted, with its reason
                ok = False
                note(f"cpu transfer {i + 1} failed: {exc!r}")
            completed += ok
        after = await dep.cpu_s()
        wall = time.monotonic() - started
    used = {url: (after[url] - before[url]) * 1000 for url in before}
    note(
        f"cpu: {completed}/{opts.cpu_transfers} completed in {wall:.0f} s; per replica "
        + ", ".join(f"{v / max(completed, 1):.0f} ms" for v in used.values())
        + " per transfer"
    )
    if not completed:
        return None
    return round(sum(used.values()) / completed, 1)


async def restart_section(opts: Options) -> dict[str, float | None]:
    """``livekit_restart_gap_ms`` from ``bench/livekit_restart.py``."""
    out = await livekit_restart_gap(opts.runs)
    note(f"livekit restart: max {out['max']} ms, {out['lost']} of {out['runs']} runs lost")
    return {"p50": out["p50"], "p95": out["p95"]}


async def speech_section(opts: Options) -> dict[str, Any]:
    """``speech_under_load`` from ``bench/speech_load.py``."""
    out = await speech_under_load(uploads=opts.uploads)
    details = {k: v for k, v in out.items() if k not in ("tokens_p95_ms", "speech_p95_ms")}
    note(f"speech under load: {json.dumps(_nan_to_none(details))}")
    return {k: out[k] for k in ("tokens_p95_ms", "speech_p95_ms", "rejected")}


async def network_section(opts: Options) -> dict[str, Any]:
    """``network`` from ``bench/network.py`` (imported only now: a failure there is this section's)."""
    from bench.network import network_bench

    out: dict[str, Any] = await network_bench(transfers=opts.network_transfers)
    return out


def limits(opts: Options) -> dict[str, float]:
    """Each section's time limit, in seconds."""
    return {
        "concurrent": 2 * (ROW_LIMIT_S + SETUP_LIMIT_S),
        "failover_ms": SETUP_LIMIT_S + 2 * opts.runs * FAILOVER_LIMIT_PER_RUN_S,
        "livekit_restart_gap_ms": SETUP_LIMIT_S + opts.runs * RESTART_LIMIT_PER_RUN_S,
        "backend_cpu_ms_per_transfer": SETUP_LIMIT_S
        + (opts.cpu_transfers + 1) * CPU_LIMIT_PER_TRANSFER_S,
        "speech_under_load": SPEECH_LIMIT_S,
        "network": SETUP_LIMIT_S + opts.network_transfers * NETWORK_LIMIT_PER_TRANSFER_S,
    }


RUNNERS: dict[str, Callable[[Options], Coroutine[Any, Any, Any]]] = {
    "concurrent": concurrent_section,
    "failover_ms": failover_section,
    "livekit_restart_gap_ms": restart_section,
    "backend_cpu_ms_per_transfer": cpu_section,
    "speech_under_load": speech_section,
    "network": network_section,
}


def section_args(opts: Options) -> list[str]:
    """The command-line options that give a section child ``opts``."""
    args = [
        f"--n={opts.n}",
        f"--runs={opts.runs}",
        f"--cpu-transfers={opts.cpu_transfers}",
        f"--network-transfers={opts.network_transfers}",
        f"--uploads={opts.uploads}",
    ]
    if opts.lease_ttl_s is not None:
        args.append(f"--lease-ttl={opts.lease_ttl_s}")
    return args


async def run_section(name: str, opts: Options, limit_s: float) -> Any:
    """Run one section in a child process; its result, or None (failed or over ``limit_s``).

    The child has a private ``TMPDIR`` (removed afterwards) and a process
    group of its own, killed whole at the limit; the servers under it die
    with their parent (``PR_SET_PDEATHSIG``).
    """
    with tempfile.TemporaryDirectory(prefix="bench-scale-", ignore_cleanup_errors=True) as tmp:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            f"--section={name}",
            *section_args(opts),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "TMPDIR": tmp},
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            note(f"{name}: stopped after its limit of {limit_s:.0f} s; reported as null")
            return None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    results = [line for line in out.decode().splitlines() if line.startswith('{"result"')]
    if proc.returncode != 0 or not results:
        note(f"{name}: failed (exit status {proc.returncode}); reported as null")
        return None
    return json.loads(results[-1])["result"]


async def run(sections: list[str], opts: Options) -> dict[str, Any]:
    """Run ``sections`` one after the other; every key of SECTIONS, null where not run or failed."""
    out: dict[str, Any] = dict.fromkeys(SECTIONS)
    limit = limits(opts)
    for name in sections:
        started = time.monotonic()
        out[name] = await run_section(name, opts, limit[name])
        note(f"{name}: {time.monotonic() - started:.0f} s")
    return out


def section_main(name: str, opts: Options) -> int:
    """In a section child: run section ``name``, print ``{"result": ...}``; the exit status."""
    try:
        result: Any = asyncio.run(RUNNERS[name](opts))
    except Exception as exc:  # the parent reports the section as null; the reason goes here
        note(f"{name}: failed: {type(exc).__name__}: {exc}")
        return 1
    print(json.dumps({"result": _nan_to_none(result)}, allow_nan=False))
    return 0


# ---- command line ---------------------------------------------------------------------------
def _sections(text: str) -> list[str]:
    names = [ALIASES.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}"
        )
    return [s for s in SECTIONS if s in names]  # in the bench's order, each once


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _lease_ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.5 <= value <= 60:
        raise argparse.ArgumentTypeError("must be between 0.5 and 60 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--only",
        type=_sections,
        default=list(SECTIONS),
        help=f"comma-separated sections (default all): {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--runs",
        type=_bounded(1, 50),
        default=5,
        help="failover kills and LiveKit restarts (default 5)",
    )
    p.add_argument(
        "--n",
        type=_bounded(1, IDENTITIES),
        default=25,
        help="transfers at once in the concurrent rows (default 25)",
    )
    p.add_argument(
        "--cpu-transfers",
        type=_bounded(1, 100),
        default=10,
        help="sequential calls for the CPU figure (default 10)",
    )
    p.add_argument(
        "--network-transfers",
        type=_bounded(1, 50),
        default=10,
        help="transfers per network scenario (default 10)",
    )
    p.add_argument(
        "--uploads",
        type=_bounded(1, 390),
        default=50,
        help="speech uploads at once (default 50)",
    )
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument(
        "--lease-ttl",
        type=_lease_ttl,
        default=None,
        help=f"SOFTPHONE_LEASE_TTL_S of the replicas (default theirs: {DEFAULT_LEASE_TTL_S:g})",
    )
    return p


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def table(out: dict[str, Any], opts: Options) -> str:
    """The result as text for people."""
    lines = ["scaled-out service (ms unless named)", ""]
    rows = out["concurrent"]
    lines.append(
        f"{'concurrent':30} {'n':>4} {'replicas':>9} {'p50_ms':>9} {'p95_ms':>9} {'failures':>9}"
    )
    for row in rows or []:
        lines.append(
            f"{'':30} {row['n']:>4} {row['replicas']:>9} {_fmt(row['p50_ms']):>9}"
            f" {_fmt(row['p95_ms']):>9} {row['failures']:>9}"
        )
    if rows is None:
        lines.append(f"{'':30} null")
    lines.append("")
    for key, extra in (
        (
            "failover_ms",
            f"(lease TTL {opts.lease_ttl_s or DEFAULT_LEASE_TTL_S:g} s, not waited for when"
            f" the replica is gone; A's app gives up after {LOST_AFTER_S:g} s)",
        ),
        ("livekit_restart_gap_ms", ""),
    ):
        v = out[key]
        text = f"p50 {_fmt(v['p50'])}  p95 {_fmt(v['p95'])}" if v else "null"
        lines.append(f"{key:30} {text}  {extra}".rstrip())
    lines.append(f"{'backend_cpu_ms_per_transfer':30} {_fmt(out['backend_cpu_ms_per_transfer'])}")
    for key in ("speech_under_load", "network"):
        v = out[key]
        text = "  ".join(f"{k} {_fmt(x)}" for k, x in v.items()) if v else "null"
        lines.append(f"{key:30} {text}")
    return "\n".join(lines)


def main() -> None:
    """Run the bench and print its result; exits 2 on bad arguments."""
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(relativeCreated)d %(name)s %(message)s")
    opts = Options(
        n=args.n,
        runs=args.runs,
        cpu_transfers=args.cpu_transfers,
        network_transfers=args.network_transfers,
        uploads=args.uploads,
        lease_ttl_s=args.lease_ttl,
    )
    if args.section:
        status = section_main(args.section, opts)
        sys.stdout.flush()
        sys.stderr.flush()
        # The result is out: skip the RTC SDK's native teardown, which now
        # and then aborts the process at exit (see tests/conftest.py).
        os._exit(status)
    started = time.monotonic()
    out = _nan_to_none(asyncio.run(run(args.only, opts)))
    note(f"scale bench: {time.monotonic() - started:.0f} s in all")
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        print(table(out, opts))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as above (this process loaded the SDK too)


if __name__ == "__main__":
    main()
