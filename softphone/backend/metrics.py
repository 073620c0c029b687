"""The backend's Prometheus metrics (``GET /metrics``, text format).

Transfers are counted from the service's ``transfer_changed`` events (each
:class:`~softphone.domain.transfer.TransferSnapshot` carries its timeline),
so the numbers are those of the transfers this replica drives; Prometheus
sums replicas. Active calls are asked of the service at each scrape.

======================================================  =========  ====================
name                                                    type       labels
======================================================  =========  ====================
``softphone_active_calls``                              gauge
``softphone_transfers``                                 gauge      ``phase`` (active phases)
``softphone_transfer_outcomes_total``                   counter    ``outcome``, ``reason``
``softphone_transfer_offer_to_answer_seconds``          histogram  (offering -> B answered)
``softphone_transfer_complete_to_audio_seconds``        histogram  (completing -> completed)
``softphone_speech_queue_depth``                        gauge      (jobs waiting for a worker)
``softphone_speech_jobs_running``                       gauge
``softphone_speech_requests_in_flight``                 gauge      (admitted: uploading, waiting, running)
``softphone_speech_rejected_total``                     counter    ``reason``
``softphone_speech_jobs_total``                         counter    ``result``
``softphone_speech_job_seconds``                        histogram
``softphone_http_request_seconds``                      histogram  ``method``, ``route``, ``status``
``process_*``                                           (RSS, CPU seconds, open files)
======================================================  =========  ====================

Every label takes values from a fixed set (phases, reasons, route
templates), never identities or ids. Each app has its own registry, so
several apps in one process (tests, benchmarks) do not collide.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from softphone.domain.transfer import ACTIVE, END_REASONS, PHASES, RETURN_REASONS, TransferSnapshot
from softphone.errors import SoftphoneError
from softphone.protocol import TransferService

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
SpeechRejection = Literal["rate", "concurrency", "busy", "duration", "upload_timeout", "abandoned"]
SpeechResult = Literal["ok", "invalid", "error", "timeout"]
# Finished transfers remembered so a late duplicate event is not counted twice.
_FINISHED_KEPT = 10_000
# The identity the scrape lists calls as (a supervisor sees every call).
_SCRAPER = "metrics"


class ServiceMetrics:
    """The backend's metrics, in a registry of their own.

    Attach the service with :meth:`watch` and the speech work with
    :meth:`watch_speech`; :meth:`render` answers a scrape.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.active_calls = Gauge("softphone_active_calls", "Calls in progress", registry=r)
        self.transfers = Gauge(
            "softphone_transfers", "Transfers in progress, by phase", ["phase"], registry=r
        )
        self.transfer_outcomes = Counter(
            "softphone_transfer_outcomes",
            "Finished transfers by outcome (completed, returned, ended) and reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.offer_to_answer = Histogram(
            "softphone_transfer_offer_to_answer_seconds",
            "From B's phone ringing (offering) to B answering",
            buckets=(0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60),
            registry=r,
        )
        self.complete_to_audio = Histogram(
            "softphone_transfer_complete_to_audio_seconds",
            "From A completing (completing) to the caller and B talking (completed)",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8),
            registry=r,
        )
        self.speech_queue_depth = Gauge(
            "softphone_speech_queue_depth", "Speech jobs waiting for a worker", registry=r
        )
        self.speech_running = Gauge(
            "softphone_speech_jobs_running", "Speech jobs a worker is doing", registry=r
        )
        self.speech_in_flight = Gauge(
            "softphone_speech_requests_in_flight",
            "Speech requests admitted (uploading, waiting or running)",
            registry=r,
        )
        self.speech_rejected = Counter(
            "softphone_speech_rejected",
            "Speech requests refused (load, length, slow upload) or given up by their client",
            ["reason"],
            registry=r,
        )
        self.speech_jobs = Counter(
            "softphone_speech_jobs",
            "Speech jobs done by a worker, by result",
            ["result"],
            registry=r,
        )
        self.speech_job_seconds = Histogram(
            "softphone_speech_job_seconds",
            "Wall time of a speech job in a worker",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.http_seconds = Histogram(
            "softphone_http_request_seconds",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        for phase in sorted(ACTIVE):
            self.transfers.labels(phase).set(0)
        self.transfer_outcomes.labels("completed", "none")
        for reason in sorted(RETURN_REASONS):
            self.transfer_outcomes.labels("returned", reason)
        for reason in sorted(END_REASONS):
            self.transfer_outcomes.labels("ended", reason)
        for why in ("rate", "concurrency", "busy", "duration", "upload_timeout", "abandoned"):
            self.speech_rejected.labels(why)
        for result in ("ok", "invalid", "error", "timeout"):
            self.speech_jobs.labels(result)
        self._service: TransferService | None = None
        # transfer id -> (last version seen, timeline entries accounted for, phase)
        self._running: dict[str, tuple[int, int, str]] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    # ---- transfers -------------------------------------------------------------

    def watch(self, service: TransferService) -> Callable[[], None]:
        """Count ``service``'s transfers and calls; returns a function that stops it."""
        self._service = service
        return service.on("transfer_changed", self.transfer_changed)

    def transfer_changed(self, snap: TransferSnapshot) -> None:
        """Account for one ``transfer_changed`` event."""
        tid = snap.transfer_id
        if tid in self._finished:
            return
        version, done, _ = self._running.get(tid, (-1, 0, ""))
        if snap.version <= version:
            return  # a late or repeated event
        timeline = snap.timeline
        for i in range(max(done, 1), len(timeline)):
            prev, cur = timeline[i - 1], timeline[i]
            if prev.phase == "offering" and cur.phase in ("consulting", "completing"):
                self.offer_to_answer.observe(max(0.0, cur.at - prev.at))
            if cur.phase == "completed":
                began = next((t for t in reversed(timeline[:i]) if t.phase == "completing"), None)
                if began is not None:
                    self.complete_to_audio.observe(max(0.0, cur.at - began.at))
        if snap.phase in ACTIVE:
            self._running[tid] = (snap.version, len(timeline), snap.phase)
        else:
            self._running.pop(tid, None)
            self._finished[tid] = None
            while len(self._finished) > _FINISHED_KEPT:
                self._finished.popitem(last=False)
            reason = snap.reason.code if snap.reason is not None else "none"
            self.transfer_outcomes.labels(snap.phase, reason).inc()
        counts = collections.Counter(phase for _, _, phase in self._running.values())
        for phase in PHASES:
            if phase in ACTIVE:
                self.transfers.labels(phase).set(counts.get(phase, 0))

    # ---- speech ----------------------------------------------------------------

    def watch_speech(
        self,
        *,
        waiting: Callable[[], float],
        running: Callable[[], float],
        in_flight: Callable[[], float],
    ) -> None:
        """Read the speech work's queue depth, running jobs and admitted requests at each scrape."""
        self.speech_queue_depth.set_function(waiting)
        self.speech_running.set_function(running)
        self.speech_in_flight.set_function(in_flight)

    # ---- scrape ----------------------------------------------------------------

    async def render(self) -> bytes:
        """The metrics in Prometheus' text format (asks the service for its active calls)."""
        if self._service is not None:
            try:
                calls = await self._service.list_calls(identity=_SCRAPER, role="supervisor")
                self.active_calls.set(sum(1 for c in calls if c.active))
            except SoftphoneError as exc:
                # The last value stays; the scrape itself still answers.
                log.warning("active calls not counted", extra={"error": exc.code})
        return generate_latest(self.registry)
