"""Asyncio services without Qt: LiveKit server API, local server, history, transfers."""
