"""Dumb reusable widgets: they know nothing of calls, services or the app."""
