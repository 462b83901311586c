"""Every sidecar process reads the whole tenant-event stream and evicts what it names.

Not a consumer group: each process must see every event, so each keeps its own position
(the last stream id it applied) and reads on with `XREAD BLOCK` from there.

When it cannot prove it saw every event, it evicts conservatively (all of L1) and counts
a gap:
- once caught up with the stream's tail, it has read fewer entries than the stream says
  were added since it last checked (entries were trimmed before it read them, or the
  stream was lost and made anew);
- it lost its Redis connection (Redis restarted and lost the stream, or events were
  published while it could not read): on reconnect it clears L1, then reads on.
The L2 revision pointer is moved by the relay itself, so L2 never serves data older than
a published event either. TTLs remain as a long safety net.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cancellation import stop_if_cancelled
from gatehouse.engine.model import KEY_SUBJECT_TYPE
from gatehouse.events import CONFIG_KINDS, TenantEvent, as_text, stream_key

log = logging.getLogger(__name__)


KEY_SUBJECT_PREFIX = f"{KEY_SUBJECT_TYPE}/"


class KeyListener(Protocol):
    """Remembers verified API keys: told when one is revoked, or when events were lost."""

    def forget(self, key_id: str) -> None: ...
    def clear(self) -> None: ...


@dataclass(slots=True)
class SubscriberStats:
    events: int = 0
    gaps: int = 0
    reconnects: int = 0
    unreadable: int = 0


class TenantEventSubscriber:
    def __init__(
        self,
        redis: aioredis.Redis,
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
        self._blind_since = 0.0
        self._gap_check = gap_check_seconds
        self._keys = keys
        self._checked_at = 0.0
        self.position: str | None = None
        self._lost = False
        self._added_base = 0
        self._read = 0
        self.stats = SubscriberStats()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                stop_if_cancelled()
                if self.connected.is_set():
                    log.warning("event stream lost (%s): evicting conservatively on reconnect", exc)
                    backoff = 0.05  # it had been working: retry fast first
                self._lost = True
                self._blind()
                self.stats.reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _follow(self) -> None:
        if self.position is None:
            # First start: nothing is cached yet, so the stream's past is irrelevant.
            await self._rebase()
        elif self._lost:
            # Reconnected: whatever happened while we could not read is unknown.
            self._gap("reconnected after losing the stream")
            await self._rebase()
        self._lost = False
        self.connected.set()
        loop = asyncio.get_running_loop()
        while True:
            reply = await self._redis.xread({self._stream: self.position}, block=self._block_ms, count=self._batch)
            stop_if_cancelled()  # redis-py may have swallowed a cancellation mid-read
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._apply(fields)
                    self._read += 1
                    self.position = as_text(entry_id)
            # After an idle read (at most once per block timeout: a trim that overtook us
            # while nothing new arrived is a gap all the same), and while events flow at
            # most every `gap_check_seconds`: the check is a round trip of its own, and
            # entries are counted across reads, so checking less often only delays noticing
            # a gap (which needs the reader a whole stream cap behind) by that much.
            now = loop.time()
            if not reply or now - self._checked_at >= self._gap_check:
                self._checked_at = now
                await self._check_complete(idle=not reply)

    async def _stream_state(self) -> tuple[str, int]:
        """(last generated id, entries ever added) of the stream; ("0-0", 0) when absent."""
        try:
            info = await self._redis.xinfo_stream(self._stream)
        except ResponseError:  # no stream: none yet, or deleted, or Redis restarted empty
            return "0-0", 0
        return as_text(info["last-generated-id"]), int(info["entries-added"])

    async def _rebase(self) -> None:
        """Start counting from the stream's tail: everything before it is covered."""
        self.position, self._added_base = await self._stream_state()
        self._read = 0

    async def _check_complete(self, *, idle: bool) -> None:
        """Once caught up with the tail, we must have read every entry added since the
        base. Fewer means entries were trimmed (or the stream was lost) before we read
        them: a gap. (XTRIM does not record what it deleted, so count instead.)"""
        last_id, added = await self._stream_state()
        behind = last_id != self.position and added >= self._added_base
        if behind and not idle:
            return  # not caught up yet; count when we are
        # Idle yet behind the tail: the entries in between are gone. Otherwise, count.
        if added != self._added_base + self._read:
            self._gap(f"read {self._read} of {added - self._added_base} events since the last check")
            await self._rebase()
        else:
            self._added_base, self._read = added, 0

    def _apply(self, fields: dict[bytes, bytes]) -> None:
        event = TenantEvent.parse(fields)
        if event is None:
            self.stats.unreadable += 1
            return
        self.stats.events += 1
        if event.kind == "key" and self._keys is not None and event.subject.startswith(KEY_SUBJECT_PREFIX):
            self._keys.forget(event.subject[len(KEY_SUBJECT_PREFIX):])
        if event.tenant_wide:
            self._cache.tenant_event(event.tenant_id, event.revision, notify=event.kind in CONFIG_KINDS)
        else:
            self._cache.subject_event(event.tenant_id, event.subject, event.revision)

    def _blind(self) -> None:
        """While no events can be read, other sidecars' writes go unseen: clear L1 every
        `blind_refresh_seconds` so staleness stays bounded (answers then come from
        Postgres), instead of trusting entries until their TTL."""
        now = asyncio.get_running_loop().time()
        if self.connected.is_set():
            self.connected.clear()
            self._blind_since = now
        elif now - self._blind_since >= self._blind_refresh:
            self._clear()
            self._blind_since = now

    def _gap(self, why: str) -> None:
        self.stats.gaps += 1
        log.warning("tenant-event gap (%s): evicting every cached entry", why)
        self._clear()

    def _clear(self) -> None:
        self._cache.clear()
        if self._keys is not None:
            self._keys.clear()
