"""Reads that must have begun after the caller arrived, at most one per key per interval.

A `min_revision` the tenant has not reached can only be refused on the word of a store
read that began after the request arrived: a read already under way may predate the
write the caller has just been told about. But refusing must not let a caller aim every
request at Postgres, so reads of one key are spaced `interval` seconds apart and shared:
a caller that arrives just after a read began waits for the next one (at most
`interval`), and everyone who arrived before a read began shares that read.

Deadlines: a read is shared, so it runs without any caller's deadline
(`deadlines.detached`); each caller waits only until its own (`DeadlineExceeded`), and
a read whose every waiter has gone is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Awaitable, Callable, Generic, Hashable, Iterator, TypeVar

from gatehouse import deadlines

T = TypeVar("T")


class FreshRead(Generic[T]):
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, tuple[float, asyncio.Task[T]]] = {}
        self._waiters: dict[asyncio.Task[T], int] = {}  # callers waiting on each unfinished read

    def __len__(self) -> int:
        return len(self._last)

    async def read_since(
        self,
        key: Hashable,
        arrived: float,
        read: Callable[[], Awaitable[T]],
        good_enough: Callable[[T], bool],
    ) -> T:
        """The result of a `read()` of `key` that began at or after `arrived` (a `clock()`
        reading), or of an earlier one whose result is `good_enough`. Raises what that
        read raised, or DeadlineExceeded when this caller's deadline passes first.
        Cancelling a caller never cancels a read others share."""
        async with deadlines.within():
            while True:
                last = self._last.get(key)
                if last is not None:
                    started, task = last
                    if started >= arrived:
                        with self._waiting(task):
                            # shield: this caller's cancellation must not reach the shared read.
                            return await asyncio.shield(task)
                    if not task.done():
                        with self._waiting(task):
                            await asyncio.wait((task,))
                        continue
                    if not task.cancelled() and task.exception() is None and good_enough(task.result()):
                        return task.result()
                    wait = started + self._interval - self._clock()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue  # another waiter may have begun the next read meanwhile
                with deadlines.detached():
                    task = asyncio.ensure_future(read())
                self._last[key] = (self._clock(), task)
                task.add_done_callback(functools.partial(self._done, key))

    @contextlib.contextmanager
    def _waiting(self, task: asyncio.Task[T]) -> Iterator[None]:
        """Count the block as one waiter of `task`; the last waiter to leave before the
        read ends cancels it (nobody is left to use its result)."""
        self._waiters[task] = self._waiters.get(task, 0) + 1
        try:
            yield
        finally:
            left = self._waiters[task] - 1
            if left:
                self._waiters[task] = left
            else:
                del self._waiters[task]
                if not task.done():
                    task.cancel()

    def _done(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if not task.cancelled():
            task.exception()  # mark retrieved: the waiters got it, or nobody was left to care
        # Keep it for one interval (the spacing needs it), then forget it: the map holds
        # only keys read within the last interval.
        asyncio.get_running_loop().call_later(self._interval, self._forget, key, task)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        last = self._last.get(key)
        if last is not None and last[1] is task:
            del self._last[key]
