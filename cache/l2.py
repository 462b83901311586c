"""L2: compiled-entry snapshots in Redis, keyed by tenant and revision.

Keys (one tenant's keys share the hash tag `{<tenant id>}`, so Redis Cluster keeps a
tenant on one slot, and so on one master; the scripts below touch that slot only):

    <prefix>:{<tenant>}:rev                     newest revision known for the tenant
    <prefix>:{<tenant>}:t:<rev>                 tenant + plan snapshot at <rev>
    <prefix>:{<tenant>}:s:<rev>:<type>/<id>     one subject's grants at <rev>

A reader only looks at data of the revision the pointer names, and only when that is at
least the revision it needs, so an entry of an older revision is never read after a bump:
bumping the pointer (on every admin write) orphans the old keys, and TTLs reclaim them.

Redis is a cache, never a dependency: any Redis error opens a breaker for
`retry_after` seconds during which L2 is skipped (reads miss, writes are dropped), so a
dead Redis costs one timeout, not one per request.

Deadlines: the socket timeout is the client's, shared by every call; a call whose
deadline comes sooner bounds its own operation by what is left of it (an
`asyncio.timeout` around that one operation; redis-py drops the connection the
operation was cut on). Cut short that way, a read is a miss and a write is dropped, and
the breaker stays shut: a short deadline says nothing about Redis. With the deadline
already passed, L2 is not asked at all (`deadline_skips`).

Traces: each call inside a sampled RPC is a `redis L2 <what>` client span (`tracing.child_span`;
none while the breaker skips Redis, nothing when tracing is off).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, TypeVar

from gatehouse import deadlines, tracing
from gatehouse.cache import codec
from gatehouse.engine.model import SubjectSnapshot, TenantSnapshot
from gatehouse.events import ADVANCE_POINTER, POINTER_SUFFIX, pointer_key, tenant_tag
from gatehouse.redis_client import RedisClient, redis_client
from gatehouse.redis_failures import REDIS_FAILURES

log = logging.getLogger(__name__)
T = TypeVar("T")
_tracer = tracing.tracer(__name__)

# Return [rev, data] for the pointer's revision when it is >= ARGV[1], else false. The data
# key cannot be declared (its revision is read here), so it is built from KEYS[1] itself:
# the pointer key without ":rev", then ARGV[2] .. rev .. ARGV[3]. It starts with the same
# `<prefix>:{<tenant>}`, so it has KEYS[1]'s hash tag: the same slot, whatever ARGV holds
# (Redis Cluster would otherwise read an undeclared key of another slot as missing, or fail).
_READ_AT_POINTER = """
local rev = redis.call('GET', KEYS[1])
if not rev or tonumber(rev) < tonumber(ARGV[1]) then return false end
local data = redis.call('GET', string.sub(KEYS[1], 1, -%d) .. ARGV[2] .. rev .. ARGV[3])
if not data then return false end
return {rev, data}
""" % (len(POINTER_SUFFIX) + 1)

class RedisL2:
    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        ttl_seconds: float,
        retry_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        timeout: float | None = None,
    ) -> None:
        """`timeout`: the client's socket timeout (seconds), so a deadline further away
        than it arms no timer of its own; None: unknown, every deadline arms one."""
        self._client = client
        self._prefix = prefix
        self._ttl_ms = str(int(ttl_seconds * 1000))
        self._retry_after = retry_after
        self._clock = clock
        self._down_until = 0.0
        self._timeout = timeout
        self._read = client.register_script(_READ_AT_POINTER)
        self._write = client.register_script(ADVANCE_POINTER)
        self.errors = 0
        self.deadline_cuts = 0  # operations cut short by a call's deadline (a miss, breaker shut)
        self.deadline_skips = 0  # operations not tried: the call's deadline had passed

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str, ttl_seconds: float, timeout: float, cluster: bool = False
    ) -> "RedisL2":
        """`cluster`: `url` names a node of a Redis Cluster (gatehouse.redis_client)."""
        # No retries: one timeout, then the breaker skips L2 for a while.
        client = redis_client(url, cluster=cluster, socket_timeout=timeout, socket_connect_timeout=timeout, retry=False)
        return cls(client, prefix=prefix, ttl_seconds=ttl_seconds, timeout=timeout)

    @property
    def circuit_open(self) -> bool:
        """True while the breaker skips Redis (within `retry_after` seconds of an error)."""
        return self._clock() < self._down_until

    @property
    def client(self) -> RedisClient:
        return self._client

    def _tag(self, tenant_id: str) -> str:
        return tenant_tag(self._prefix, tenant_id)

    async def _guard(self, op: Callable[[], Awaitable[T]], fallback: T, what: str = "call") -> T:
        if self._clock() < self._down_until:
            return fallback
        left = deadlines.remaining()
        try:
            with tracing.child_span(_tracer, f"redis L2 {what}", {"db.system.name": "redis", "db.operation.name": "EVALSHA"}):
                if left is None or (self._timeout is not None and left >= self._timeout):
                    return await op()
                if left <= 0:
                    self.deadline_skips += 1
                    return fallback
                cut = asyncio.timeout(left)
                try:
                    async with cut:
                        return await op()
                except TimeoutError:
                    if not cut.expired():
                        raise  # Redis's own timeout: a failure like any other
                    # The call's deadline, not Redis's fault: the breaker stays shut.
                    self.deadline_cuts += 1
                    return fallback
        except REDIS_FAILURES as exc:
            self.errors += 1
            if self._down_until <= self._clock():
                log.warning("redis unavailable, skipping L2 for %.1fs: %s", self._retry_after, exc)
            self._down_until = self._clock() + self._retry_after
            return fallback

    async def get_tenant(self, tenant_id: str, min_revision: int) -> TenantSnapshot | None:
        pointer = pointer_key(self._prefix, tenant_id)
        found = await self._guard(lambda: self._read(keys=[pointer], args=[min_revision, ":t:", ""]), None, "read tenant")
        return codec.load_tenant(found[1]) if found else None

    async def get_subject(self, tenant_id: str, subject_key: str, min_revision: int) -> SubjectSnapshot | None:
        pointer = pointer_key(self._prefix, tenant_id)
        found = await self._guard(
            lambda: self._read(keys=[pointer], args=[min_revision, ":s:", f":{subject_key}"]), None, "read subject"
        )
        return codec.load_subject(found[1]) if found else None

    async def put_tenant(self, snapshot: TenantSnapshot) -> None:
        tag = self._tag(snapshot.tenant.id)
        rev = snapshot.revision
        await self._guard(
            lambda: self._write(
                keys=[f"{tag}{POINTER_SUFFIX}", f"{tag}:t:{rev}"], args=[rev, codec.dump_tenant(snapshot), self._ttl_ms]
            ),
            None,
            "write tenant",
        )

    async def put_subject(self, snapshot: SubjectSnapshot) -> None:
        tag = self._tag(snapshot.tenant_id)
        rev = snapshot.revision
        key = f"{tag}:s:{rev}:{snapshot.subject.key}"
        await self._guard(
            lambda: self._write(keys=[f"{tag}{POINTER_SUFFIX}", key], args=[rev, codec.dump_subject(snapshot), self._ttl_ms]),
            None,
            "write subject",
        )

    async def advance(self, tenant_id: str, revision: int) -> None:
        """Move the tenant's pointer to `revision` (after a write): older data is never read again."""
        pointer = pointer_key(self._prefix, tenant_id)
        await self._guard(lambda: self._write(keys=[pointer], args=[revision, "", self._ttl_ms]), None, "advance")

    async def ping(self) -> None:
        """Return when Redis answers PING, within the client's socket timeout (seconds);
        raise its error (one of REDIS_FAILURES) when it does not. The breaker
        is left alone: this is the health probe's question, not a cache read."""
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()
