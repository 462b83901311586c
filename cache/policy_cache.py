"""The read path's cache: a decorator around the store's two hot reads.

    servicer ──▶ PolicyCache ──▶ L1 (this process, cachetools, bounded, TTL)
                             ──▶ L2 (Redis, keyed by tenant revision)
                             ──▶ Store (Postgres), one load per key however many wait

What it holds, per tenant: the tenant + plan snapshot compiled into a `TenantPolicy`;
per (tenant, subject): the subject's compiled `SubjectGrants`. Every entry is stamped
with the tenant revision it was read at, and the cache keeps the newest revision it
knows of per tenant (from its own loads and writes, and from tenant events): an entry
older than that, or older than a request's `min_revision`, is never served.

The store never knows the cache exists.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cachetools import LRUCache, TTLCache

from gatehouse.cache.l2 import RedisL2
from gatehouse.cache.singleflight import SingleFlight
from gatehouse.engine.decision import SubjectGrants, TenantPolicy, compile_subject, compile_tenant
from gatehouse.engine.model import SubjectRef, SubjectSnapshot, TenantSnapshot
from gatehouse.store.api import Store


@dataclass(slots=True)
class CachedTenant:
    """One tenant as the hot path needs it, compiled once per revision."""

    snapshot: TenantSnapshot
    policy: TenantPolicy
    revision: int
    # Views derived from the snapshot by servicers (e.g. the TenantConfig message),
    # memoised here so they die with the entry.
    views: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CacheStats:
    l1_hits: int = 0
    l2_hits: int = 0
    store_loads: int = 0
    stale_rejections: int = 0


class _Absent:
    """A remembered "no such tenant", so unknown ids do not each cost a query."""

    revision = 0


ABSENT = _Absent()


class PolicyCache:
    def __init__(
        self,
        store: Store,
        l2: RedisL2 | None,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._l2 = l2
        # Tenants are few and small next to (tenant, subject) pairs; give them a tenth.
        self._tenants: TTLCache[str, CachedTenant | _Absent] = TTLCache(
            maxsize=max(16, max_entries // 10), ttl=ttl_seconds, timer=clock
        )
        self._subjects: TTLCache[tuple[str, str], SubjectGrants] = TTLCache(
            maxsize=max(16, max_entries), ttl=ttl_seconds, timer=clock
        )
        self._known: LRUCache[str, int] = LRUCache(maxsize=max(16, max_entries))
        self._flight: SingleFlight[Any] = SingleFlight()
        self._background: set[asyncio.Task[None]] = set()
        self.stats = CacheStats()

    # --- reads ---

    def known_revision(self, tenant_id: str) -> int:
        return self._known.get(tenant_id, 0)

    async def tenant(self, tenant_id: str, min_revision: int = 0) -> CachedTenant | None:
        """The tenant at a revision >= max(min_revision, newest known), or None if absent."""
        need = max(min_revision, self._known.get(tenant_id, 0))
        entry = self._tenants.get(tenant_id)
        if entry is ABSENT and min_revision == 0:
            self.stats.l1_hits += 1
            return None
        if isinstance(entry, CachedTenant):
            if entry.revision >= need:
                self.stats.l1_hits += 1
                return entry
            self.stats.stale_rejections += 1
        return await self._load(("t", tenant_id), need, lambda: self._fetch_tenant(tenant_id, need))

    async def subject(self, tenant_id: str, subject: SubjectRef, min_revision: int = 0) -> SubjectGrants | None:
        """One subject's compiled grants at a revision >= max(min_revision, newest known)."""
        key = (tenant_id, subject.key)
        need = max(min_revision, self._known.get(tenant_id, 0))
        entry = self._subjects.get(key)
        if entry is not None:
            if entry.revision >= need:
                self.stats.l1_hits += 1
                return entry
            self.stats.stale_rejections += 1
        return await self._load(("s", *key), need, lambda: self._fetch_subject(tenant_id, subject, need))

    async def _load(self, key: tuple[str, ...], need: int, fetch: Callable[[], Any]) -> Any:
        entry = await self._flight.do((*key, need), fetch)
        return None if entry is ABSENT else entry

    async def _fetch_tenant(self, tenant_id: str, need: int) -> CachedTenant | _Absent:
        snapshot = await self._l2.get_tenant(tenant_id, need) if self._l2 else None
        if snapshot is not None:
            self.stats.l2_hits += 1
        else:
            self.stats.store_loads += 1
            snapshot = await self._store.load_tenant(tenant_id)
            if snapshot is None:
                self._tenants[tenant_id] = ABSENT
                return ABSENT
            if self._l2 is not None:
                self._spawn(self._l2.put_tenant(snapshot))
        self._note(tenant_id, snapshot.revision)
        entry = CachedTenant(snapshot, compile_tenant(snapshot), snapshot.revision)
        self._tenants[tenant_id] = entry
        return entry

    async def _fetch_subject(self, tenant_id: str, subject: SubjectRef, need: int) -> SubjectGrants | _Absent:
        snapshot: SubjectSnapshot | None = (
            await self._l2.get_subject(tenant_id, subject.key, need) if self._l2 else None
        )
        if snapshot is not None:
            self.stats.l2_hits += 1
        else:
            self.stats.store_loads += 1
            snapshot = await self._store.load_subject(tenant_id, subject)
            if snapshot is None:
                return ABSENT
            if self._l2 is not None:
                self._spawn(self._l2.put_subject(snapshot))
        self._note(tenant_id, snapshot.revision)
        grants = compile_subject(snapshot)
        self._subjects[(tenant_id, subject.key)] = grants
        return grants

    # --- what writes and events tell the cache ---

    async def tenant_changed(self, tenant_id: str, revision: int) -> None:
        """A write committed `revision`: nothing older is served from here on, here or
        (through the L2 pointer) in any sidecar sharing this Redis."""
        self._note(tenant_id, revision)
        if self._tenants.get(tenant_id) is ABSENT:
            del self._tenants[tenant_id]
        if self._l2 is not None:
            await self._l2.advance(tenant_id, revision)

    def evict_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)
        for key in [k for k in self._subjects.keys() if k[0] == tenant_id]:
            self._subjects.pop(key, None)

    def evict_subject(self, tenant_id: str, subject_key: str) -> None:
        self._subjects.pop((tenant_id, subject_key), None)

    def clear(self) -> None:
        self._tenants.clear()
        self._subjects.clear()

    def _note(self, tenant_id: str, revision: int) -> None:
        if revision > self._known.get(tenant_id, 0):
            self._known[tenant_id] = revision

    def _spawn(self, coro: Any) -> None:
        # L2 fills happen behind the answer: the caller never waits on Redis to write.
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background L2 writes (used at shutdown and by tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tenants) + len(self._subjects)
