"""Desktop softphone for contact-center agents, built on LiveKit."""

from __future__ import annotations

__version__ = "0.1.0"
