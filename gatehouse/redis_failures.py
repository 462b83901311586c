"""What a failed Redis call can raise, in one place for every Redis user (L2, the event
subscriber, the outbox relay, health).

redis-py wraps socket errors in `RedisError`, but not all of them: on uvloop, a
connection reset in the middle of a call can surface as `RuntimeError('unable to
perform operation on <TCPTransport closed=True ...>; the handler is closed')` (seen: 1-2
per 200 uncached checks while connections were being killed), and a timeout as the
builtin `TimeoutError`. Every place that treats "Redis failed" as "skip Redis for a
moment" catches exactly `REDIS_FAILURES`, so none of these reaches a caller as INTERNAL
or ends a background task.
"""

from __future__ import annotations

from redis.exceptions import RedisClusterException, RedisError

REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
    RuntimeError,
)
