"""``python -m softphone.backend`` / ``softphone-backend``: run the backend under uvicorn.

LiveKit is reached with ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and
``LIVEKIT_API_SECRET`` from the environment; API keys of users come from the
keys file (``--keys-file`` or ``SOFTPHONE_BACKEND_KEYS_FILE``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from softphone.backend.app import build_app
from softphone.config import load_settings
from softphone.errors import SoftphoneError


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
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``softphone-backend``."""
    args = build_parser().parse_args(list(argv) if argv is not None else sys.argv[1:])
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k not in ("host", "port") and v is not None
    }
    try:
        settings = load_settings(overrides)
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        app = build_app(settings)
    except SoftphoneError as exc:
        print(f"softphone-backend: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
