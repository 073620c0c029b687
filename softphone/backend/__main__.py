"""``python -m softphone.backend`` / ``softphone-backend``: run the backend under uvicorn.

LiveKit is reached with ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and
``LIVEKIT_API_SECRET`` from the environment; API keys of users come from the
keys file (``--keys-file`` or ``SOFTPHONE_BACKEND_KEYS_FILE``). Logs are JSON
lines on stderr, each with the request id of the request it belongs to.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from softphone.backend.app import build_app
from softphone.backend.speech_limits import SpeechLimits
from softphone.config import FIELDS, load_settings
from softphone.errors import SoftphoneError
from softphone.logs import setup_service_logging

# Flags of SpeechLimits (not settings of the profile): flag dest -> field.
_SPEECH_LIMITS = {
    "speech_workers": "workers",
    "speech_queue": "queue",
    "speech_key_concurrency": "key_concurrency",
    "speech_key_rate": "key_rate_per_min",
    "speech_upload_timeout": "upload_timeout_s",
    "speech_job_timeout": "job_timeout_s",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``softphone-backend`` command line."""
    p = argparse.ArgumentParser(prog="softphone-backend", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--keys-file", dest="backend_keys_file", help="JSON file of API keys")
    p.add_argument("--lobby", dest="lobby_room", help="the lobby room (agent directory)")
    p.add_argument("--offer-timeout", dest="offer_timeout_s", type=float, help="seconds")
    p.add_argument("--move-timeout", dest="move_timeout_s", type=float, help="seconds")
    p.add_argument("--summarizer", choices=["offline", "openai"], help="summarizer")
    p.add_argument("--summary-timeout", dest="summary_timeout_s", type=float, help="seconds")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR")
    speech = p.add_argument_group("speech work (POST /v1/speech)")
    speech.add_argument(
        "--speech-max-duration",
        dest="speech_max_duration_s",
        type=float,
        help=FIELDS["speech_max_duration_s"].metadata["help"],
    )
    speech.add_argument(
        "--speech-max-upload-mb",
        dest="speech_max_upload_mb",
        type=int,
        help=FIELDS["speech_max_upload_mb"].metadata["help"],
    )
    speech.add_argument(
        "--speech-workers",
        type=int,
        help="worker processes for decoding and STT (default: cores/2)",
    )
    speech.add_argument(
        "--speech-queue", type=int, help="requests admitted beyond the workers (default 4)"
    )
    speech.add_argument(
        "--speech-key-concurrency", type=int, help="requests of one key at once (default 2)"
    )
    speech.add_argument(
        "--speech-key-rate", type=float, help="requests of one key per minute (default 10)"
    )
    speech.add_argument(
        "--speech-upload-timeout", type=float, help="seconds an upload may take (default 120)"
    )
    speech.add_argument(
        "--speech-job-timeout", type=float, help="seconds a request waits for its job (default 900)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``softphone-backend``."""
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    values = vars(args)
    overrides: dict[str, Any] = {
        k: v
        for k, v in values.items()
        if k not in ("host", "port") and k not in _SPEECH_LIMITS and v is not None
    }
    limits = {f: values[k] for k, f in _SPEECH_LIMITS.items() if values[k] is not None}
    try:
        settings = load_settings(overrides)
        setup_service_logging(settings.log_level)
        app = build_app(settings, speech_limits=SpeechLimits(**limits))
    except SoftphoneError as exc:
        print(f"softphone-backend: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    # No log_config: uvicorn's own loggers go through the JSON handler above.
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, log_config=None
    )


if __name__ == "__main__":
    main()
