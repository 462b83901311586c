"""Cancellation that survives libraries which swallow it."""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raise CancelledError when the current task is being cancelled.

    redis-py can turn a cancellation that lands mid-read into a connection error (or
    drop it); a background loop that catches connection errors to reconnect calls this
    first, so a task being cancelled stops instead of reconnecting forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
