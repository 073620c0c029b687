"""Responsiveness of the desktop app: startup, idle memory, call CPU, event-loop stalls.

Usage: ``./dev bench app [--json] [--seconds N] [--package PROGRAM]``

- ``startup_ms``: from launching ``softphone --role agent`` (a new process,
  embedded LiveKit server included) to its window being shown and usable;
- ``idle_rss_mb``: that process's resident memory after it settled, not in a call;
- ``call_cpu_pct``: CPU of one app process (percent of one core) in a
  two-party call (the other party is this script, sending speech), live
  transcript off; ``call_cpu_transcript_pct``: the same with it on;
- ``call_cpu_sdk_floor_pct``: the same call's media without the app (see
  ``bench/_sdk_floor.py``): a plain asyncio process that only sends and
  receives 20 ms frames through the SDK. It is the least ``call_cpu_pct``
  can be with this SDK on this machine;
- ``max_loop_stall_ms``: the worst lateness of a 10 ms timer on the app's
  (qasync) event loop while a warm transfer is clicked through the caller,
  Agent A and Agent B windows in one process;
- ``max_loop_stall_agent_ms``: the same transfer as deployed: Agent A's and
  Agent B's windows each in a process of its own against the backend (the
  caller is this script), each measuring its own loop from its first click
  (``bench/_agent_stall.py``); the worse of the two;
- ``aec_erle_db``: how much quieter the far end's echo is at the far end with
  the microphone's processing on than off, averaged in dB over 100 ms windows
  (an agent on a laptop whose microphone hears its speakers; see
  ``tests/media/laptop.py``);
- ``ns_snr_gain_db``: how much the agent's speech-to-noise ratio at the far
  end improves with processing on, in steady white noise 20 dB under the voice;
- ``aec_latency_ms``: the delay the processing adds to the microphone: the
  module's own delay (where its output best matches its input) plus the
  time a 40 ms capture block spends being processed (p95);
- ``package_startup_ms``: ``startup_ms`` for the packaged app (``build.spec``):
  the build ``./dev package`` left in ``dist/softphone/``, or one built now
  into a temporary directory (about 3 minutes) when there is none, or the
  program given with ``--package``.

The app's processing is on (the default) in the CPU measurements.

A private PulseAudio with null devices is started when ``pulseaudio`` is
installed, so audio devices are really opened; without it the app runs
with no devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from livekit import rtc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._package import build_package, package_startup_ms  # noqa: E402
from softphone.client.caller_mover import CallerMover  # noqa: E402
from softphone.client.commands import CommandGuard  # noqa: E402
from softphone.infra.local_server import LocalLiveKitServer  # noqa: E402
from softphone.infra.server_binary import ensure_server_binary  # noqa: E402
from softphone.media.processing import AudioProcessor, ProcessingOptions  # noqa: E402
from softphone.media.session import RtcSession  # noqa: E402
from softphone.media.tone import SAMPLE_RATE  # noqa: E402
from softphone.server.token_minter import TokenMinter  # noqa: E402
from tests.transfer.backend_process import BackendProcess  # noqa: E402

SPEECH = (
    "Hello, I am calling about my invoice. I was charged twice for order "
    "four five seven one. Could you please refund the second payment? Thank you."
)


@contextlib.contextmanager
def private_pulse(tmp: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio with a null sink and a virtual mic, for this run only."""
    env = {**os.environ}
    binary = shutil.which("pulseaudio")
    if binary is None:
        yield env
        return
    runtime = tmp / "pulse"
    runtime.mkdir()
    env["XDG_RUNTIME_DIR"] = str(runtime)
    # HOME only for the daemon (its cookie); the app keeps the real HOME and its caches.
    subprocess.run(
        [
            binary,
            "-D",
            "-n",
            "--exit-idle-time=-1",
            "-L",
            "module-native-protocol-unix",
            "-L",
            "module-null-sink sink_name=bench_out",
            "-L",
            "module-remap-source source_name=bench_mic master=bench_out.monitor",
        ],
        env={**env, "HOME": str(runtime)},
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        time.sleep(0.5)
        yield env
    finally:
        subprocess.run(
            [binary, "--kill"], env={**env, "HOME": str(runtime)}, capture_output=True, timeout=30
        )


def speech_pcm(tmp: Path) -> np.ndarray:
    """Speech made with espeak-ng at 48 kHz (a tone if espeak-ng is missing)."""
    path = tmp / "speech.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(path), SPEECH], check=True, capture_output=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        t_out = np.arange(int(len(raw) * SAMPLE_RATE / rate)) / SAMPLE_RATE
        speech = np.interp(t_out, np.arange(len(raw)) / rate, raw.astype(np.float32))
        return np.concatenate([speech, np.zeros(SAMPLE_RATE // 2)]).astype(np.int16)
    t = np.arange(SAMPLE_RATE * 3) / SAMPLE_RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


async def play_loop(source: rtc.AudioSource, pcm: np.ndarray) -> None:
    """Send ``pcm`` over and over in real time, 10 ms frames."""
    n = SAMPLE_RATE // 100
    i = 0
    started = time.monotonic()
    sent = 0
    while True:
        chunk = pcm[i : i + n]
        if len(chunk) < n:
            i = 0
            continue
        i += n
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, n))
        sent += n
        ahead = started + sent / SAMPLE_RATE - time.monotonic()
        if ahead > 0.03:
            await asyncio.sleep(ahead - 0.03)


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (and its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class App:
    """One ``softphone`` process in window mode (offscreen)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "softphone", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout_s: float = 60) -> float:
        """Seconds from launch to the window being shown."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"softphone exited with {self.proc.returncode}")
            if "window ready" in line:
                ready = time.monotonic() - self.launched
                # Keep draining stderr so the app never blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return ready
        raise TimeoutError("the window did not appear")

    def stop(self) -> int:
        """SIGTERM (the app closes its windows and services) and wait."""
        self.proc.terminate()
        return self.proc.wait(timeout=30)


async def measure_call_cpu(
    backend: BackendProcess, env: dict[str, str], pcm: np.ndarray, seconds: float, n: int
) -> float:
    """CPU percent of an agent window in a call with this script as the caller.

    The agent app runs against the backend with its own key; the script places
    a call to it as caller ``caller-<n>``, the service assigns it to
    ``agent-a-<n>`` and the agent's app joins by itself (``call.assigned``).
    """
    agent, caller = f"agent-a-{n}", f"caller-{n}"
    app_env = {
        **env,
        "SOFTPHONE_BACKEND_API_KEY": backend.keys[agent],
        "SOFTPHONE_LOBBY_ROOM": backend.lobby,
    }
    args = ["--role", "agent", "--identity", agent, "--profile", f"bench-{n}"]
    app = App([*args, "--backend", backend.url], app_env)
    try:
        app.wait_ready()
        async with backend.client_for(caller) as service:
            ticket = await service.create_call(caller=caller, agent=agent, requester=caller)
        async with RtcSession(url=ticket.token.url, token=ticket.token.token) as call:
            source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
            await call.publish_audio(source)
            player = asyncio.ensure_future(play_loop(source, pcm))
            try:
                await call.wait_for_audio(agent, timeout_s=30)
                await asyncio.sleep(3.0)  # settle (and, with transcript, load the model)
                c0, t0 = cpu_seconds(app.proc.pid), time.monotonic()
                await asyncio.sleep(seconds)
                c1, t1 = cpu_seconds(app.proc.pid), time.monotonic()
            finally:
                player.cancel()
                await asyncio.gather(player, return_exceptions=True)
        return 100.0 * (c1 - c0) / (t1 - t0)
    finally:
        app.stop()


async def measure_sdk_floor(
    server: LocalLiveKitServer, pcm: np.ndarray, seconds: float
) -> dict[str, float]:
    """CPU of ``bench/_sdk_floor.py`` in a call with this script as the caller."""
    minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
    room = "bench-sdk-floor"
    caller = minter.mint(role="caller", identity="caller-floor", room=room)
    agent = minter.mint(role="agent", identity="agent-floor", room=room)
    async with RtcSession(url=server.url, token=caller.token) as call:
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        await call.publish_audio(source)
        player = asyncio.ensure_future(play_loop(source, pcm))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench._sdk_floor",
                server.url,
                str(seconds),
                cwd=ROOT,
                env={**os.environ, "SDK_FLOOR_TOKEN": agent.token},  # not on a command line
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench._sdk_floor exited with {proc.returncode}")
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    print(
        f"SDK floor: {result['cpu_pct']:.1f} % of a core, of which the Python"
        f" thread {result['main_thread_pct']:.1f} %",
        file=sys.stderr,
    )
    return result


async def measure_agent_stall(
    backend: BackendProcess, env: dict[str, str], pcm: np.ndarray, n: int
) -> dict[str, float]:
    """Each agent's worst loop stall in a warm transfer, each window in its own process.

    Agent A and Agent B run ``bench/_agent_stall.py`` against the backend
    with their own keys; this script is the caller (speech into the call).
    """
    caller, a, b = f"caller-{n}", f"agent-a-{n}", f"agent-b-{n}"
    procs: dict[str, asyncio.subprocess.Process] = {}
    for side, identity, extra in (("b", b, []), ("a", a, [b])):
        procs[side] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._agent_stall",
            side,
            identity,
            f"bench-stall-{side}",
            backend.url,
            *extra,
            cwd=ROOT,
            env={
                **env,
                "SOFTPHONE_BACKEND_API_KEY": backend.keys[identity],
                "SOFTPHONE_LOBBY_ROOM": backend.lobby,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    try:
        async with backend.client_for(caller) as service:
            ticket = await service.create_call(caller=caller, agent=a, requester=caller)
            guard = CommandGuard(await service.service_info())
        session = RtcSession(url=ticket.token.url, token=ticket.token.token)
        await session.connect()
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        # The caller's app: it obeys the service's move to the consultation room.
        mover = CallerMover(session=session, mic=source, guard=guard)
        player = asyncio.ensure_future(play_loop(source, pcm))
        try:
            await session.publish_audio(source)
            outs = await asyncio.wait_for(
                asyncio.gather(*(p.communicate() for p in procs.values())), timeout=240
            )
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
            await mover.aclose()
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.kill()
                await p.wait()
    stalls: dict[str, float] = {}
    for side, (out, err) in zip(procs, outs, strict=True):
        lines = [x for x in out.decode().splitlines() if x.startswith("STALL ")]
        if not lines:
            raise RuntimeError(f"agent {side} measured nothing:\n{err.decode()[-3000:]}")
        stalls[side] = float(lines[-1].split()[1])
        for line in err.decode().splitlines():  # AGENT_STALL_SLOW_MS's reports
            if line.startswith("SLOW "):
                print(f"agent {side}: {line}", file=sys.stderr)
    print(f"agent stall in its own process (ms): A {stalls['a']}, B {stalls['b']}", file=sys.stderr)
    return stalls


def measure_transfer_stall(env: dict[str, str], home: Path, slow_ms: float | None = None) -> float:
    """Worst event-loop stall while a warm transfer is clicked through three windows.

    With ``slow_ms``, for every stall of that many ms the main thread's most
    sampled stacks during it are printed with the step (to find what blocks;
    the sampling's own cost makes the stall figure not the bench's).
    """
    code = f"""
import asyncio, contextlib, sys, time
sys.path.insert(0, {str(ROOT)!r})
from bench._agent_stall import StackSampler
from softphone.app import build_windows
from softphone.config import load_settings
from softphone.ui.shell import close_window_resources, freeze_heap, run_qt

WINDOWS = []

async def until(cond, t=90):
    end = time.monotonic() + t
    while not cond():
        if time.monotonic() > end:
            for w in WINDOWS:  # what each window said, for the failure message
                print("WINDOW", w.windowTitle(), w.messages.label.text(), flush=True)
                for line in w.event_log.lines()[-8:]:
                    print("  LOG", line, flush=True)
            raise TimeoutError
        await asyncio.sleep(0.05)

worst = [0.0]
phase = ["setup"]
# --slow-callbacks: the main thread's stack every 2 ms, and for each stall
# what it was doing meanwhile (the stacks most sampled in that window).
SAMPLER = [None]
by_phase = {{}}
async def main():
    if {slow_ms!r} is not None:
        SAMPLER[0] = StackSampler()
    done = asyncio.Event()
    async def monitor():
        while not done.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.01)
            late = (time.monotonic() - t - 0.01) * 1000
            worst.append(late)
            by_phase[phase[0]] = max(by_phase.get(phase[0], 0.0), late)
            if {slow_ms!r} is not None and late >= {slow_ms!r}:
                SAMPLER[0].report(late, t, phase[0])
    settings = load_settings({{"profile": "bench-stall", "home": {str(home)!r},
                               "live_transcript": False}})
    async with contextlib.AsyncExitStack() as stack:
        caller, a, b = await build_windows(settings, stack, demo=True)
        WINDOWS.extend((caller, a, b))
        for w in (caller, a, b):
            w.show()
        freeze_heap()  # as run_until_closed does once the windows are shown
        await until(lambda: a.call_panel.in_call and caller.call_panel.in_call)
        await until(lambda: a.agent.caller_identity() is not None)  # A sees the caller
        await until(lambda: ("agent-b", "available") in a.transfer_panel.agents())
        mon = asyncio.ensure_future(monitor())
        print("PHASE transfer", flush=True)
        phase[0] = "start"
        a.transfer_panel.target.setText("agent-b")
        a.transfer_panel.start_btn.click()
        print("PHASE offer", flush=True)
        await until(lambda: b.offer_panel.offer is not None)
        b.offer_panel.accept_btn.click()
        print("PHASE consult", flush=True)
        phase[0] = "accept"
        await until(lambda: a.transfer_panel.snapshot and a.transfer_panel.snapshot.phase == "consulting")
        await until(lambda: a.transfer_panel.complete_btn.isEnabled())
        phase[0] = "complete"
        a.transfer_panel.complete_btn.click()
        print("PHASE complete", flush=True)
        await until(lambda: a.controller.call is None and b.controller.call is not None)
        await asyncio.sleep(0.5)
        done.set()
        await mon
        for w in (caller, a, b):
            w.close()
        for w in (caller, a, b):
            await close_window_resources(w)

try:
    run_qt(main)
except BaseException as exc:
    print("STALL-ERROR", repr(exc), flush=True)
    raise
print("STALLS", {{k: round(v, 1) for k, v in by_phase.items()}}, file=sys.stderr)
print("STALL", max(worst))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    for line in out.stderr.splitlines():
        if line.startswith("STALLS "):
            print("worst stall by step (ms):", line.split(" ", 1)[1], file=sys.stderr)
        elif line.startswith("SLOW "):
            print(line, file=sys.stderr)
    for line in out.stdout.splitlines():
        if line.startswith("STALL "):
            return float(line.split()[1])
    raise RuntimeError("stall measurement failed:\n" + out.stdout[-4000:] + out.stderr[-2000:])


async def measure_clean_audio(tmp: Path, binary: Path) -> dict[str, float]:
    """ERLE and SNR gain at the far end of a real call (see ``tests/media/laptop.py``)."""
    from tests.media.laptop import (
        EchoCall,
        Laptop,
        echo_scene,
        erle_db,
        noise_scene,
        snr_db,
    )

    echo, noise = echo_scene(), noise_scene()
    off, on = ProcessingOptions.off(), ProcessingOptions()
    runtime = tmp / "laptop"
    runtime.mkdir()
    with Laptop(runtime) as laptop:
        async with LocalLiveKitServer(binary=binary, log_path=tmp / "lk-clean.log") as server:
            minter = TokenMinter(api_key=server.api_key, api_secret=server.api_secret)
            async with EchoCall(
                laptop=laptop, url=server.url, minter=minter, room="bench-clean", processing=off
            ) as call:
                got: dict[str, np.ndarray] = {}
                for name, options, far, room in (
                    ("echo_off", off, echo.far, echo.room),
                    ("echo_on", on, echo.far, echo.room),
                    ("noise_off", off, noise.silent, noise.noisy),
                    ("noise_on", on, noise.silent, noise.noisy),
                ):
                    call.devices.set_processing(options)
                    got[name] = await call.run(far, room)
    erle = erle_db(got["echo_off"], got["echo_on"], echo.echo_span)
    gain = snr_db(got["noise_on"], noise.speech_span, noise.noise_span) - snr_db(
        got["noise_off"], noise.speech_span, noise.noise_span
    )
    return {"aec_erle_db": erle, "ns_snr_gain_db": gain}


def processing_latency_ms(pcm: np.ndarray) -> float:
    """The delay processing adds to the microphone, from ``pcm`` run through it offline."""
    block = SAMPLE_RATE // 25  # the capture block of softphone.media.devices
    processor = AudioProcessor(ProcessingOptions(), sample_rate=SAMPLE_RATE)
    times, out = [], []
    for i in range(0, len(pcm) - block + 1, block):
        processor.process_render(np.zeros(block, np.int16))
        started = time.perf_counter()
        out.append(processor.process_capture(pcm[i : i + block]))
        times.append(time.perf_counter() - started)
    y = np.concatenate(out).astype(np.float64)
    x = pcm[: len(y)].astype(np.float64)
    # The module's own delay: the lag (up to 10 ms) at which output best matches input.
    lags = [float(np.dot(y[lag:], x[: len(y) - lag])) for lag in range(SAMPLE_RATE // 100)]
    own_ms = int(np.argmax(lags)) * 1000 / SAMPLE_RATE
    steady = times[len(times) // 4 :]  # past the first blocks (the module is built then)
    return own_ms + float(np.percentile(steady, 95)) * 1000


# What `./dev package` builds.
BUILT_PACKAGE = ROOT / "dist" / "softphone" / "softphone"


async def run(seconds: float, package: Path | None) -> dict[str, float]:
    """Every measurement; returns the JSON object."""
    with tempfile.TemporaryDirectory(prefix="softphone-bench-app-") as name:
        tmp = Path(name)
        result = await _run(tmp, seconds)
        if package is None:
            package = BUILT_PACKAGE
            if not package.exists():
                package = await asyncio.to_thread(build_package, tmp / "package")
        (tmp / "package-run").mkdir()
        with private_pulse(tmp / "package-run") as env:
            startup = await asyncio.to_thread(package_startup_ms, package, env=env)
        return {**result, "package_startup_ms": round(startup, 1)}


async def _run(tmp: Path, seconds: float) -> dict[str, float]:
    with private_pulse(tmp) as env:
        env.update(SOFTPHONE_HOME=str(tmp / "home"), QT_QPA_PLATFORM="offscreen")
        env["SOFTPHONE_LIVE_TRANSCRIPT"] = "0"
        for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            env.pop(var, None)
        # Startup and idle memory: a fresh process with its own embedded server.
        app = App(["--role", "agent", "--profile", "bench-idle"], env)
        startup_ms = app.wait_ready() * 1000
        await asyncio.sleep(3.0)
        idle = rss_mb(app.proc.pid)
        app.stop()

        pcm = speech_pcm(tmp)
        binary = ensure_server_binary()
        (tmp / "backend").mkdir()
        async with (
            LocalLiveKitServer(binary=binary, log_path=tmp / "lk.log") as server,
            BackendProcess(
                livekit_server=server,
                workdir=tmp / "backend",
                lobby="lobby-bench",
                offer_timeout_s=30.0,
            ) as backend,
        ):
            cpu_off = await measure_call_cpu(backend, env, pcm, seconds, 0)
            cpu_on = await measure_call_cpu(
                backend, {**env, "SOFTPHONE_LIVE_TRANSCRIPT": "1"}, pcm, seconds, 1
            )
            floor = await measure_sdk_floor(server, pcm, seconds)
            agents = await measure_agent_stall(backend, env, pcm, 2)
        stall = await asyncio.to_thread(measure_transfer_stall, env, tmp / "home")
    clean = await measure_clean_audio(tmp, binary)
    return {
        "startup_ms": round(startup_ms, 1),
        "idle_rss_mb": round(idle, 1),
        "call_cpu_pct": round(cpu_off, 1),
        "call_cpu_transcript_pct": round(cpu_on, 1),
        "call_cpu_sdk_floor_pct": round(floor["cpu_pct"], 1),
        "max_loop_stall_ms": round(stall, 1),
        "max_loop_stall_agent_ms": round(max(agents.values()), 1),
        "aec_erle_db": round(clean["aec_erle_db"], 1),
        "ns_snr_gain_db": round(clean["ns_snr_gain_db"], 1),
        "aec_latency_ms": round(processing_latency_ms(pcm), 2),
    }


async def slow_callbacks(slow_ms: float) -> None:
    """``--slow-callbacks``: the stall measurement alone, naming what held the loop."""
    with tempfile.TemporaryDirectory() as name, private_pulse(Path(name)) as env:
        env.update(SOFTPHONE_HOME=str(Path(name) / "home"), QT_QPA_PLATFORM="offscreen")
        env["SOFTPHONE_LIVE_TRANSCRIPT"] = "0"
        for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
            env.pop(var, None)
        stall = await asyncio.to_thread(measure_transfer_stall, env, Path(name) / "home", slow_ms)
        print(f"worst stall (while sampling): {stall:.1f} ms")


TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "startup_ms": ("< 1000 ms", lambda v: v < 1000),
    "idle_rss_mb": ("< 200 MB", lambda v: v < 200),
    "call_cpu_pct": ("< 8 %", lambda v: v < 8),
    "call_cpu_transcript_pct": ("(no target)", lambda v: True),
    "call_cpu_sdk_floor_pct": ("(no target: what the SDK alone costs)", lambda v: True),
    "max_loop_stall_ms": ("<= 30 ms, worst of 5 runs", lambda v: v <= 30),
    "max_loop_stall_agent_ms": ("(no target: the deployed layout)", lambda v: True),
    "aec_erle_db": (">= 20 dB", lambda v: v >= 20),
    "ns_snr_gain_db": (">= 10 dB", lambda v: v >= 10),
    "aec_latency_ms": ("<= 10 ms", lambda v: v <= 10),
    "package_startup_ms": ("(no target)", lambda v: True),
}


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seconds", type=float, default=8.0, help="CPU sampling window")
    parser.add_argument(
        "--package", type=Path, help="a built app for package_startup_ms (default: dist/)"
    )
    parser.add_argument(
        "--slow-callbacks",
        type=float,
        metavar="MS",
        help="only the transfer through three windows, printing for every stall of MS ms"
        " or more what the main thread was doing (sampled stacks)",
    )
    args = parser.parse_args()
    if args.slow_callbacks is not None:
        asyncio.run(slow_callbacks(args.slow_callbacks))
        return
    result = asyncio.run(run(args.seconds, args.package))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'measure':<26}{'value':>10}  target")
    for key, value in result.items():
        target, ok = TARGETS[key]
        print(f"{key:<26}{value:>10}  {target} {'ok' if ok(value) else 'MISSED'}")


if __name__ == "__main__":
    main()
