"""Idempotency keys for admin mutations: same key + same request within 24 hours = the
same response and no second write; same key + another request = refused.

A call claims `(principal, key)` before it runs (one INSERT decides who runs, however
many arrive at once), and stores its response when it succeeds; a failed call releases
the claim, so a retry runs again (a failure wrote nothing). A claim left `running` by a
crashed process is taken over after `STALE_SECONDS`. The outbox relay prunes rows older
than the retention.

The window between the mutation's commit and storing the response is not covered: a
process that dies exactly there leaves a claim that a retry takes over after
`STALE_SECONDS` and runs again. Closing it would mean writing the response inside every
mutation's own transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import asyncpg

from gatehouse.store.driver_errors import translated

RETENTION_SECONDS = 24 * 3600
STALE_SECONDS = 60


class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this call runs the mutation
    DONE = "done"  # an earlier call with the same request finished: replay its response
    RUNNING = "running"  # an identical call is running right now: wait for it
    MISMATCH = "mismatch"  # the key was used for another request


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    response: bytes | None = None


_CLAIM = """
WITH expired AS (
    DELETE FROM idempotency_keys
    WHERE principal = $1 AND key = $2
      AND (created_at < now() - make_interval(secs => $5)
           OR (state = 'running' AND created_at < now() - make_interval(secs => $6)))
)
INSERT INTO idempotency_keys (principal, key, method, request_hash, state)
VALUES ($1, $2, $3, $4, 'running')
ON CONFLICT (principal, key) DO NOTHING
RETURNING 1
"""


class IdempotencyKeys:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(self, principal: str, key: str, method: str, request_hash: bytes) -> Claim:
        with translated():
            async with self._pool.acquire() as conn:
                claimed = await conn.fetchval(_CLAIM, principal, key, method, request_hash, RETENTION_SECONDS, STALE_SECONDS)
                if claimed:
                    return Claim(ClaimState.CLAIMED)
                row = await conn.fetchrow(
                    "SELECT method, request_hash, state, response FROM idempotency_keys WHERE principal = $1 AND key = $2",
                    principal,
                    key,
                )
        if row is None:  # released or expired between the two statements: try again
            return await self.claim(principal, key, method, request_hash)
        if row["method"] != method or row["request_hash"] != request_hash:
            return Claim(ClaimState.MISMATCH)
        if row["state"] == "done":
            return Claim(ClaimState.DONE, row["response"])
        return Claim(ClaimState.RUNNING)

    async def complete(self, principal: str, key: str, response: bytes) -> None:
        with translated():
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "UPDATE idempotency_keys SET state = 'done', response = $3 WHERE principal = $1 AND key = $2",
                    principal,
                    key,
                    response,
                )

    async def release(self, principal: str, key: str) -> None:
        with translated():
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND state = 'running'",
                    principal,
                    key,
                )

