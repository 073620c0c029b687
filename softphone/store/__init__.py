"""Persistence on the workstation: the SQLite call history."""
