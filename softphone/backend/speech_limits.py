"""Bounded speech work for ``POST /v1/speech``: limits per key, a worker pool, a length cap.

An upload goes through, in order:

1. :class:`KeyLimiter`: at most ``key_concurrency`` requests of one key at
   once and ``key_rate_per_min`` per minute (a token bucket holding a
   minute's worth); else **429** with ``Retry-After``.
2. Admission: at most ``workers + queue`` requests in the route at once
   (uploading, waiting or transcribing); else **503** with ``Retry-After``,
   before the body is read.
3. The upload is streamed to a private temporary file within
   ``upload_timeout_s`` (else **408**), bounded and sniffed by
   :class:`~softphone.speech.pipeline.UploadGuard`.
4. The length the container declares (its header: cheap, no decoding) must
   be within ``speech_max_duration_s``; else **422**.
5. A worker *process* (``workers`` of them, niced, so decoding and STT never
   compete with the request loop for the GIL or for priority on the cores)
   decodes the audio counting samples and stops as soon as it passes the cap
   (**422**): a file whose header lies about its length costs at most the
   cap's worth of decoding. Only then does it transcribe and summarize
   (:func:`~softphone.speech.pipeline.transcribe_file`).

Jobs beyond ``workers`` wait in the parent for a free worker (the queue
depth of the metrics). ``Retry-After`` is estimated from recent job times.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

from softphone.backend.metrics import ServiceMetrics, SpeechRejection
from softphone.config import Settings
from softphone.errors import ConfigError, SoftphoneError, SpeechError, ValidationError
from softphone.logs import request_id, setup_service_logging
from softphone.speech.pipeline import UploadGuard, transcribe_file

log = logging.getLogger(__name__)

# Workers run below the request loop's priority: under load the loop answers
# tokens and transfers first and speech takes the cores that are left.
WORKER_NICE = 10
_PR_SET_PDEATHSIG = 1
# Buckets kept before idle, full ones are dropped.
_MAX_BUCKETS = 4096
# Starting guess of one job's duration (s), before any was timed.
_FIRST_JOB_S = 5.0


def _default_workers() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpeechLimits:
    """How much speech work the backend takes on.

    The length cap is the ``speech_max_duration_s`` setting and the upload
    bound ``speech_max_upload_mb``; these are the rest.

    Attributes:
        workers: Worker processes doing decoding, STT and summaries.
        queue: Requests admitted beyond ``workers`` (uploading or waiting).
        key_concurrency: Requests of one key at once.
        key_rate_per_min: Requests of one key per minute (bursts up to this many).
        upload_timeout_s: How long an upload may take to arrive.
        job_timeout_s: How long a request waits for its job.

    Raises:
        ConfigError: A value out of range (the message names the flag).
    """

    workers: int = dataclasses.field(default_factory=_default_workers)
    queue: int = 4
    key_concurrency: int = 2
    key_rate_per_min: float = 10.0
    upload_timeout_s: float = 120.0
    job_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        checks = (
            ("--speech-workers", self.workers, 1, 64),
            ("--speech-queue", self.queue, 0, 10_000),
            ("--speech-key-concurrency", self.key_concurrency, 1, 1000),
            ("--speech-key-rate", self.key_rate_per_min, 0.01, 100_000),
            ("--speech-upload-timeout", self.upload_timeout_s, 1, 86_400),
            ("--speech-job-timeout", self.job_timeout_s, 1, 86_400),
        )
        for flag, value, low, high in checks:
            if not low <= value <= high:  # NaN too
                raise ConfigError(f"{flag}: must be between {low:g} and {high:g}")

    @property
    def capacity(self) -> int:
        """Requests admitted at once."""
        return self.workers + self.queue


class SpeechRefused(SoftphoneError):
    """A speech request refused for load or time: 429 or 503 (with ``Retry-After``), or 408.

    Also a request whose client left while it waited (503, no one reads it).

    Attributes:
        status: The HTTP status.
        reason: The metrics label (rate, concurrency, busy, upload_timeout, abandoned).
        retry_after_s: Whole seconds to wait before trying again (None: no advice).
    """

    def __init__(
        self,
        status: Literal[408, 429, 503],
        reason: SpeechRejection,
        message: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retryable=True)
        self.status = status
        self.reason = reason
        self.code = {408: "timeout", 429: "rate_limited", 503: "busy"}[status]
        self.retry_after_s = (
            None if retry_after_s is None else min(3600, max(1, math.ceil(retry_after_s)))
        )


@dataclasses.dataclass
class _Bucket:
    tokens: float
    at: float
    active: int = 0


class KeyLimiter:
    """Concurrency and rate per key (a token bucket each); pure, with an injectable clock.

    Args:
        concurrency: Requests of one key at once.
        per_minute: Requests of one key per minute; a full bucket holds this many.
        clock: Monotonic clock (seconds).
    """

    def __init__(
        self,
        *,
        concurrency: int,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = concurrency
        self.per_s = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._prune(now)
            b = self._buckets[key] = _Bucket(tokens=self.burst, at=now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.per_s)
            b.at = now
        return b

    def _prune(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.active == 0 and b.tokens + (now - b.at) * self.per_s >= self.burst:
                del self._buckets[key]

    def acquire(self, key: str, *, busy_retry_after_s: float = 1.0) -> None:
        """Take one request of ``key``; pair with :meth:`release`.

        Raises:
            SpeechRefused: 429 ``concurrency`` (``key`` has its maximum in
                progress; retry after ``busy_retry_after_s``) or ``rate`` (its
                bucket is empty; retry once a request's worth has refilled).
        """
        b = self._bucket(key, self._clock())
        if b.active >= self.concurrency:
            raise SpeechRefused(
                429,
                "concurrency",
                f"speech: at most {self.concurrency} requests of one key at once",
                busy_retry_after_s,
            )
        if b.tokens < 1.0:
            raise SpeechRefused(
                429,
                "rate",
                f"speech: at most {self.burst:g} requests of one key per minute",
                (1.0 - b.tokens) / self.per_s,
            )
        b.tokens -= 1.0
        b.active += 1

    def release(self, key: str) -> None:
        """End one request of ``key``."""
        b = self._buckets.get(key)
        if b is not None and b.active > 0:
            b.active -= 1

    def active(self, key: str) -> int:
        """Requests of ``key`` in progress."""
        b = self._buckets.get(key)
        return b.active if b else 0


# --- checks of the audio's length ----------------------------------------------------------


def _too_long(max_duration_s: float) -> ValidationError:
    return ValidationError(
        "file.duration", f"too long: at most {max_duration_s:g} seconds are accepted"
    )


def check_declared_duration(path: Path, *, max_duration_s: float) -> float | None:
    """The length the file's header declares, refused over the cap (no decoding; blocking).

    Returns:
        The declared seconds, or None when the container declares none.

    Raises:
        ValidationError: ``file`` (unreadable) or ``file.duration`` (declared over the cap).
    """
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ValidationError("file", "the audio file could not be read (corrupt?)") from exc
    with container:
        declared: float | None = None
        if container.duration:
            declared = container.duration / 1_000_000
        elif container.streams.audio:
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                declared = float(stream.duration * stream.time_base)
    if declared is not None and declared > max_duration_s:
        raise _too_long(max_duration_s)
    return declared


def decoded_duration(path: Path, *, max_duration_s: float) -> float:
    """Decode the first audio stream, counting its samples, and stop past the cap (blocking).

    Whatever the header says, at most ``max_duration_s`` of audio (and one
    frame) is decoded.

    Returns:
        The audio's real length in seconds.

    Raises:
        ValidationError: ``file`` (unreadable or undecodable), ``file.format``
            (no audio stream), ``file.duration`` (longer than the cap).
    """
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ValidationError("file", "the audio file could not be read (corrupt?)") from exc
    seconds = 0.0
    with container:
        if not container.streams.audio:
            raise ValidationError("file.format", "the file has no audio stream")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if frame.sample_rate:
                    seconds += frame.samples / frame.sample_rate
                if seconds > max_duration_s:
                    raise _too_long(max_duration_s)
        except (av.error.FFmpegError, ValueError) as exc:
            raise ValidationError("file", "the audio could not be decoded (corrupt?)") from exc
    return seconds


# --- the worker process ----------------------------------------------------------------------


ErrorKind = Literal["invalid", "config", "speech"]


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """What a worker answers (picklable): the speech result, or an error to re-raise."""

    result: dict[str, Any] | None = None
    kind: ErrorKind | None = None
    field: str = ""
    message: str = ""
    retryable: bool = False

    @property
    def label(self) -> Literal["ok", "invalid", "error"]:
        """The metrics' result label."""
        if self.kind is None:
            return "ok"
        return "invalid" if self.kind == "invalid" else "error"

    def unwrap(self) -> dict[str, Any]:
        """The result.

        Raises:
            ValidationError: The audio was refused (``field`` says why).
            ConfigError: A provider is not configured.
            SpeechError: Transcription failed.
        """
        if self.kind == "invalid":
            raise ValidationError(self.field, self.message)
        if self.kind == "config":
            raise ConfigError(self.message)
        if self.kind == "speech" or self.result is None:
            raise SpeechError(self.message or "speech work failed", retryable=self.retryable)
        return self.result


_worker_settings: Settings | None = None


def _die_with_parent() -> None:
    # A worker must never outlive the backend, even one killed with SIGKILL.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _init_worker(settings: Settings, log_level: str) -> None:  # pragma: no cover - child
    global _worker_settings
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    setup_service_logging(log_level)
    _worker_settings = settings


def _run_job(path: str, speaker: str, rid: str | None) -> JobOutcome:  # pragma: no cover - child
    """One speech job in a worker process: length check, then STT and summary."""
    settings = _worker_settings
    if settings is None:
        return JobOutcome(kind="speech", message="speech worker not initialised")
    token = request_id.set(rid)
    try:
        seconds = decoded_duration(Path(path), max_duration_s=settings.speech_max_duration_s)
        log.info("speech audio decoded", extra={"audio_s": round(seconds, 3)})
        # asyncio.run copies this context: the job's log lines keep the request id.
        result = asyncio.run(transcribe_file(Path(path), settings, speaker=speaker))
        return JobOutcome(result=result.to_dict())
    except ValidationError as exc:
        text = exc.message.removeprefix(f"{exc.field}: ")
        return JobOutcome(kind="invalid", field=exc.field, message=text)
    except ConfigError as exc:
        return JobOutcome(kind="config", message=exc.message)
    except SoftphoneError as exc:
        return JobOutcome(kind="speech", message=exc.message, retryable=exc.retryable)
    except Exception:
        log.exception("speech job failed")
        return JobOutcome(kind="speech", message="speech work failed")
    finally:
        request_id.reset(token)


# --- the work, as the route sees it ----------------------------------------------------------


class SpeechWork:
    """Admission, upload and execution of speech requests, bounded as the module says.

    The worker processes start with the first job; :meth:`aclose` stops
    them. Use as ``async with``.

    Args:
        limits: The bounds.
        settings: Providers, the length cap and the upload bound (also given to the workers).
        metrics: Where queue depth, rejections and job times go.
        log_level: The workers' log level.
    """

    def __init__(
        self,
        *,
        limits: SpeechLimits,
        settings: Settings,
        metrics: ServiceMetrics | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.limits = limits
        self._settings = settings
        self._metrics = metrics
        self._log_level = log_level
        self._keys = KeyLimiter(
            concurrency=limits.key_concurrency, per_minute=limits.key_rate_per_min
        )
        self._slots = asyncio.Semaphore(limits.workers)
        self._executor: ProcessPoolExecutor | None = None
        self._in_flight = 0
        self._waiting = 0
        self._running = 0
        self._job_s = _FIRST_JOB_S
        self._closed = False
        if metrics is not None:
            metrics.watch_speech(
                waiting=lambda: self._waiting,
                running=lambda: self._running,
                in_flight=lambda: self._in_flight,
            )

    @property
    def waiting(self) -> int:
        """Jobs waiting for a worker."""
        return self._waiting

    @property
    def running(self) -> int:
        """Jobs a worker is doing."""
        return self._running

    @property
    def in_flight(self) -> int:
        """Requests admitted (uploading, waiting or running)."""
        return self._in_flight

    def _reject(self, reason: SpeechRejection) -> None:
        if self._metrics is not None:
            self._metrics.speech_rejected.labels(reason).inc()

    def _busy_retry_after_s(self) -> float:
        return math.ceil((self._in_flight + 1) / self.limits.workers) * self._job_s

    @contextlib.contextmanager
    def admit(self, key: str) -> Iterator[None]:
        """Hold a place for one request of ``key`` (its identity) while the block runs.

        Raises:
            SpeechRefused: 429 (the key's concurrency or rate) or 503 (no room).
            SpeechError: Shutting down (503).
        """
        if self._closed:
            raise SpeechError("speech: the service is shutting down", retryable=True)
        try:
            self._keys.acquire(key, busy_retry_after_s=self._job_s)
        except SpeechRefused as exc:
            self._reject(exc.reason)
            raise
        try:
            if self._in_flight >= self.limits.capacity:
                self._reject("busy")
                raise SpeechRefused(
                    503,
                    "busy",
                    "speech: the service is at capacity; retry later",
                    self._busy_retry_after_s(),
                )
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1
        finally:
            self._keys.release(key)

    @contextlib.asynccontextmanager
    async def upload(self, chunks: AsyncIterator[bytes], guard: UploadGuard) -> AsyncIterator[Path]:
        """Stream ``chunks`` to a private temporary file, deleted when the block ends.

        Raises:
            ValidationError: From ``guard`` (size, format, empty).
            SpeechRefused: 408, the upload took longer than ``upload_timeout_s``.
        """
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".audio")  # 0600
        path = Path(name)
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    async with asyncio.timeout(self.limits.upload_timeout_s):
                        async for chunk in chunks:
                            guard.add(chunk)
                            await asyncio.to_thread(out.write, chunk)
            except TimeoutError:
                self._reject("upload_timeout")
                raise SpeechRefused(
                    408,
                    "upload_timeout",
                    f"speech: the upload took longer than {self.limits.upload_timeout_s:g} s",
                ) from None
            guard.finish()
            yield path
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def check_declared(self, path: Path) -> float | None:
        """Refuse a file whose header declares more than the cap (cheap: no decoding).

        Raises:
            ValidationError: ``file`` or ``file.duration``.
        """
        try:
            return await asyncio.to_thread(
                check_declared_duration,
                path,
                max_duration_s=self._settings.speech_max_duration_s,
            )
        except ValidationError as exc:
            if exc.field == "file.duration":
                self._reject("duration")
            raise

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.limits.workers,
                # Not fork: the backend has threads (LiveKit's runtime, aiohttp).
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._settings, self._log_level),
            )
        return self._executor

    async def run(
        self,
        path: Path,
        *,
        speaker: str,
        wanted: Callable[[], Awaitable[bool]] | None = None,
    ) -> dict[str, Any]:
        """Check the audio's real length, transcribe and summarize it, in a worker.

        Waits for a free worker first (the queue).

        Args:
            path: The upload.
            speaker: Identity given to the transcript's segments.
            wanted: Asked once a worker is free: False (the client left while
                waiting) gives the worker to the next job instead.

        Returns:
            The speech result (``SpeechResult.to_dict()``).

        Raises:
            ValidationError: The audio was refused (e.g. ``file.duration``, longer than the cap).
            SpeechError: Transcription failed, a worker died, or the job took too long.
            SpeechRefused: 503, the client left before a worker was free.
            ConfigError: A provider is not configured.
        """
        if self._closed:
            raise SpeechError("speech: the service is shutting down", retryable=True)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        started = time.monotonic()
        executor = None
        try:
            if wanted is not None and not await wanted():
                self._reject("abandoned")
                raise SpeechRefused(503, "abandoned", "speech: the client left before its turn")
            executor = self._pool()
            future = asyncio.wrap_future(
                executor.submit(_run_job, str(path), speaker, request_id.get())
            )
        except BaseException as exc:
            self._running -= 1
            self._slots.release()
            if isinstance(exc, BrokenProcessPool):
                if self._executor is executor:
                    self._executor = None  # the next job starts a new pool
                raise SpeechError("speech: a worker stopped; retry", retryable=True) from None
            raise

        def done(f: asyncio.Future[JobOutcome]) -> None:
            # The worker is free only now, even if the request stopped waiting.
            self._running -= 1
            self._slots.release()
            elapsed = time.monotonic() - started
            self._job_s = 0.7 * self._job_s + 0.3 * elapsed
            if self._metrics is not None:
                self._metrics.speech_job_seconds.observe(elapsed)
            if f.cancelled():
                return
            if f.exception() is None:
                outcome = f.result()
                if self._metrics is not None:
                    self._metrics.speech_jobs.labels(outcome.label).inc()
                if outcome.field == "file.duration":
                    self._reject("duration")
            elif self._metrics is not None:
                self._metrics.speech_jobs.labels("error").inc()

        future.add_done_callback(done)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), self.limits.job_timeout_s)
        except TimeoutError:
            if self._metrics is not None:
                self._metrics.speech_jobs.labels("timeout").inc()
            raise SpeechError(
                f"speech: the job took longer than {self.limits.job_timeout_s:g} s",
                retryable=True,
            ) from None
        except BrokenProcessPool:
            if self._executor is executor:
                self._executor = None
            log.error("a speech worker stopped; starting new ones")
            raise SpeechError("speech: a worker stopped; retry", retryable=True) from None
        return outcome.unwrap()

    async def aclose(self, grace_s: float = 3.0) -> None:
        """Refuse new work and stop the worker processes.

        Idle workers exit at once; one still busy after ``grace_s`` is
        terminated (its job is abandoned).
        """
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # ProcessPoolExecutor has no public way to stop busy workers before
        # Python 3.14 (terminate_workers), and shutdown() forgets them.
        processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
        workers = list(processes.values())
        executor.shutdown(wait=False, cancel_futures=True)

        def stop() -> None:
            deadline = time.monotonic() + grace_s
            for proc in workers:
                proc.join(max(0.0, deadline - time.monotonic()))
            for proc in workers:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5.0)

        await asyncio.to_thread(stop)

    async def __aenter__(self) -> SpeechWork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
