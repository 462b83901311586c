"""Transactions and row-level security: the pool, and the one way every store module
reads or writes.

Tenant isolation is enforced by Postgres, not only by our WHERE clauses: each
transaction starts with `set_config('gatehouse.tenant_id', <tenant id or '*'>, true)`
(sent with its BEGIN, in one round trip) and row-level security hides every other
tenant's rows. The setting is transaction-local, so a pooled connection never carries
one tenant's scope into the next caller's transaction.

The read path (`load_tenant`, `load_subject`) is one query in a read-only transaction:
three round trips (BEGIN with the scope, the query, COMMIT), no reset query on release.
Driver errors are translated to Gatehouse errors by `translated()` around every pool
use; see `gatehouse.store.driver_errors`.

Deadlines: every transaction, from the wait for a pooled connection to COMMIT, runs
inside the calling call's deadline (`gatehouse.deadlines.within`). Past it the
transaction is cancelled and `DeadlineExceeded` raised: a saturated pool does not queue
a call beyond its deadline, and a running statement is cancelled on the server
(asyncpg sends a CancelRequest when the awaiting task is cancelled, and on any other
cancellation too: a gRPC call its client abandoned). The connection then needs the
server's acknowledgement of the cancel and a ROLLBACK before it can be reused; that is
waited for in the background (`_abandon`, at most `ABANDON_SECONDS`, else the connection
is closed), not by the caller, whose deadline has passed. A write's COMMIT is never
cut by the deadline (its outcome must be known); the statements before it are. The
idempotency-key bookkeeping (`idempotency.py`) is not bounded: a claim or its release
cut short would make a retry wait or run twice.

Traces (README "Traces"): every transaction inside a sampled call is a `postgres
transaction` client span (`tracing.child_span`: none outside one, nothing when off). A write transaction begun under a sampled span also sets the
transaction-local `gatehouse.traceparent` with its BEGIN, which the outbox row's
`traceparent` column defaults to (migration 4): the relay links its publish span to it.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncio

import asyncpg

from gatehouse import deadlines
from gatehouse import tracing
from gatehouse.errors import TenantNotFound
from gatehouse.store.driver_errors import translated
from gatehouse.store.migrate import read_version, schema_fit

PLATFORM_SCOPE = "*"  # the row-level security scope that sees every tenant

# How long a connection whose statement was cancelled may take to acknowledge the cancel
# and roll back before it is closed instead of returned to the pool (seconds).
ABANDON_SECONDS = 5.0
# How long closing the pool waits for borrowed connections before closing them at once.
CLOSE_SECONDS = 5.0
_tracer = tracing.tracer(__name__)

async def init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python values and take Python values as arguments.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def reset_connection(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset sends `RESET ALL; UNLISTEN *; CLOSE ALL; ...` on every
    # release: one more round trip on the hot path for nothing, because the store never
    # leaves session state behind (its tenant scope is transaction-local, it never
    # LISTENs or takes session locks on pooled connections). asyncpg still rolls back an
    # open transaction before calling this.
    return None


# Errors of a connection that was dead before we used it (see PostgresStore._begin).
_DEAD_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # reset, broken pipe
    asyncpg.PostgresConnectionError,  # connection does not exist
    asyncpg.AdminShutdownError,  # the backend was terminated: its FATAL is our reply
    asyncpg.InterfaceError,  # "connection is closed"
    asyncpg.InternalClientError,  # or that FATAL arrived unasked and upset the protocol
)


# A transaction's scope is '*' or a tenant id exactly as str(uuid.UUID) spells it.
_SCOPE_RE = re.compile(r"\*|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")




class Transactions:
    """The pool, and transactions scoped to one tenant (or the platform) on it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._abandoned: set[asyncio.Task[None]] = set()
        self.transactions_begun = 0  # BEGINs sent (stats: store.transactions_begun)
        self.transactions_cancelled = 0  # cancelled by a deadline or an abandoned call

    def pool_stats(self) -> dict[str, float]:
        """Connections of the pool now: `in_use` (borrowed), `idle`, `max` (its bound)."""
        size, idle = self._pool.get_size(), self._pool.get_idle_size()
        return {"in_use": size - idle, "idle": idle, "max": self._pool.get_max_size()}

    # --- lifecycle of the driver ---------------------------------------------------------

    async def close(self) -> None:
        """Close the pool, waiting up to CLOSE_SECONDS for borrowed connections to come
        back (abandoned ones included); then close what is left at once. A statement
        whose reply never comes (a half-open connection, a frozen server) would
        otherwise hold shutdown for the driver's timeouts (30 s, then 30 s more for the
        cancel)."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                while self._abandoned:
                    await asyncio.gather(*list(self._abandoned), return_exceptions=True)
                with translated():
                    await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    async def ping(self) -> None:
        """Return when Postgres answers; StoreUnavailable when it does not."""
        async with self._reading(PLATFORM_SCOPE):
            pass  # beginning and committing a transaction is the round trip we want

    async def schema_version(self) -> int:
        """The schema version of the database (compare with migrate.LATEST_VERSION)."""
        async with self._reading(PLATFORM_SCOPE) as conn:
            return await read_version(conn)

    async def schema_fit(self, expected: int) -> str | None:
        """None when a build expecting schema `expected` answers right against this
        database (at it, or ahead by additive steps: store/migrate.py); else why not."""
        async with self._reading(PLATFORM_SCOPE) as conn:
            return await schema_fit(conn, expected)

    # --- transactions ----------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, scope: str, *, readonly: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees only `scope`'s rows (a tenant id, or PLATFORM_SCOPE),
        within the caller's deadline: DeadlineExceeded past it (before anything is
        begun, if it has passed already). A write's COMMIT, once sent, runs to its end."""
        attributes = {"db.system.name": "postgresql", "db.transaction.read_only": readonly, "gatehouse.scope": scope}
        with tracing.child_span(_tracer, "postgres transaction", attributes):
            begin = _begin_statement(scope, readonly=readonly, traceparent="" if readonly else tracing.traceparent())
            async with deadlines.within() as bound:
                with translated():
                    conn = await self._begin(begin)
                    try:
                        yield conn
                        if not readonly:
                            # A write's COMMIT is not cut by the deadline: cancelled, its
                            # outcome would be unknown, and a retry (its idempotency claim
                            # released by the failure) could write twice.
                            bound.disarm()
                        await conn.execute("COMMIT")
                    except asyncio.CancelledError:
                        self._abandon(conn)
                        raise
                    except BaseException:
                        await _rollback(conn)
                        await self._pool.release(conn)
                        raise
                    await self._pool.release(conn)

    def _abandon(self, conn: asyncpg.Connection) -> None:
        """Give back a connection whose statement was cancelled, without waiting for it.

        The connection must first hear the server acknowledge the cancel, then roll back;
        over a slow or dead network that can take long, and the caller has gone already.
        So it happens in a task of its own, bounded by ABANDON_SECONDS (past it the
        connection is closed). It stays out of the pool until then, which is right: until
        the server has acknowledged, it is still busy."""
        self.transactions_cancelled += 1
        task = asyncio.ensure_future(self._give_back(conn))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        try:
            async with asyncio.timeout(ABANDON_SECONDS):
                # asyncpg sends this once the cancel is acknowledged. Rolling back here, not
                # in the pool's reset, keeps asyncpg from logging an ERROR for a connection
                # released inside a transaction. Outside one, ROLLBACK only warns.
                await conn.execute("ROLLBACK")
        except (Exception, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                conn.terminate()
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    async def _begin(self, begin: str) -> asyncpg.Connection:
        """A pooled connection with a transaction begun on it.

        A pooled connection can be dead without knowing it yet: Postgres restarted, the
        backend was terminated, a proxy dropped it while idle. BEGIN is the first thing
        sent on it, so such a connection fails right there, having done nothing (safe to
        retry even for a write), and is dropped for the next. After every pooled
        connection has had its chance the pool dials a fresh one, whose failure is real.
        """
        stale_left = self._pool.get_max_size()
        while True:
            conn = await self._pool.acquire()
            try:
                self.transactions_begun += 1
                await conn.execute(begin)
                return conn
            except asyncio.CancelledError:
                self._abandon(conn)
                raise
            except BaseException as error:
                stale = isinstance(error, _DEAD_CONNECTION_ERRORS)
                if stale:
                    # Unless the pool already noticed the loss and took the connection back.
                    with contextlib.suppress(asyncpg.InterfaceError):
                        conn.terminate()
                await self._pool.release(conn)
                if not stale or stale_left == 0:
                    raise
                stale_left -= 1

    def _reading(self, scope: str) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A read-only REPEATABLE READ transaction: every read in it sees one snapshot."""
        return self._transaction(scope, readonly=True)


def _begin_statement(scope: str, *, readonly: bool, traceparent: str = "") -> str:
    """BEGIN and the row-level security scope, as one message and so one round trip.

    A simple-protocol message takes no parameters, so the scope is inlined: it must be
    exactly '*' or a canonical uuid (the only values this module builds), which leaves
    nothing to quote or inject. `is_local=true` ends the scope with the transaction, so
    the next borrower of this pooled connection starts with none. `traceparent` (a write
    under a sampled span) is inlined the same way: only a well-formed one, hex and dashes.
    """
    if _SCOPE_RE.fullmatch(scope) is None:
        raise ValueError(f"not a tenant scope: {scope!r}")
    mode = " ISOLATION LEVEL REPEATABLE READ READ ONLY" if readonly else ""
    traced = f", set_config('gatehouse.traceparent', '{traceparent}', true)" if tracing.is_traceparent(traceparent) else ""
    return f"BEGIN{mode}; SELECT set_config('gatehouse.tenant_id', '{scope}', true){traced}"


async def _rollback(conn: asyncpg.Connection) -> None:
    # The body's error is the one the caller must see. If the rollback fails as well the
    # connection is broken, and the pool discards it on release.
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")



# --- tenant ids ----------------------------------------------------------------------------------


def parse_tenant_id(tenant_id: str) -> uuid.UUID | None:
    """The tenant id as a UUID, or None when no tenant has it: when it is no uuid, or a
    uuid spelled otherwise than `str(uuid.UUID)` spells it (upper case, no hyphens,
    braces, `urn:uuid:`). Postgres would accept those; the caches key tenants by the
    one canonical spelling, so the store answers for that spelling only.

    Checked here so a malformed id is a plain miss, never a Postgres DataError.
    """
    try:
        parsed = uuid.UUID(tenant_id)
    except (ValueError, TypeError, AttributeError):
        return None
    return parsed if str(parsed) == tenant_id else None


def require_tenant_id(tenant_id: str) -> uuid.UUID:
    tid = parse_tenant_id(tenant_id)
    if tid is None:
        raise TenantNotFound("tenant not found", metadata={"tenant_id": tenant_id})
    return tid


async def tenant_revision(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> int:
    """The tenant's revision; TenantNotFound when there is no such tenant."""
    revision: int | None = await conn.fetchval("SELECT revision FROM tenants WHERE id = $1", tenant_id)
    if revision is None:
        raise TenantNotFound("tenant not found", metadata={"tenant_id": str(tenant_id)})
    return revision
