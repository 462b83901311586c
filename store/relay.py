"""The outbox relay: committed outbox rows → the tenant-event Redis Stream.

Every mutation writes its outbox row in the same transaction as the change and NOTIFYs
`gatehouse_outbox`. The relay LISTENs (and polls as a fallback), and in one transaction:

    SELECT unpublished rows ORDER BY id FOR UPDATE SKIP LOCKED   -- several relays may run
    XADD each to the stream (MAXLEN ~ cap) and move the tenant's L2 revision pointer
    UPDATE outbox SET published_at = now()                       -- only after Redis acked

A crash between XADD and COMMIT rolls the marking back, so the rows are published again
by the next run: delivery is at-least-once, and readers treat duplicates as harmless.
Rows of one tenant get their ids in commit order (each mutation holds the tenant's row
lock while it inserts), so one relay publishes a tenant's events in revision order.
Published rows are pruned after a retention period.

**Expired role assignments** are swept here too, every `sweep_seconds`
(`store.assignments.sweep_expired_assignments`): each subject's expired rows deleted in
one transaction with a revision bump, an audit row and an outbox event, which this loop
then publishes like any other. The relay is the one process that already holds a
platform-scoped connection and runs on a timer; several relays sweeping at once only
find less to do (each subject's sweep locks its tenant and deletes what is still there).

**Heartbeats.** Every `heartbeat_seconds` a connected relay also appends a heartbeat entry
(`gatehouse.events.Heartbeat`) saying "every write committed before T has its event
earlier in this stream", where T is computed by one statement in Postgres:

    T = least(statement_timestamp(), min(created_at) of the outbox rows not yet published)

Why that is true, with any number of relays claiming rows with SKIP LOCKED: the statement
reads a snapshot taken after `statement_timestamp()`, so every write committed before T
is in it. Its outbox row is either marked published there, and the marking commits only
after Redis acknowledged the row's XADD (which therefore precedes this heartbeat's XADD,
sent after the statement), or it is still unpublished, and then T ≤ its `created_at`
(the writer's `now()`, earlier than its commit) — so it did not commit before T after
all. The read takes no locks and does not skip locked rows: a row another relay has
claimed but not yet marked (in flight, or that relay stalled while holding it) counts as
unpublished, so it holds T back for every relay until it is published. A stalled, crashed
or cut-off relay publishes no heartbeats; one that keeps running next to it cannot vouch
for rows it cannot see published. A sidecar that has applied every entry up to a
heartbeat therefore knows its caches are current as of T (`cache.subscriber`), and
`GATEHOUSE_MAX_STALENESS_SECONDS` bounds how long it trusts them after that. Outbox ids
are no such position: they are taken at insert, not at commit, so an id below the
highest published one may still commit later.

**Traces.** Each published batch is an `outbox publish` PRODUCER span around its XADDs
and marking. An outbox row written under a sampled span carries that span's W3C
traceparent (`store.transactions`, migration 4): the publish span links to every such
write of its batch, takes the first as its parent (so it is sampled with it and shows in
the admin write's trace), and the event carries it on (`tp`, `gatehouse.events`) for the
subscribers' `tenant event apply` spans. Heartbeats and idle polls make no spans.

While Redis or Postgres is down the relay retries with exponential backoff and jitter
(`gatehouse.retry`), logging the outage once and the recovery once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Awaitable, Callable, ContextManager

import asyncpg
from opentelemetry import trace

from gatehouse import tracing
from gatehouse.cancellation import stop_if_cancelled
from gatehouse.events import ADVANCE_POINTER, Heartbeat, TenantEvent, pointer_key, stream_key
from gatehouse.redis_client import RedisClient
from gatehouse.redis_failures import REDIS_FAILURES
from gatehouse.retry import Backoff, Outage
from gatehouse.store.assignments import sweep_expired_assignments
from gatehouse.store.idempotency import RETENTION_SECONDS
from gatehouse.store.transactions import PLATFORM_SCOPE, init_connection
from gatehouse.store.write_tail import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class _PostgresUnreachable(Exception):
    """Connecting to Postgres failed at the socket (its OSError is the `__cause__`)."""


_POSTGRES_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, _PostgresUnreachable)
_tracer = tracing.tracer(__name__)

_CLAIM = """
SELECT id, tenant_id, revision, kind, coalesce(subject, '') AS subject,
       (extract(epoch FROM created_at) * 1000)::bigint AS at_ms, coalesce(traceparent, '') AS traceparent
FROM outbox
WHERE published_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
# No WAL flush wait at the publishing transaction's COMMIT: losing the marking in a crash
# only means the rows go out again (delivery is at-least-once anyway), while waiting for
# the disk would hold the next batch, and so every event, behind it.
_BEGIN_PUBLISH = (
    f"BEGIN; SELECT set_config('gatehouse.tenant_id', '{PLATFORM_SCOPE}', true),"
    " set_config('synchronous_commit', 'off', true)"
)
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY('{{{ids}}}'::bigint[]); COMMIT"
# One statement, so one snapshot taken after its statement_timestamp(); no FOR UPDATE and
# no SKIP LOCKED: rows other relays hold count as unpublished (see the module docstring).
# floor(): a millisecond early is safe, a millisecond late is not.
_PUBLISHED_THROUGH = """
SELECT floor(extract(epoch FROM least(
           statement_timestamp(),
           (SELECT min(created_at) FROM outbox WHERE published_at IS NULL))) * 1000)::bigint
"""
# The backlog, read with each heartbeat: rows not yet published and the oldest one's age.
_BACKLOG = """
SELECT count(*) AS rows, coalesce(extract(epoch FROM statement_timestamp() - min(created_at)), 0)::float8 AS oldest
FROM outbox WHERE published_at IS NULL
"""
_PRUNE_IDEMPOTENCY = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)"
_PRUNE = "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)"


SWEEP_BATCH = 100  # subjects whose expired assignments one sweep deletes, at most


class OutboxRelay:
    def __init__(
        self,
        dsn: str,
        redis: RedisClient,
        *,
        prefix: str,
        max_stream_length: int = 100_000,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        retention_seconds: float = 24 * 3600,
        l2_ttl_seconds: float = 300.0,
        heartbeat_seconds: float = 1.0,
        sweep_seconds: float = 10.0,
        after_xadd: Callable[[list[TenantEvent]], Awaitable[None]] | None = None,
    ) -> None:
        self._dsn = dsn
        self.redis = redis
        self._prefix = prefix
        self._stream = stream_key(prefix)
        self._maxlen = max_stream_length
        self._batch = batch_size
        self._poll = poll_interval
        self._retention = retention_seconds
        self._ttl_ms = int(l2_ttl_seconds * 1000)
        self._after_xadd = after_xadd  # a fault-injection point for tests: "crash here"
        self._heartbeat = heartbeat_seconds
        self._sweep = sweep_seconds  # 0: never sweep expired assignments
        self.swept = 0  # subjects whose expired assignments this relay deleted
        self.relay_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._wake = asyncio.Event()
        self._backoff = Backoff(first=0.1, cap=2.0)
        self.outage = Outage(log, "relay")
        self.published = 0
        self.heartbeats = 0
        # Attempts that failed because Postgres or Redis did not answer (each retried after
        # a backoff), by cause: a relay that keeps failing publishes nothing.
        self.errors = {"postgres": 0, "redis": 0}
        # As of the last heartbeat: unpublished outbox rows (those other relays hold
        # included) and the age of the oldest, in seconds.
        self.backlog_rows = 0
        self.backlog_oldest_seconds = 0.0
        # Called with each published event's latency in seconds: its commit time (`at`,
        # the database's clock) to Redis acknowledging the batch (this host's clock).
        self.on_published: Callable[[float], None] | None = None

    def stats(self) -> dict[str, float]:
        """Counts since start (`gatehouse.stats` source `relay`): events published,
        heartbeats appended, failed attempts by cause (`errors{cause=postgres|redis}`)."""
        return {
            "published": self.published,
            "heartbeats": self.heartbeats,
            **{f"errors{{cause={cause}}}": n for cause, n in self.errors.items()},
        }

    def backlog(self) -> dict[str, float]:
        """As of the last heartbeat (`gatehouse.stats` source `relay_backlog`): unpublished
        outbox rows (`rows`, every relay's) and the oldest one's age (`oldest_seconds`, 0:
        none). Read by the heartbeat's own statement: no query of its own."""
        return {"rows": self.backlog_rows, "oldest_seconds": self.backlog_oldest_seconds}

    async def publish_pending(self, conn: asyncpg.Connection) -> int:
        """Publish every unpublished row, batch by batch; the number published."""
        total = 0
        while True:
            count = await self._publish_batch(conn)
            total += count
            if count < self._batch:
                return total

    async def _publish_batch(self, conn: asyncpg.Connection) -> int:
        """One batch in three round trips to Postgres and one to Redis: BEGIN with its
        settings, the claim, then (after Redis acknowledged) the marking with COMMIT."""
        await conn.execute(_BEGIN_PUBLISH)
        try:
            rows = await conn.fetch(_CLAIM, self._batch)
            if not rows:
                await conn.execute("COMMIT")
                return 0
            events = [
                TenantEvent(
                    id=row["id"],
                    tenant_id=str(row["tenant_id"]),
                    revision=row["revision"],
                    kind=row["kind"],
                    subject=row["subject"],
                    at_ms=row["at_ms"],
                    traceparent=row["traceparent"],
                )
                for row in rows
            ]
            with _publish_span(self._stream, events):
                await self._publish(conn, events)
        except BaseException:
            # Not marked: the rows stay unpublished and go out again (at-least-once). If
            # the rollback fails too, the connection is broken and `run` reconnects.
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        self.published += len(events)
        return len(events)

    async def _publish(self, conn: asyncpg.Connection, events: list[TenantEvent]) -> None:
        """XADD `events` (and move their tenants' L2 pointers), then mark them and COMMIT."""
        newest: dict[str, int] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(
                    self._stream,
                    event.fields(),  # type: ignore[arg-type]  # redis-py types it as an invariant Dict[FieldT, EncodableT]
                    maxlen=self._maxlen,
                    approximate=True,
                )
                newest[event.tenant_id] = max(newest.get(event.tenant_id, 0), event.revision)
            # Move each tenant's L2 pointer too (once, to its newest revision): no
            # sidecar reads L2 data older than a published event, even one whose own
            # write path could not reach Redis. EVAL, not a registered script's EVALSHA:
            # a cluster pipeline cannot load a script a master lacks (NOSCRIPT after a
            # failover), and a plain one would ask SCRIPT EXISTS first, every batch.
            for tenant_id, revision in newest.items():
                pipe.eval(ADVANCE_POINTER, 1, pointer_key(self._prefix, tenant_id), revision, "", self._ttl_ms)
            await pipe.execute()
        if self.on_published is not None:
            now = time.time()
            for event in events:
                self.on_published(max(0.0, now - event.at_ms / 1000.0))
        if self._after_xadd is not None:
            await self._after_xadd(events)
        # Ids are integers read from Postgres: inlined, nothing to quote.
        ids = ",".join(str(event.id) for event in events)
        await conn.execute(_MARK.format(ids=ids))

    async def heartbeat(self, conn: asyncpg.Connection) -> Heartbeat:
        """Append a heartbeat: every write committed before its time is in the stream before it."""
        async with conn.transaction():
            await conn.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", PLATFORM_SCOPE)
            through_ms = int(await conn.fetchval(_PUBLISHED_THROUGH))
            backlog = await conn.fetchrow(_BACKLOG)
        self.backlog_rows, self.backlog_oldest_seconds = int(backlog["rows"]), float(backlog["oldest"])
        beat = Heartbeat(through_ms=through_ms, relay=self.relay_id)
        await self.redis.xadd(
            self._stream,
            beat.fields(),  # type: ignore[arg-type]  # redis-py types it as an invariant Dict[FieldT, EncodableT]
            maxlen=self._maxlen,
            approximate=True,
        )
        self.heartbeats += 1
        return beat

    async def prune(self, conn: asyncpg.Connection) -> int:
        async with conn.transaction():
            await conn.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", PLATFORM_SCOPE)
            status = await conn.execute(_PRUNE, self._retention)
            await conn.execute(_PRUNE_IDEMPOTENCY, RETENTION_SECONDS)
        return int(status.split()[-1])

    async def run(self) -> None:
        """Relay until cancelled, reconnecting to Postgres and Redis as they come and go:
        exponential backoff with jitter, one warning per outage, one line at recovery."""
        while True:
            try:
                await self._run_connected()
            except asyncio.CancelledError:
                raise
            except (*REDIS_FAILURES, *_POSTGRES_FAILURES) as exc:
                stop_if_cancelled()
                cause = "postgres" if isinstance(exc, _POSTGRES_FAILURES) else "redis"
                self.errors[cause] += 1
                shown = exc.__cause__ if isinstance(exc, _PostgresUnreachable) and exc.__cause__ is not None else exc
                self.outage.failed(cause, f"{type(shown).__name__}: {shown}")
                await asyncio.sleep(self._backoff.next())

    async def _run_connected(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=5)
        except OSError as exc:
            # Refused, unreachable, timed out: asyncpg raises the socket's own error, which
            # REDIS_FAILURES holds too; without this it was counted and logged as Redis's.
            raise _PostgresUnreachable() from exc
        try:
            await init_connection(conn)  # the store's codecs: the sweeper writes audit rows
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
            last_prune = next_beat = next_sweep = 0.0
            while True:
                # redis-py can drop a cancellation that lands mid-command (see
                # gatehouse.cancellation): without this, a relay being stopped could go on
                # polling forever, and Sidecar.stop() with it.
                stop_if_cancelled()
                self._wake.clear()
                await self.publish_pending(conn)
                if time.monotonic() >= next_beat:
                    # Right after publishing, so only rows committed since hold it back.
                    next_beat = time.monotonic() + self._heartbeat
                    await self.heartbeat(conn)
                    # Both Postgres and Redis answered: any outage is over.
                    self.outage.recovered()
                    self._backoff.reset()
                if self._sweep > 0 and time.monotonic() >= next_sweep:
                    swept = await sweep_expired_assignments(conn, limit=SWEEP_BATCH)
                    self.swept += swept
                    # A full batch: more may wait, sweep again right after publishing.
                    next_sweep = time.monotonic() + (0.0 if swept >= SWEEP_BATCH else self._sweep)
                    if swept:
                        continue  # publish the sweep's events at once
                if time.monotonic() - last_prune > 60:
                    await self.prune(conn)
                    last_prune = time.monotonic()
                # NOTIFY is the fast path; the poll catches anything a lost notification
                # (a reconnect, a relay that started after the commit) would leave behind.
                wait = max(0.0, min(self._poll, next_beat - time.monotonic()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
        finally:
            # Bounded: close() first waits for a cancelled statement's acknowledgement,
            # which never comes over a half-open connection or from a frozen server (this
            # connection has no command timeout), and stopping would hang for good.
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except (Exception, asyncio.CancelledError):
                conn.terminate()

    def _notified(self, *_: object) -> None:
        self._wake.set()


# A span has at most 128 links by default (OTEL_SPAN_LINK_COUNT_LIMIT); more are dropped.
def _publish_span(stream: str, events: list[TenantEvent]) -> ContextManager[object]:
    """The `outbox publish` span of one batch: linked to every traced write in it, child of
    the first (see the module docstring)."""
    links = [link for link in (tracing.link_to(event.traceparent) for event in events) if link is not None]
    parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context)) if links else None
    return _tracer.start_as_current_span(
        "outbox publish",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        links=links,
        attributes={
            "messaging.system": "redis",
            "messaging.operation.type": "send",
            "messaging.destination.name": stream,
            "messaging.batch.message_count": len(events),
        },
    )
