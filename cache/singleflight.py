"""Single-flight: however many callers miss on one key at once, one load runs."""

from __future__ import annotations

import asyncio
import functools
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from gatehouse import deadlines

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Coalesces concurrent loads of the same key into one.

    The first caller of a key starts the load as a task; later callers wait for the same
    task. The load is nobody's own: it runs without any caller's deadline
    (`deadlines.detached`), and a caller that leaves (cancelled, or its deadline passed:
    `DeadlineExceeded`) does not cancel it for the others. When the last waiter has left,
    though, nobody wants the result, and the load is cancelled (its statement with it)
    instead of holding a pool connection for nothing: abandoned calls leave no backlog.
    """

    def __init__(self) -> None:
        self._inflight: dict[Hashable, _Flight[T]] = {}
        self.merged = 0  # callers that waited for a load another caller started

    def __len__(self) -> int:
        return len(self._inflight)

    async def do(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """The result of one `load()` of `key` shared with every concurrent caller; raises
        what it raised, or DeadlineExceeded when this caller's deadline passes first."""
        flight = self._inflight.get(key)
        if flight is None:
            with deadlines.detached():
                task: asyncio.Task[T] = asyncio.ensure_future(load())
            flight = self._inflight[key] = _Flight(task)
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.merged += 1
        flight.waiters += 1
        try:
            async with deadlines.within():
                # shield: this waiter's cancellation must not reach the shared task.
                return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Every waiter has gone. A caller arriving from now on starts a new load
                # rather than joining one that is being cancelled.
                if self._inflight.get(key) is flight:
                    del self._inflight[key]
                flight.task.cancel()

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        flight = self._inflight.get(key)
        if flight is not None and flight.task is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters got it, or nobody was left to care
