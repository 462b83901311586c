"""The write tail: how every mutation ends, and the change it publishes once committed.

Every mutation of a tenant goes through `_tenant_write`: lock the tenant row, check it
is writable and at the expected revision, change the domain rows, then bump the
revision and append one audit row and one outbox event in the same transaction.
Because every mutation of a tenant holds that row lock, the checks a mutation makes
(is X a member? is role R assigned?) cannot be invalidated before it commits. After the
commit the store's subscribers hear of it (`gatehouse.store.changes`).

`COMPLETE_WRITE` is public: `bench/propagation.py` runs the same statement from
pgbench, through `complete_write_statement(placeholder=...)`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gatehouse.engine.model import TenantStatus
from gatehouse.errors import RevisionConflict, TenantNotFound, TenantNotWritable
from gatehouse.store.api import Actor, ChangeListener
from gatehouse.store.changes import ChangeFeed, tenant_change
from gatehouse.store.transactions import Transactions, require_tenant_id

NOTIFY_CHANNEL = "gatehouse_outbox"  # NOTIFY'd with the tenant id when an outbox row commits
# Operator keys belong to no tenant, but their revocation must reach every sidecar like
# any tenant event: it is published under this reserved tenant id, which no tenant has.
PLATFORM_EVENT_TENANT = uuid.UUID(int=0)


# --- what one mutation wrote, and the transaction it writes in -----------------------------


@dataclass(frozen=True, slots=True)
class AuditedChange:
    """What a mutation did, as its audit row and outbox event tell it."""

    action: str  # audit action: "tenant.create", "role.assign", ...
    target: str  # audit target: "tenant/<id>", "role/editor", "member/user/alice", ...
    kind: str  # outbox kind: tenant, config, plan, role, membership, assignment, key
    subject: str | None = None  # "user/alice" when only that subject's cache entries go stale
    details: Mapping[str, Any] = field(default_factory=dict)  # audit details and outbox payload
    reason: str = ""  # the audit row's reason (the operator's "why" of a lifecycle step)
    # Tenant columns to set in the same UPDATE that bumps the revision.
    columns: Mapping[str, Any] = field(default_factory=dict)


class TenantWrite:
    """One mutation of one tenant in progress: the open transaction and the locked row.

    The body of `PostgresStore._tenant_write` changes domain rows through `conn` and
    calls `record()` once; when it returns, the revision bump, audit row and outbox event
    are written and `after` holds the tenant row as committed.
    """

    def __init__(self, conn: asyncpg.Connection, before: asyncpg.Record) -> None:
        self.conn = conn
        self.before = before
        self.change: AuditedChange | None = None
        self.after: asyncpg.Record | None = None

    @property
    def tenant_id(self) -> uuid.UUID:
        tenant_id: uuid.UUID = self.before["id"]
        return tenant_id

    def record(self, change: AuditedChange) -> None:
        """Say what this mutation did; required before the transaction commits."""
        self.change = change

    @property
    def revision(self) -> int:
        """The tenant's revision after this mutation."""
        if self.after is None:
            raise RuntimeError("the revision is known only once the write has completed")
        revision: int = self.after["revision"]
        return revision


# The tenant columns a mutation may set alongside the revision bump; anything else
# (id, slug, revision, timestamps) is the store's or the database's to maintain.
_MUTABLE_TENANT_COLUMNS = frozenset(
    {
        "name",
        "plan",
        "region",
        "status",
        "status_reason",
        "status_changed_by",
        "settings",
        "flag_overrides",
        "quota_overrides",
    }
)


_INSERT_AUDIT = """
INSERT INTO audit_log (tenant_id, actor, action, target, request_id, outcome, reason, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


# Outbox rows for one change (one per tenant it touched), and a NOTIFY per tenant so the
# relay wakes at once. NOTIFY is transactional: it is delivered on commit, never for a
# rolled-back write.
_APPEND_OUTBOX = """
WITH events AS (
    INSERT INTO outbox (tenant_id, revision, kind, subject, payload)
    SELECT e.tenant_id, e.revision, $3, $4, $5
    FROM unnest($1::uuid[], $2::bigint[]) AS e (tenant_id, revision)
    RETURNING tenant_id
)
SELECT pg_notify($6, changed.tenant_id::text)
FROM (SELECT DISTINCT tenant_id FROM events) AS changed
"""



# The end of every single-tenant mutation (`complete_write`): revision bump, audit row,
# outbox event and NOTIFY in one statement. Data-modifying CTEs always run; the NOTIFY is
# made to depend on the outbox insert so it is sent only with it (and, being
# transactional, only on commit). Its parameters are named here and numbered by
# `complete_write_statement` in the order of COMPLETE_WRITE_PARAMETERS.
COMPLETE_WRITE = """
WITH bumped AS (
    UPDATE tenants SET revision = revision + 1{assignments} WHERE id = {tenant_id} RETURNING *
), audited AS (
    INSERT INTO audit_log (tenant_id, actor, action, target, request_id, outcome, reason, details)
    SELECT id, {actor}::text, {action}::text, {target}::text, {request_id}::text, 'ok', {reason}::text, {details}::jsonb FROM bumped
), evented AS (
    INSERT INTO outbox (tenant_id, revision, kind, subject, payload)
    SELECT id, revision, {kind}::text, {subject}::text, {payload}::jsonb FROM bumped
    RETURNING tenant_id
)
SELECT bumped.*, (SELECT count(pg_notify({channel}::text, tenant_id::text)) FROM evented) AS notified
FROM bumped
"""
COMPLETE_WRITE_PARAMETERS = (
    "tenant_id", "actor", "action", "target", "request_id", "reason", "details", "kind", "subject", "payload", "channel",
)


def numbered(number: int, name: str) -> str:
    """asyncpg's placeholder for the `number`th parameter."""
    return f"${number}"


def complete_write_statement(
    columns: Sequence[str] = (), *, placeholder: Callable[[int, str], str] = numbered
) -> str:
    """COMPLETE_WRITE, also setting the tenant `columns` (parameters after the named ones,
    in the order given), with each parameter written as `placeholder(number, name)`:
    `$n` for asyncpg, or e.g. `:name` for a pgbench script."""
    every = (*COMPLETE_WRITE_PARAMETERS, *columns)
    spelled = {name: placeholder(number, name) for number, name in enumerate(every, start=1)}
    assignments = "".join(f", {name} = {spelled[name]}" for name in columns)
    return COMPLETE_WRITE.format(assignments=assignments, **{name: spelled[name] for name in COMPLETE_WRITE_PARAMETERS})


class TenantWrites(Transactions):
    """Transactions, plus the one way a tenant is changed and the feed that hears of it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._changes = ChangeFeed()

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Hear of every write this store commits (`Subscribable`)."""
        return self._changes.subscribe(listener)

    @asynccontextmanager
    async def _tenant_write(
        self, actor: Actor, tenant_id: str, *, expected_revision: int = 0
    ) -> AsyncIterator[TenantWrite]:
        """The one way a tenant is changed: lock it, check it, let the body change rows and
        `record()` what it did, then bump the revision and write the audit row and the
        outbox event, all in one transaction. Any exception rolls all of it back."""
        tid = require_tenant_id(tenant_id)
        async with self._transaction(str(tid)) as conn:
            # The row lock serializes every mutation of this tenant, so revision checks and
            # the body's own checks hold until commit.
            before = await conn.fetchrow("SELECT * FROM tenants WHERE id = $1 FOR UPDATE", tid)
            if before is None:
                raise TenantNotFound("tenant not found", metadata={"tenant_id": tenant_id})
            if before["status"] == TenantStatus.DELETED.value:
                raise TenantNotWritable("the tenant is deleted", metadata={"tenant_id": tenant_id})
            if expected_revision and expected_revision != before["revision"]:
                raise RevisionConflict(expected_revision, before["revision"])
            write = TenantWrite(conn, before)
            yield write
            if write.change is None:
                raise RuntimeError("a tenant write must record() its change before it commits")
            write.after = await complete_write(conn, actor, tid, write.change)
        # Committed: now, and only now, the subscribers hear of it.
        await self._changes.publish([tenant_change(tid, write.revision, write.change.kind, write.change.subject)])


# --- statements shared by the mutations --------------------------------------------------------


async def complete_write(
    conn: asyncpg.Connection, actor: Actor, tenant_id: uuid.UUID, change: AuditedChange
) -> asyncpg.Record:
    """Bump the tenant's revision (setting `change.columns` in the same UPDATE), write the
    audit row and the outbox event, and NOTIFY the relay; the tenant row as updated.

    One statement, so one round trip: a write's fixed cost is paid on every admin call
    and bounds how many events per second one Postgres can take.
    """
    unknown = change.columns.keys() - _MUTABLE_TENANT_COLUMNS
    if unknown:
        raise ValueError(f"not a mutable tenant column: {sorted(unknown)}")
    # Sorted, so the same set of columns always yields the same text and asyncpg's
    # statement cache reuses the prepared statement.
    names = sorted(change.columns)
    payload = {"action": change.action, "target": change.target, **change.details}
    row: asyncpg.Record = await conn.fetchrow(
        complete_write_statement(names),
        tenant_id,
        actor.id,
        change.action,
        change.target,
        actor.request_id,
        change.reason,
        dict(change.details),
        change.kind,
        change.subject,
        payload,
        NOTIFY_CHANNEL,
        *(change.columns[name] for name in names),
    )
    return row


async def append_events(
    conn: asyncpg.Connection,
    actor: Actor,
    change: AuditedChange,
    *,
    audit_tenant: uuid.UUID | None,
    revisions: Sequence[tuple[uuid.UUID | str, int]],
) -> None:
    """The audit row of a successful change and one outbox event per (tenant, new revision);
    a tenant id may be a UUID or its text (asyncpg encodes either)."""
    await insert_audit(
        conn,
        actor,
        tenant_id=audit_tenant,
        action=change.action,
        target=change.target,
        outcome="ok",
        reason=change.reason,
        details=change.details,
    )
    if revisions:
        payload = {"action": change.action, "target": change.target, **change.details}
        await conn.execute(
            _APPEND_OUTBOX,
            [tenant for tenant, _ in revisions],
            [revision for _, revision in revisions],
            change.kind,
            change.subject,
            payload,
            NOTIFY_CHANNEL,
        )


async def insert_audit(
    conn: asyncpg.Connection,
    actor: Actor,
    *,
    tenant_id: uuid.UUID | None,
    action: str,
    target: str,
    outcome: str,
    reason: str,
    details: Mapping[str, Any],
) -> None:
    await conn.execute(
        _INSERT_AUDIT, tenant_id, actor.id, action, target, actor.request_id, outcome, reason, dict(details)
    )


def completed(write: TenantWrite) -> asyncpg.Record:
    if write.after is None:
        raise RuntimeError("the write has not completed")
    return write.after


def tenant_target(tenant_id: uuid.UUID) -> str:
    return f"tenant/{tenant_id}"
