"""Faults: each an async context manager undone exactly on exit (see _base),
or an awaitable action where it cannot be undone (a kill)."""
