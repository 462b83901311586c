"""The read path's cache: a decorator around the store's two hot reads.

    servicer ──▶ PolicyCache ──▶ L1 (this process, bounded, TTL: cache.l1)
                             ──▶ L2 (Redis, keyed by tenant revision)
                             ──▶ Store (Postgres), one load per key however many wait

What it holds, per tenant: the tenant + plan snapshot compiled into a `TenantPolicy`;
per (tenant, subject): the subject's compiled `SubjectGrants`. Every entry is stamped
with the tenant revision it was read at. Tenant events (and this process's own admin
writes, which the store publishes) raise *floors*: a tenant-wide event at revision R makes every entry of that
tenant older than R unservable; a subject event (membership, assignment, key) does so
for that subject's grants only, so one user's change does not empty a tenant's cache.
An entry below its floor, or below a request's `min_revision`, is never served; it is
reloaded from L2 at the tenant's newest revision, or from the store.

A `min_revision` above every revision this process has heard of (a write through
another sidecar, not yet evented here; or one the tenant never reached) is looked up in
the store by a `FreshRead`: one read per tenant per `revision_probe_seconds`, shared. If
a read begun after the request arrived finds the tenant older, the request gets
`RevisionNotReached` (never an older answer), and repeating it costs Postgres nothing
more than that one read per interval.

**Bounded staleness** (`max_staleness_seconds`, `GATEHOUSE_MAX_STALENESS_SECONDS`). Events
only prove an entry stale; nothing in an entry proves it current. So the cache keeps one
moment, `confirmed_until`: the subscriber calls `confirm(T)` once it has applied every
stream entry up to a relay heartbeat saying "every write committed before T is published"
(`store.relay`), and the cache is then current as of T until T + max staleness. Past
that (relay stalled, crashed or cut off; stream unreadable; Redis frozen), an L1 entry is
served only if it was itself read from Postgres within max staleness; anything else is
re-read from Postgres (L2 is skipped: its data is current only as of the same
confirmation), and when Postgres cannot answer the read fails with `Stale` (UNAVAILABLE,
`GATEHOUSE_STALE`), never an older answer. A hit while confirmed costs one comparison
more (`cache.l1`); `peek_*`, and so remembered answers (`cache.answers`), obey the same
rule. The bound is measured on this process's monotonic clock from T, which is the
database's wall clock: it holds up to the skew between this host's clock and Postgres'
(NTP keeps it to milliseconds).

Traces: the RPC's span says which tier answered (`gatehouse.cache.tier`, the deepest one
a call needed: l1, l2 or postgres; `tracing.note_tier`). An L1 hit notes it only while
tracing is on (one module-flag test); a load notes where it came from for every caller
sharing it through the single-flight, not only the one whose task ran it.

Rosters (LookupSubjects, server/lookup.py): a whole tenant compiled for deciding, its
policy and every member's grants read in one snapshot (`TenantRoster`, engine/lookup.py),
kept for at most `max_rosters` tenants. A roster is one revision of the whole tenant, so
it is served only while no change newer than it has been heard of for its tenant, of
any kind: `_latest` holds the newest revision heard per tenant (events, this process's
writes, every load), and a roster below it, or below the request's `min_revision`, is
read again: advanced, when every revision since it is known to have changed one subject
only (`_changes`: the subject each subject event and each of this process's subject
writes named, per revision), by reading just those subjects in one snapshot and patching
the roster and its listings (`TenantRoster.advanced`); else whole. Rosters come from Postgres only (never L2: a 10,000-member tenant is
megabytes) and obey the same bounded-staleness rule as every entry.

The store never knows the cache exists: it publishes every committed write to its
subscribers (`store.api.Subscribable`), and `store_changed` is one of them.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

from cachetools import LRUCache

from gatehouse import deadlines, tracing
from gatehouse.cache.fresh_read import FreshRead
from gatehouse.cache.l1 import ExpiringMap
from gatehouse.cache.l2 import RedisL2
from gatehouse.cache.singleflight import SingleFlight
from gatehouse.engine.decision import SubjectGrants, TenantPolicy, compile_subject, compile_tenant
from gatehouse.engine.patterns import PermissionSet
from gatehouse.engine.lookup import TenantRoster, compile_roster
from gatehouse.engine.model import RosterSnapshot, SubjectRef, SubjectSnapshot, TenantSnapshot
from gatehouse.errors import RevisionNotReached, Stale, StoreUnavailable
from gatehouse.events import SUBJECT_KINDS
from gatehouse.store.api import StoreReader, TenantChange


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
    unconfirmed_loads: int = 0  # Postgres reads made because confirmation had lapsed (L2 skipped)
    stale_refused: int = 0  # reads failed with Stale: not confirmed, and Postgres did not answer
    l1_misses: int = 0  # lookups L1 could not serve (absent, expired, or below a floor)
    l2_misses: int = 0  # L2 lookups that found nothing current (then Postgres)
    store_absent: int = 0  # Postgres loads that found no such tenant or subject
    roster_hits: int = 0  # lookups served a whole-tenant roster from L1
    roster_loads: int = 0  # whole-tenant rosters read from Postgres
    roster_advances: int = 0  # rosters brought forward by reading only the subjects changed since


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class _FloorMap(LRUCache[K, int], Generic[K]):
    """An LRU map of floors that reports what it drops, so nothing is forgotten silently."""

    def __init__(self, maxsize: int, dropped: Callable[[K, int], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._dropped = dropped

    def raise_to(self, key: K, revision: int) -> bool:
        """Raise the floor of `key` to `revision`; False when it was already that high."""
        if self.get(key, 0) >= revision:
            return False
        self[key] = revision
        return True

    def popitem(self) -> tuple[K, int]:
        key, value = super().popitem()
        self._dropped(key, value)
        return key, value


MAX_ADVANCE_SUBJECTS = 64  # a roster behind by more changed subjects is read whole
# Members compiled between two yields to the event loop when a roster is read whole (a
# few ms of CPU; 10,000 members in one go held the loop, and every CheckAccess, 100-200 ms).
ROSTER_CHUNK = 256
MAX_CHANGES = 1024  # per-revision changes remembered per tenant holding a roster


async def _compiled_roster(snapshot: RosterSnapshot) -> TenantRoster:
    """`engine.lookup.compile_roster`, ROSTER_CHUNK members at a time, yielding to the
    event loop between chunks (CheckAccess is served on it)."""
    shared: dict[tuple[str, ...], PermissionSet] = {}
    members: list[SubjectGrants] = []
    for start in range(0, len(snapshot.members), ROSTER_CHUNK):
        members.extend(compile_subject(member, shared) for member in snapshot.members[start:start + ROSTER_CHUNK])
        await asyncio.sleep(0)
    return compile_roster(snapshot, members)


class Absent:
    """A remembered "no such tenant", so unknown ids do not each cost a query."""

    revision = 0


ABSENT = Absent()


class PolicyCache:
    def __init__(
        self,
        store: StoreReader,
        l2: RedisL2 | None,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        revision_probe_seconds: float = 0.05,
        max_staleness_seconds: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_rosters: int = 8,
    ) -> None:
        """`max_staleness_seconds` None: no bound (entries are trusted until an event, a
        gap or their TTL says otherwise), for tests of other things and tools."""
        self._store = store
        self._l2 = l2
        self._clock = clock
        self._wall = wall_clock
        self._max_staleness = math.inf if max_staleness_seconds is None else max_staleness_seconds
        # Until when (on `clock`) the whole cache is confirmed current; not before the
        # first heartbeat, unless there is no bound.
        self._confirmed_until = math.inf if max_staleness_seconds is None else -math.inf
        # Tenants are few and small next to (tenant, subject) pairs; give them a tenth.
        self._tenants: ExpiringMap[str, CachedTenant | Absent] = ExpiringMap(
            max(16, max_entries // 10), ttl_seconds, clock
        )
        self._subjects: ExpiringMap[tuple[str, str], SubjectGrants] = ExpiringMap(
            max(16, max_entries), ttl_seconds, clock
        )
        # Floors: the oldest revision an entry may have and still be served. Bounded like
        # the entries; a subject floor that falls out is folded into its tenant's floor
        # (which every entry of the tenant is checked against: more eviction, never less),
        # and a tenant floor that falls out takes that tenant's entries with it.
        self._tenant_floor: _FloorMap[str] = _FloorMap(max(16, max_entries), self._tenant_floor_dropped)
        self._subject_floor: _FloorMap[tuple[str, str]] = _FloorMap(max(16, max_entries), self._subject_floor_dropped)
        # Whole-tenant rosters (LookupSubjects), and the newest revision heard of per
        # tenant, which a roster must have reached to be served. A tenant whose newest
        # revision falls out takes its roster with it (nothing is then known to bound it).
        self._rosters: ExpiringMap[str, TenantRoster] = ExpiringMap(max(1, max_rosters), ttl_seconds, clock)
        self._latest: _FloorMap[str] = _FloorMap(max(16, max_entries), self._latest_dropped)
        # Per tenant holding a roster: revision -> the one subject that revision changed.
        self._changes: dict[str, dict[int, str]] = {}
        self._listeners: list[Callable[[str, int], None]] = []
        self._flight: SingleFlight[Any] = SingleFlight()
        self._probe: FreshRead[CachedTenant | Absent] = FreshRead(revision_probe_seconds)
        self._background: set[asyncio.Task[None]] = set()
        self.stats = CacheStats()

    # --- reads ---

    def peek_tenant(self, tenant_id: str, min_revision: int = 0) -> CachedTenant | Absent | None:
        """What `tenant()` would answer from L1 without waiting: the entry, ABSENT (known
        not to exist), or None when it would have to load. Answers remembered by their
        request bytes (`cache.answers`) are served only while this returns their entry."""
        entry = self._tenants.get(tenant_id, self._confirmed_until)
        if entry is None:
            return None
        if entry is ABSENT:
            return ABSENT if min_revision == 0 else None
        return entry if entry.revision >= self._tenant_need(tenant_id, min_revision) else None

    def peek_subject(self, tenant_id: str, subject_key: str, min_revision: int = 0) -> SubjectGrants | None:
        """What `subject()` would answer from L1 without waiting, or None when it would load."""
        key = (tenant_id, subject_key)
        entry = self._subjects.get(key, self._confirmed_until)
        if entry is None:
            return None
        return entry if entry.revision >= self._subject_need(key, min_revision) else None

    def _tenant_need(self, tenant_id: str, min_revision: int) -> int:
        """The oldest revision a tenant entry may have and be served: the request's, or the floor."""
        return max(min_revision, self._tenant_floor.get(tenant_id, 0))

    def _subject_need(self, key: tuple[str, str], min_revision: int) -> int:
        """The same for a subject's grants: its own floor counts as well as the tenant's."""
        return max(self._tenant_need(key[0], min_revision), self._subject_floor.get(key, 0))

    async def tenant(self, tenant_id: str, min_revision: int = 0) -> CachedTenant | None:
        """The tenant at a revision >= max(min_revision, its floor), or None if absent."""
        entry = self.peek_tenant(tenant_id, min_revision)
        if entry is not None:
            self.stats.l1_hits += 1
            if tracing.on:
                tracing.note_tier("l1")
            return None if isinstance(entry, Absent) else entry
        self.stats.l1_misses += 1
        held = self._tenants.held(tenant_id)
        if isinstance(held, CachedTenant):
            self.stats.stale_rejections += 1
        need = self._tenant_need(tenant_id, min_revision)
        if min_revision > max(self._tenant_floor.get(tenant_id, 0), held.revision if held is not None else 0):
            return await self._reach(tenant_id, min_revision)
        confirmed = self.confirmed()
        return await self._load(
            ("t", tenant_id),
            need,
            confirmed,
            held is not None,
            lambda: self._fetch_tenant(tenant_id, need, from_l2=confirmed),
        )

    async def _reach(self, tenant_id: str, min_revision: int) -> CachedTenant:
        """The tenant at >= `min_revision`, a revision this process has not heard of: from a
        store read (never L2, whose pointer may lag Postgres while Redis was away) that began
        after this call, spaced and shared per tenant; RevisionNotReached when that read
        finds the tenant older (current revision 0: no such tenant)."""
        async def read() -> CachedTenant | Absent:
            return (await self._fetch_tenant(tenant_id, min_revision, from_l2=False))[0]

        entry = await self._probe.read_since(
            tenant_id, time.monotonic(), read, lambda found: found.revision >= min_revision
        )
        if tracing.on:
            tracing.note_tier("postgres")
        if not isinstance(entry, CachedTenant) or entry.revision < min_revision:
            raise RevisionNotReached(tenant_id, min_revision, entry.revision)
        return entry

    async def subject(self, tenant_id: str, subject: SubjectRef, min_revision: int = 0) -> SubjectGrants | None:
        """One subject's compiled grants at a revision >= max(min_revision, its floors)."""
        entry = self.peek_subject(tenant_id, subject.key, min_revision)
        if entry is not None:
            self.stats.l1_hits += 1
            if tracing.on:
                tracing.note_tier("l1")
            return entry
        self.stats.l1_misses += 1
        key = (tenant_id, subject.key)
        held = key in self._subjects
        if held:
            self.stats.stale_rejections += 1
        need = self._subject_need(key, min_revision)
        confirmed = self.confirmed()
        return await self._load(
            ("s", *key), need, confirmed, held, lambda: self._fetch_subject(tenant_id, subject, need, from_l2=confirmed)
        )

    def peek_roster(self, tenant_id: str, min_revision: int = 0) -> TenantRoster | None:
        """The tenant's roster from L1 when it is at the newest revision heard of (and at
        least `min_revision`), else None."""
        entry = self._rosters.get(tenant_id, self._confirmed_until)
        if entry is None:
            return None
        return entry if entry.revision >= max(min_revision, self._latest.get(tenant_id, 0)) else None

    async def roster(self, tenant_id: str, min_revision: int = 0) -> TenantRoster | None:
        """The whole tenant compiled at one revision, at least `min_revision` and the
        newest heard of; None when there is no such tenant. Ask `tenant(tenant_id,
        min_revision)` first: it refuses (RevisionNotReached, once per probe interval)
        a revision the tenant has not reached, which this would read Postgres for."""
        entry = self.peek_roster(tenant_id, min_revision)
        if entry is not None:
            self.stats.roster_hits += 1
            return entry
        need = max(min_revision, self._latest.get(tenant_id, 0))
        confirmed = self.confirmed()
        return await self._load(
            ("r", tenant_id), need, confirmed, tenant_id in self._rosters,
            lambda: self._fetch_roster(tenant_id, need),
        )

    def _changed_between(self, tenant_id: str, since: int, until: int) -> set[str] | None:
        """The subjects revisions since+1..until changed, when each of them is known to
        have changed one subject only; else None."""
        changes = self._changes.get(tenant_id, {})
        found = set()
        for revision in range(since + 1, until + 1):
            subject = changes.get(revision)
            if subject is None:
                return None
            found.add(subject)
        return found

    async def _advance_roster(self, tenant_id: str, need: int) -> TenantRoster | None:
        """The held roster brought to >= `need` by reading only the subjects changed since
        it, in one snapshot; None when that cannot be proven exact (a tenant-wide change,
        a revision not heard of, too many subjects): then the whole roster is read."""
        held = self._rosters.held(tenant_id)
        if held is None or held.revision >= need:
            return None
        changed = self._changed_between(tenant_id, held.revision, need)
        if changed is None or len(changed) > MAX_ADVANCE_SUBJECTS:
            return None
        refs = [SubjectRef(*key.split("/", 1)) for key in sorted(changed)]
        current_until = self._clock() + self._max_staleness
        snapshots = await self._store.load_subjects(tenant_id, refs)
        if not snapshots:
            return None
        revision = snapshots[0].revision
        # Read at `revision`, which may be past `need`: only exact if every revision up to
        # it is accounted for by these same subjects.
        later = self._changed_between(tenant_id, need, revision) if revision > need else set()
        if later is None or not later <= changed or revision < need:
            return None
        shared: dict[tuple[str, ...], PermissionSet] = {}
        compiled: dict[str, SubjectGrants | None] = {
            snapshot.subject.key: compile_subject(snapshot, shared) for snapshot in snapshots
        }
        roster = held.advanced(revision, compiled, self._wall())
        self.stats.roster_advances += 1
        self._put_roster(tenant_id, roster, current_until)
        return roster

    def _note_change(self, tenant_id: str, revision: int, subject_key: str) -> None:
        """Revision `revision` of the tenant changed `subject_key` only (kept while the
        tenant holds a roster, at most MAX_CHANGES per tenant)."""
        if tenant_id not in self._rosters:
            return
        changes = self._changes.setdefault(tenant_id, {})
        changes[revision] = subject_key
        if len(changes) > MAX_CHANGES:
            del changes[min(changes)]

    def _put_roster(self, tenant_id: str, roster: TenantRoster, current_until: float) -> None:
        """Keep `roster` (read at its revision, which proves that revision committed), and
        forget the changes it already holds, and those of tenants whose roster is gone
        (so `_changes` stays as small as the rosters kept)."""
        self._raise_floor(tenant_id, roster.revision)
        self._rosters.put(tenant_id, roster, current_until)
        for other in [t for t in self._changes if t != tenant_id and self._rosters.held(t) is None]:
            del self._changes[other]
        changes = self._changes.get(tenant_id)
        if changes:
            for old in [r for r in changes if r <= roster.revision]:
                del changes[old]

    async def _fetch_roster(self, tenant_id: str, need: int) -> tuple[TenantRoster | Absent, str]:
        advanced = await self._advance_roster(tenant_id, need)
        if advanced is not None:
            return advanced, "postgres"
        self.stats.roster_loads += 1
        current_until = self._clock() + self._max_staleness
        snapshot = await self._store.load_roster(tenant_id)
        if snapshot is None:
            return ABSENT, "postgres"
        if snapshot.revision < need:
            raise RevisionNotReached(tenant_id, need, snapshot.revision)
        roster = await _compiled_roster(snapshot)
        self._put_roster(tenant_id, roster, current_until)
        return roster, "postgres"

    async def _load(
        self,
        key: tuple[str, ...],
        need: int,
        confirmed: bool,
        held: bool,
        fetch: Callable[[], Awaitable[tuple[T | Absent, str]]],
    ) -> T | None:
        """Load through the single-flight. Unconfirmed, with an entry held that may not be
        served any more, a store failure is `Stale` (the cache refused its answer); with
        nothing held, it is the store's own error (there was no answer to refuse)."""
        # `confirmed` is part of the flight's key: a read that may not use L2 never waits
        # for (and takes the answer of) one that may.
        if not confirmed:
            self.stats.unconfirmed_loads += 1
        try:
            entry, tier = await self._flight.do((*key, need, confirmed), fetch)
        except StoreUnavailable as exc:
            if confirmed or not held:
                raise
            self.stats.stale_refused += 1
            raise Stale(self.confirmation_age(), self._max_staleness) from exc
        if tracing.on:
            tracing.note_tier(tier)
        return None if isinstance(entry, Absent) else entry

    @property
    def single_flight_merges(self) -> int:
        """Loads a caller did not start because the same key's load was running (a count)."""
        return self._flight.merged

    # --- bounded staleness ---

    def confirm(self, through_unix: float) -> None:
        """Every write committed before `through_unix` (unix seconds, the database's clock)
        has been applied here: the cache is current as of then, for max staleness more.
        Never moves confirmation back (heartbeats of several relays arrive in any order)."""
        as_of = self._clock() - max(0.0, self._wall() - through_unix)
        until = as_of + self._max_staleness
        if until > self._confirmed_until:
            self._confirmed_until = until

    @property
    def max_staleness(self) -> float:
        """The bound, in seconds (inf: none)."""
        return self._max_staleness

    def confirmed(self) -> bool:
        """True while the cache as a whole is confirmed current within max staleness."""
        return self._clock() < self._confirmed_until

    def confirmation_age(self) -> float:
        """Seconds since the data was last confirmed current (inf: never; 0 with no bound)."""
        if self._max_staleness == math.inf:
            return 0.0
        return max(0.0, self._clock() - (self._confirmed_until - self._max_staleness))

    async def _fetch_tenant(
        self, tenant_id: str, need: int, *, from_l2: bool = True
    ) -> tuple[CachedTenant | Absent, str]:
        """The tenant from L2 or the store, and which of them ("l2", "postgres") answered."""
        snapshot = await self._l2.get_tenant(tenant_id, need) if self._l2 and from_l2 else None
        # From L2: current only as far as the cache is confirmed. From Postgres: current
        # on its own until max staleness after the read began.
        current_until = -math.inf
        if snapshot is not None:
            self.stats.l2_hits += 1
        else:
            if self._l2 and from_l2:
                self.stats.l2_misses += 1
            self.stats.store_loads += 1
            current_until = self._clock() + self._max_staleness
            snapshot = await self._store.load_tenant(tenant_id)
            if snapshot is None:
                self.stats.store_absent += 1
                self._tenants.put(tenant_id, ABSENT, current_until)
                return ABSENT, "postgres"
            if self._l2 is not None:
                self._spawn(self._l2.put_tenant(snapshot))
        entry = CachedTenant(snapshot, compile_tenant(snapshot), snapshot.revision)
        # Read at revision N, the tenant proves N committed: whatever this process holds
        # of it from before N may be stale (events can lag, or never come), so the floor
        # rises to N. Otherwise grants read at R < N would be decided with this entry and
        # the answer would name revision N without having been computed at it.
        self._raise_floor(tenant_id, snapshot.revision)
        self._tenants.put(tenant_id, entry, current_until)
        return entry, "postgres" if current_until > -math.inf else "l2"

    def _raise_floor(self, tenant_id: str, revision: int) -> None:
        if revision > self._tenant_floor.get(tenant_id, 0):
            self.tenant_event(tenant_id, revision)

    async def _fetch_subject(
        self, tenant_id: str, subject: SubjectRef, need: int, *, from_l2: bool = True
    ) -> tuple[SubjectGrants | Absent, str]:
        """The subject's grants from L2 or the store, and which of them answered."""
        snapshot: SubjectSnapshot | None = (
            await self._l2.get_subject(tenant_id, subject.key, need) if self._l2 and from_l2 else None
        )
        current_until = -math.inf  # as in _fetch_tenant
        if snapshot is not None:
            self.stats.l2_hits += 1
        else:
            if self._l2 and from_l2:
                self.stats.l2_misses += 1
            self.stats.store_loads += 1
            current_until = self._clock() + self._max_staleness
            snapshot = await self._store.load_subject(tenant_id, subject)
            if snapshot is None:
                self.stats.store_absent += 1
                return ABSENT, "postgres"
            if snapshot.revision < need:
                # Callers ask for a revision only once the tenant is known to have reached
                # it; never hand out older grants even if one does not.
                raise RevisionNotReached(tenant_id, need, snapshot.revision)
            if self._l2 is not None:
                self._spawn(self._l2.put_subject(snapshot))
        grants = compile_subject(snapshot)
        self._raise_floor(tenant_id, snapshot.revision)  # the same proof, from the other side
        self._subjects.put((tenant_id, subject.key), grants, current_until)
        return grants, "postgres" if current_until > -math.inf else "l2"

    # --- what writes and events tell the cache ---

    def on_tenant_change(self, listener: Callable[[str, int], None]) -> Callable[[], None]:
        """Call `listener(tenant_id, revision)` after each tenant-wide change; returns an
        unsubscribe function. Listeners must not block (WatchTenantConfig sets a flag)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def tenant_event(self, tenant_id: str, revision: int, *, notify: bool = True) -> None:
        """Everything of the tenant older than `revision` is stale (duplicates and
        out-of-order events are harmless: floors only rise). `notify`: the change may
        have touched the tenant's config, so config listeners hear of it."""
        self._latest.raise_to(tenant_id, revision)
        if self._tenant_floor.raise_to(tenant_id, revision):
            entry = self._tenants.get(tenant_id)
            if entry is ABSENT or (entry is not None and entry.revision < revision):
                self._tenants.pop(tenant_id, None)
        # Listeners hear of a config change even when the floor is already past it: this
        # process's own non-config write (which raises the floor, telling nobody) may land
        # before another sidecar's config event; skipping that event left watchers on
        # the old config for good. They drop revisions they have seen.
        if notify:
            for listener in list(self._listeners):
                listener(tenant_id, revision)

    def subject_event(self, tenant_id: str, subject_key: str, revision: int) -> None:
        """One subject's grants older than `revision` are stale; the rest of the tenant is not."""
        key = (tenant_id, subject_key)
        self._latest.raise_to(tenant_id, revision)
        self._note_change(tenant_id, revision, subject_key)
        if self._subject_floor.raise_to(key, revision):
            entry = self._subjects.get(key)
            if entry is not None and entry.revision < revision:
                self._subjects.pop(key, None)

    async def tenant_changed(self, tenant_id: str, revision: int, *, config: bool = True) -> None:
        """This process committed `revision`: nothing older is served from here on, here or
        (through the L2 pointer) in any sidecar sharing this Redis. `config=False`: the
        write cannot have changed the tenant's config, so config listeners are not woken."""
        self.tenant_event(tenant_id, revision, notify=config)
        if self._l2 is not None:
            await self._l2.advance(tenant_id, revision)

    async def store_changed(self, change: TenantChange) -> None:
        """The store's listener (`Subscribable.subscribe`): a write this process committed."""
        if change.subject and change.kind in SUBJECT_KINDS:
            self._note_change(change.tenant_id, change.revision, change.subject)
        await self.tenant_changed(change.tenant_id, change.revision, config=change.config)

    def evict_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)
        self._rosters.pop(tenant_id, None)
        self._changes.pop(tenant_id, None)
        for key in [k for k in self._subjects.keys() if k[0] == tenant_id]:
            self._subjects.pop(key, None)

    def clear(self) -> None:
        """Forget every entry (a gap in the event stream: nothing can be proven current)."""
        self._tenants.clear()
        self._subjects.clear()
        self._rosters.clear()
        self._changes.clear()

    def _tenant_floor_dropped(self, tenant_id: str, revision: int) -> None:
        self.evict_tenant(tenant_id)

    def _latest_dropped(self, tenant_id: str, revision: int) -> None:
        self._rosters.pop(tenant_id, None)
        self._changes.pop(tenant_id, None)

    def _subject_floor_dropped(self, key: tuple[str, str], revision: int) -> None:
        # No scan of the tenant's entries needed: each is checked against the tenant
        # floor when read, and one below it is never served.
        self._tenant_floor.raise_to(key[0], revision)

    def _spawn(self, coro: Any) -> None:
        # L2 fills happen behind the answer: the caller never waits on Redis to write, and
        # its deadline does not cut the fill short (the socket timeout bounds it).
        with deadlines.detached():
            task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background L2 writes (used at shutdown and by tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tenants) + len(self._subjects)
