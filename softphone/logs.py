"""Logging setup: JSON lines, a request id on every line, no secrets, private files.

Two setups share one formatter:

- :func:`setup_logging` (the desktop app): readable lines on stderr, and JSON
  lines in the profile's own rotating log file (``<profile>/logs/softphone.log``,
  0600 in a 0700 directory), so instances with their own profiles never
  share a file.
- :func:`setup_service_logging` (the backend and its speech workers): JSON
  lines on stderr, where the process supervisor collects them.

:data:`request_id` is a context variable the backend sets for each HTTP
request (and each speech job it hands to a worker process);
:class:`JsonFormatter` puts it on every line logged while it is set, so one
request's lines can be found together.

Secrets never reach a log line: a ``Secret`` prints as ``***``; structured
fields whose name says secret, token, key, password or authorization are
replaced; bearer credentials and JWTs (LiveKit access tokens) in any text are
masked as a last line of defence.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import logging.handlers
import os
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softphone.config import Settings

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "softphone_request_id", default=None
)
REQUEST_ID_HEADER = "x-request-id"
# What a request id taken from a client may look like: short, no spaces or
# quotes, nothing a log viewer or a header could misread.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_SECRET_FIELD = re.compile(r"(?i)secret|token|passw|authoriz|api_?key|credential|^key$")
_SECRET_TEXT = re.compile(
    # JWTs (LiveKit access tokens), then bearer credentials of any shape.
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|(?i:bearer)\s+[^\s\"',;]+"
)
REDACTED = "[redacted]"
# LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_MARK = "_softphone_handler"


def new_request_id(offered: str | None = None) -> str:
    """``offered`` if it is a sane request id (1-64 of ``A-Za-z0-9._:-``), else a new one."""
    if offered and _SANE_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def redact_text(text: str) -> str:
    """``text`` with bearer credentials and JWTs masked."""
    return _SECRET_TEXT.sub(
        lambda m: "Bearer " + REDACTED if m.group().lower().startswith("bearer") else REDACTED,
        text,
    )


def _field_value(name: str, value: Any) -> Any:
    if _SECRET_FIELD.search(name):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, list | tuple | dict):
        # Structured values are kept, but their text is checked too.
        return json.loads(redact_text(json.dumps(value, default=str)))
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id``, extras.

    ``extra`` fields of the record become keys of the object (identities,
    room names, codes); the message stays free of personal data.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_") and name not in out:
                out[name] = _field_value(name, value)
        if record.exc_info:
            out["exc"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact_text(record.exc_text)
        return json.dumps(out, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with the request id and the same masking."""

    def format(self, record: logging.LogRecord) -> str:
        text = redact_text(super().format(record))
        rid = request_id.get()
        return f"{text} [request_id={rid}]" if rid is not None else text


class PrivateRotatingLog(logging.handlers.RotatingFileHandler):
    """A log file that is 0600 from its creation, rotated at 5 MB (3 kept)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
        os.chmod(path, 0o600)  # an older, wider file is tightened

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        return open(fd, "a", encoding=self.encoding)


def _install(handlers: list[logging.Handler], level: str) -> list[logging.Handler]:
    """Replace the handlers an earlier setup installed with ``handlers``."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    for handler in handlers:
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO; URLs are noise in these logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handlers


def setup_logging(settings: Settings) -> list[logging.Handler]:
    """The desktop app: text on stderr, JSON lines in the profile's private rotating file.

    Calling it again replaces what the last call installed.

    Returns:
        The handlers installed on the root logger.
    """
    settings.ensure_dirs()
    stderr = logging.StreamHandler()
    stderr.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file = PrivateRotatingLog(settings.logs_dir / "softphone.log")
    file.setFormatter(JsonFormatter())
    return _install([stderr, file], settings.log_level)


def setup_service_logging(level: str = "INFO") -> list[logging.Handler]:
    """The backend and its workers: JSON lines on stderr.

    Calling it again replaces what the last call installed.

    Returns:
        The handlers installed on the root logger.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    return _install([handler], level)
