"""Starting the summarizer's NER worker process without holding up the caller's thread.

:func:`softphone.speech.offline_summarizer.start_entity_worker` imports the
summarizer, starts multiprocessing's resource tracker and spawns the worker:
100-250 ms of a thread, measured on the agent's event loop when a window
joined its first call (``bench/_agent_stall.py``). :func:`prepare_entity_worker`
hands that to a thread of its own. The thread lives as long as the process,
because the worker's death signal is tied to the thread that spawned it.
"""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger(__name__)

_requests: queue.SimpleQueue[None] = queue.SimpleQueue()
_lock = threading.Lock()
_thread: threading.Thread | None = None


def prepare_entity_worker() -> None:
    """Have the NER worker started (or replaced, if it died) soon, off this thread."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="ner-worker-start", daemon=True)
            _thread.start()
    _requests.put(None)


def _serve() -> None:
    from softphone.speech.offline_summarizer import start_entity_worker

    while True:
        _requests.get()
        try:
            start_entity_worker()
        except Exception:  # the summary falls back; the next call tries again
            log.exception("starting the summarizer's worker failed")
