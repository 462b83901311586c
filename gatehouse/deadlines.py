"""A call's deadline, carried to the I/O it causes (pure asyncio; no grpc).

The server's `Deadline` interceptor (`gatehouse.server.interceptors`) puts each call's
absolute deadline, on the monotonic clock (`time.monotonic()`, seconds: the clock
asyncio's loop keeps, read without looking the loop up), in a context variable for the
handler's task; everything below reads it from there, so no signature
carries it:

* `within()` bounds a block of I/O (a store transaction, a wait for a shared load) by
  the deadline: past it, the block is cancelled (the driver cancels its statement) and
  `DeadlineExceeded` is raised. With no deadline it is free (no timer is armed).
* `cap(timeout)` is the smaller of a library timeout and the time left, for a library
  that takes a timeout argument.
* `detached()` runs work that is not one caller's (a single-flight load other callers
  wait for, a background task) without the caller's deadline: such work is bounded by
  its own means (the single-flight cancels a load once every waiter has gone).

Reading the variable costs a context lookup (~0.03 µs); nothing here runs on a cache hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextvars import ContextVar
from types import TracebackType
from typing import Iterator

from gatehouse.errors import DeadlineExceeded

# The absolute deadline of the call this task works for, in `time.monotonic()` seconds; None: none.
# Public for the one writer on the hot path (the server's Deadline interceptor sets and
# resets it inline: two function calls fewer per call than `begin`/`end`).
CURRENT: ContextVar[float | None] = ContextVar("gatehouse_deadline", default=None)
_deadline = CURRENT


def deadline() -> float | None:
    """The current call's absolute deadline (`time.monotonic()` seconds), or None when it has none."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the current call's deadline (0 or less: passed), or None when
    it has none."""
    at = _deadline.get()
    if at is None:
        return None
    return at - time.monotonic()


def cap(timeout: float | None) -> float | None:
    """`timeout` (seconds, None: unbounded) cut to the time left before the deadline.

    Raises DeadlineExceeded when the deadline has already passed, so the caller does not
    start an operation it cannot finish in time."""
    left = remaining()
    if left is None:
        return timeout
    if left <= 0:
        raise DeadlineExceeded()
    return left if timeout is None or left < timeout else timeout


@contextlib.contextmanager
def bounded(seconds: float | None) -> Iterator[None]:
    """Run the block with a deadline `seconds` from now (None: add none). An enclosing
    deadline that comes sooner still holds: a deadline only ever tightens here."""
    if seconds is None:
        yield
        return
    at = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(at if outer is None or at < outer else outer)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Run the block (and the tasks it creates, which copy the context) without any
    deadline: for shared work whose life is not one caller's."""
    token = _deadline.set(None)
    try:
        yield
    finally:
        _deadline.reset(token)


class within:
    """`async with within():` bounds the block by the current deadline.

    Past the deadline the block's task is cancelled where it waits (asyncpg then cancels
    the running statement on the server; a single-flight waiter stops waiting) and
    DeadlineExceeded is raised in its place; a deadline already passed raises it before
    the block starts. With no deadline, nothing is armed. A TimeoutError the block raises
    itself passes through unchanged."""

    __slots__ = ("_timeout",)

    def __init__(self) -> None:
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> "within":
        at = _deadline.get()
        if at is None:
            return self
        left = at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded()
        # Relative, so the loop's own clock (uvloop's is cached per iteration) arms it.
        self._timeout = asyncio.timeout(left)
        await self._timeout.__aenter__()
        return self

    def disarm(self) -> None:
        """Let the rest of the block run past the deadline (a step whose outcome must be
        known, such as a write's COMMIT). No effect once the deadline has fired."""
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(None)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is None:
            return
        try:
            await timeout.__aexit__(kind, error, traceback)
        except TimeoutError as expired:
            # Raised by __aexit__ only when this deadline cancelled the block.
            raise DeadlineExceeded() from expired
