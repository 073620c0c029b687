"""Managed processes: the pinned livekit-server binary and a local server."""
