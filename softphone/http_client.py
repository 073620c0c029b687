"""HTTP clients that share one TLS context.

``httpx.AsyncClient()`` builds a TLS context of its own, loading the CA
bundle: about 20 ms of CPU, on the event loop, for every client, even one
that only ever speaks plain HTTP to a loopback server (a connection's
recovery probe, a server's readiness check). One context, built on first
use, serves every client of the process; ``ssl.SSLContext`` is safe to share.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's client TLS context (httpx's default: certifi's CAs, verification on)."""
    return httpx.create_ssl_context()


def async_client(**kwargs: Any) -> httpx.AsyncClient:
    """``httpx.AsyncClient(**kwargs)`` verifying servers with the shared context."""
    return httpx.AsyncClient(verify=tls_context(), **kwargs)
