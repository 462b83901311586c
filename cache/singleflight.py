"""Single-flight: however many callers miss on one key at once, one load runs."""

from __future__ import annotations

import asyncio
import functools
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Coalesces concurrent loads of the same key into one.

    The first caller of a key starts the load as a task; later callers await the same
    task. The task is shielded so that one impatient caller being cancelled does not
    cancel the load the others are waiting for.
    """

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task[T]] = {}
        self.merged = 0  # callers that waited for a load another caller started

    def __len__(self) -> int:
        return len(self._inflight)

    async def do(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.merged += 1
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters got it, or nobody was left to care
