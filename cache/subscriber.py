"""Every sidecar process reads the whole tenant-event stream and evicts what it names.

Not a consumer group: each process must see every event, so each keeps its own position
(the last stream id it applied) and reads on with `XREAD BLOCK` from there.

When it cannot prove it saw every event, it evicts conservatively (all of L1) and counts
a gap. After reading, it asks the stream how far it got (`XINFO STREAM`, Redis >= 7.0),
and decides from that one atomic reply whether an entry it has not read is gone:
- XDEL removed one: the largest id XDEL ever removed (`max-deleted-entry-id`) is above
  its position;
- the stream was deleted, or lost and made anew: it is gone, its last id is below the
  position, or it reports fewer entries ever added (`entries-added`) than the reader
  already knows of;
- trimming removed one (XTRIM, XADD MAXLEN: Redis leaves `max-deleted-entry-id` alone
  for those): the reader knows how many entries were added up to its position (the
  count at the tail it started from, plus those it read since); when the reply says how
  many follow the position (none when it is the last id; `length` when trimming has
  passed it, so the first entry left is after it), that plus those must be exactly
  `entries-added`. Else (tail ahead, trimming behind) it waits until caught up.
- it lost its Redis connection (Redis restarted and lost the stream, or events were
  published while it could not read): on reconnect it clears L1, then reads on.
The first three hold only when an event was lost, however many entries were published
between the read and the reply: an XADD raises the last id, the length and the count
together, and removes nothing. (Comparing a count with the last id read before, as this
module once did, took an XADD landing after an idle read for a lost entry.)
The L2 revision pointer is moved by the relay itself, so L2 never serves data older than
a published event either. TTLs remain as a long safety net.

Relay heartbeats (`store.relay`) turn "no event arrived" into "nothing was written": a
heartbeat at T says every write committed before T has its event earlier in the stream.
Once the reader has read up to a heartbeat and the check above proves it lost nothing
before it, it tells the cache `confirm(T)` (`cache.policy_cache`, bounded staleness). A
reply holding a heartbeat is checked at once, so confirmation lags a heartbeat by one
round trip. No heartbeats (the relay stalled, crashed or cut off), an unreadable stream or
an unproven position confirm nothing, and the cache's max staleness takes over.

While the stream cannot be read, it reconnects with exponential backoff and jitter (capped
at 2 s), logging the outage once and the recovery once (`gatehouse.retry`); and, on a timer
of its own (so a reconnect attempt that hangs for its socket timeout does not stretch the
period), it clears L1 every `blind_refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, cast

from redis.exceptions import ResponseError

from opentelemetry import trace

from gatehouse import tracing
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cancellation import stop_if_cancelled
from gatehouse.engine.model import KEY_SUBJECT_TYPE
from gatehouse.events import CONFIG_KINDS, Heartbeat, TenantEvent, as_text, parse_entry, stream_key
from gatehouse.redis_client import RedisClient
from gatehouse.redis_failures import REDIS_FAILURES
from gatehouse.retry import Backoff, Outage

log = logging.getLogger(__name__)
_tracer = tracing.tracer(__name__)


KEY_SUBJECT_PREFIX = f"{KEY_SUBJECT_TYPE}/"


class KeyListener(Protocol):
    """Remembers verified API keys: told when one is revoked, or when events were lost."""

    def forget(self, key_id: str) -> None: ...
    def clear(self) -> None: ...


class UnsupportedRedis(RuntimeError):
    """Redis is older than 7.0: lost events cannot be told from concurrent ones."""


@dataclass(frozen=True, slots=True)
class StreamState:
    """What one `XINFO STREAM` reply says, atomically, about the stream."""

    last_id: str  # the last id generated: the newest entry ever added
    max_deleted: str  # the largest id XDEL ever removed, "0-0" if none (trimming leaves it)
    added: int  # entries ever added, including those since removed
    first_id: str  # the first entry still in the stream, "0-0" when it is empty
    length: int  # entries still in the stream


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream id as the (milliseconds, sequence) pair Redis orders ids by; as strings,
    "9-0" would sort after "10-0"."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class SubscriberStats:
    events: int = 0
    gaps: int = 0
    reconnects: int = 0
    unreadable: int = 0
    heartbeats: int = 0
    confirmations: int = 0
    blind_refreshes: int = 0


class TenantEventSubscriber:
    def __init__(
        self,
        redis: RedisClient,
        cache: PolicyCache,
        *,
        prefix: str,
        block_ms: int = 1000,
        batch: int = 1000,
        blind_refresh_seconds: float = 2.0,
        gap_check_seconds: float = 0.1,
        keys: "KeyListener | None" = None,
    ) -> None:
        self._redis = redis
        self._cache = cache
        self._stream = stream_key(prefix)
        self._block_ms = block_ms
        self._batch = batch
        self._blind_refresh = blind_refresh_seconds
        self._blind_since: float | None = None  # when the stream became unreadable; None while it is read
        self._blinded = asyncio.Event()
        self._through_ms = 0  # the newest heartbeat read but not yet proven complete up to
        self._backoff = Backoff(first=0.05, cap=2.0)
        self.outage = Outage(log, "event stream")
        self._gap_check = gap_check_seconds
        self._keys = keys
        self._checked_at = 0.0
        self.position: str | None = None
        self._lost = False
        self._added_base = 0  # entries ever added up to the position the count starts from
        self._read = 0  # entries read since then
        self._added_seen = 0  # entries ever added, as the last check saw it
        self.stats = SubscriberStats()
        # Called with each applied event's lag in seconds (its commit time, from the
        # event's `at`, to now: the writer's database clock against this host's).
        self.on_event_lag: Callable[[float], None] | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        refresher = asyncio.create_task(self._refresh_while_blind(), name="blind-refresh")
        try:
            while True:
                try:
                    await self._follow()
                except asyncio.CancelledError:
                    raise
                except UnsupportedRedis as exc:
                    log.critical("%s; the event subscriber stops", exc)
                    raise
                except REDIS_FAILURES as exc:
                    stop_if_cancelled()
                    if self.connected.is_set():
                        self.connected.clear()
                        self._backoff.reset()  # it had been working: retry fast first
                    self._lost = True
                    if self._blind_since is None:
                        self._blind_since = asyncio.get_running_loop().time()
                        self._blinded.set()
                    self.outage.failed("redis", f"{type(exc).__name__}: {exc}; evicting conservatively on reconnect")
                    self.stats.reconnects += 1
                    await asyncio.sleep(self._backoff.next())
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)

    async def _follow(self) -> None:
        if self.position is None:
            # First start: nothing is cached yet, so the stream's past is irrelevant.
            await self._rebase()
        elif self._lost:
            # Reconnected: whatever happened while we could not read is unknown.
            self._gap("reconnected after losing the stream")
            await self._rebase()
        self._lost = False
        self._blind_since = None
        self._blinded.clear()
        self.connected.set()
        self.outage.recovered()
        loop = asyncio.get_running_loop()
        while True:
            assert self.position is not None  # set by _rebase, then by each entry read
            # RESP2, which our clients speak: [[stream, [(id, fields), ...]]], or None when idle.
            reply = cast(
                "list[list[Any]] | None",
                await self._redis.xread({self._stream: self.position}, block=self._block_ms, count=self._batch),
            )
            stop_if_cancelled()  # redis-py may have swallowed a cancellation mid-read
            heartbeat = False
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    heartbeat |= self._apply(fields)
                    self._read += 1
                    self.position = as_text(entry_id)
            # After an idle read (at most once per block timeout: a trim that overtook us
            # while nothing new arrived is a gap all the same), and while events flow at
            # most every `gap_check_seconds`: the check is a round trip of its own, and
            # entries are counted across reads, so checking less often only delays noticing
            # a gap (which needs the reader a whole stream cap behind) by that much.
            # A heartbeat is checked at once: it confirms the cache only once the check
            # proves nothing before it was lost.
            now = loop.time()
            if not reply or heartbeat or now - self._checked_at >= self._gap_check:
                self._checked_at = now
                if await self._check_complete() and self._through_ms:
                    self._cache.confirm(self._through_ms / 1000)
                    self._through_ms = 0
                    self.stats.confirmations += 1

    async def _stream_state(self) -> StreamState:
        """The stream as one XINFO reply describes it; an empty one when there is none."""
        try:
            info = await self._redis.xinfo_stream(self._stream)
        except ResponseError:  # no stream: none yet, or deleted, or Redis restarted empty
            return StreamState(last_id="0-0", max_deleted="0-0", added=0, first_id="0-0", length=0)
        try:
            return StreamState(
                last_id=as_text(info["last-generated-id"]),
                max_deleted=as_text(info["max-deleted-entry-id"]),
                added=int(info["entries-added"]),
                first_id=as_text(info["recorded-first-entry-id"]),
                length=int(info["length"]),
            )
        except KeyError:
            raise UnsupportedRedis(
                f"XINFO STREAM {self._stream} reports no max-deleted-entry-id, entries-added or"
                " recorded-first-entry-id: Gatehouse needs Redis 7.0 or newer to tell lost tenant events"
                " from concurrent ones"
            ) from None

    async def _rebase(self, state: StreamState | None = None) -> None:
        """Start counting from the stream's tail: everything before it is covered."""
        if state is None:
            state = await self._stream_state()
        self.position, self._added_base, self._read = state.last_id, state.added, 0
        self._added_seen = state.added
        self._through_ms = 0  # a heartbeat read before a gap or a lost connection proves nothing

    async def _check_complete(self) -> bool:
        """A gap iff an entry this reader has not read is gone; see the module docstring.
        True when the reply proves that nothing up to the position was lost (caught up,
        or the count of what follows adds up); False when it cannot tell yet, or on a gap."""
        state = await self._stream_state()
        position = entry_order(self.position or "0-0")
        known = self._added_base + self._read  # added up to the position: the count it started at, plus reads
        if entry_order(state.max_deleted) > position:
            why = f"entries after {self.position} were deleted, up to {state.max_deleted}, before it read them"
        elif entry_order(state.last_id) < position or state.added < max(known, self._added_seen):
            why = f"the stream was deleted or made anew (last id {state.last_id}, {state.added} entries added)"
        else:
            # How many entries follow the position, where the reply tells: none when caught
            # up; all `length` when trimming has passed the position. Otherwise (the first
            # entry at or before the position, the tail beyond it) trimming has not reached
            # anything unread, and an earlier hole it read past shows once caught up.
            caught_up = entry_order(state.last_id) == position
            trimmed_past = state.length == 0 or entry_order(state.first_id) > position
            following = 0 if caught_up else state.length if trimmed_past else None
            if following is None or state.added == known + following:
                self._added_seen = state.added
                if caught_up:
                    self._added_base, self._read = state.added, 0
                return following is not None
            missing = state.added - known - following
            why = f"{missing} events were trimmed (or the stream made anew) before it read them"
        self._gap(why)
        await self._rebase(state)
        return False

    def _apply(self, fields: dict[bytes, bytes]) -> bool:
        """Apply one stream entry; True when it was a relay heartbeat."""
        event = parse_entry(fields)
        if isinstance(event, Heartbeat):
            self.stats.heartbeats += 1
            self._through_ms = max(self._through_ms, event.through_ms)
            return True
        if event is None:
            self.stats.unreadable += 1
            return False
        self.stats.events += 1
        if event.traceparent and tracing.on:
            # The event of a traced (sampled) admin write: its eviction here is a span in
            # that write's trace, beside the relay's publish (gatehouse.events `tp`).
            link = tracing.link_to(event.traceparent)
            if link is not None:
                with _tracer.start_as_current_span(
                    "tenant event apply",
                    context=trace.set_span_in_context(trace.NonRecordingSpan(link.context)),
                    kind=trace.SpanKind.CONSUMER,
                    links=[link],
                    attributes={
                        "messaging.system": "redis",
                        "messaging.operation.type": "process",
                        "gatehouse.event.kind": event.kind,
                        "gatehouse.event.revision": event.revision,
                    },
                ):
                    self._evict(event)
                return False
        self._evict(event)
        return False

    def _evict(self, event: TenantEvent) -> None:
        if event.kind == "key" and self._keys is not None and event.subject.startswith(KEY_SUBJECT_PREFIX):
            self._keys.forget(event.subject[len(KEY_SUBJECT_PREFIX):])
        if event.tenant_wide:
            self._cache.tenant_event(event.tenant_id, event.revision, notify=event.kind in CONFIG_KINDS)
        else:
            self._cache.subject_event(event.tenant_id, event.subject, event.revision)
        if self.on_event_lag is not None and event.at_ms > 0:
            # Commit (Postgres' clock) → applied here (this host's clock): skew included.
            self.on_event_lag(max(0.0, time.time() - event.at_ms / 1000.0))

    async def _refresh_while_blind(self) -> None:
        """While no events can be read, other sidecars' writes go unseen: clear L1 every
        `blind_refresh_seconds` (the first time that long after the stream was lost), so
        answers come from Postgres instead of entries trusted until their TTL. A timer of
        its own: reconnect attempts can each hang for the socket timeout."""
        loop = asyncio.get_running_loop()
        while True:
            since = self._blind_since
            if since is None:
                await self._blinded.wait()
                continue
            delay = since + self._blind_refresh - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # the stream may be back, or lost anew, meanwhile
            self._clear()
            self.stats.blind_refreshes += 1
            self._blind_since = loop.time()

    def _gap(self, why: str) -> None:
        self.stats.gaps += 1
        log.warning("tenant-event gap (%s): evicting every cached entry", why)
        self._clear()

    def _clear(self) -> None:
        self._cache.clear()
        if self._keys is not None:
            self._keys.clear()
