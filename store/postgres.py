"""The Postgres driver of the `Store` interface, on an asyncpg pool.

Two rules shape every method:

* Tenant isolation is enforced by Postgres, not only by our WHERE clauses: each
  transaction starts with `set_config('gatehouse.tenant_id', <tenant id or '*'>, true)`
  (sent with its BEGIN, in one round trip) and row-level security hides every other
  tenant's rows. The setting is transaction-local, so a pooled connection never carries
  one tenant's scope into the next caller's transaction.
* Every mutation of a tenant goes through `_tenant_write`: lock the tenant row, check it
  is writable and at the expected revision, change the domain rows, then bump the
  revision and append one audit row and one outbox event in the same transaction.
  Because every mutation of a tenant holds that row lock, the checks a mutation makes
  (is X a member? is role R assigned?) cannot be invalidated before it commits.

The read path (`load_tenant`, `load_subject`) is one query in a read-only transaction:
three round trips (BEGIN with the scope, the query, COMMIT), no reset query on release.
Driver errors are translated to Gatehouse errors by `translated()` around every pool
use; see `gatehouse.store.driver_errors`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any, TypeVar

import asyncpg

from gatehouse.engine.lifecycle import Action, transition
from gatehouse.engine.model import (
    KEY_SUBJECT_TYPE,
    AssignmentRow,
    KeyState,
    Plan,
    PlanFeature,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
    key_subject,
)
from gatehouse.errors import (
    AlreadyExists,
    KeyAlreadyRevoked,
    LastOwner,
    InvalidArgument,
    NotAMember,
    NotFound,
    RevisionConflict,
    RoleInUse,
    SystemRoleImmutable,
    TenantNotFound,
    TenantNotWritable,
)
from gatehouse.store.api import (
    DEFAULT_PLAN,
    OWNER_ROLE,
    SYSTEM_ROLES,
    Actor,
    ApiKeyCredential,
    ApiKeyRecord,
    AssignmentRecord,
    AuditRecord,
    ChangeListener,
    ConfigPatch,
    MemberRecord,
    Page,
    RoleRecord,
)
from gatehouse.store.changes import ChangeFeed, tenant_change
from gatehouse.store.driver_errors import translated
from gatehouse.store.idempotency import IdempotencyKeys
from gatehouse.store.merge_patch import merge_patch
from gatehouse.store.migrate import read_version

__all__ = ["NOTIFY_CHANNEL", "PLATFORM_SCOPE", "PostgresStore", "connect"]

PLATFORM_SCOPE = "*"  # the row-level security scope that sees every tenant
NOTIFY_CHANNEL = "gatehouse_outbox"  # NOTIFY'd with the tenant id when an outbox row commits
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Operator keys belong to no tenant, but their revocation must reach every sidecar like
# any tenant event: it is published under this reserved tenant id, which no tenant has.
PLATFORM_EVENT_TENANT = uuid.UUID(int=0)

_SYSTEM_ROLE_DESCRIPTIONS = {
    "owner": "Owns the tenant: every permission, and the last one cannot be removed",
    "admin": "Every permission",
    "member": "A member with no permissions of its own",
    "viewer": "Read, list and get everything",
}

T = TypeVar("T")


async def connect(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float | None = 30.0,
) -> PostgresStore:
    """A store on a new connection pool to `dsn`; StoreUnavailable when it cannot connect.

    The timeouts bound how long a dead or hung database can hold a caller: the read path
    must fail closed with UNAVAILABLE rather than wait for the kernel to give up.
    """
    with translated():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            command_timeout=command_timeout,
            init=_init_connection,
            reset=_reset_connection,
        )
    return PostgresStore(pool)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python values and take Python values as arguments.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset sends `RESET ALL; UNLISTEN *; CLOSE ALL; ...` on every
    # release: one more round trip on the hot path for nothing, because the store never
    # leaves session state behind (its tenant scope is transaction-local, it never
    # LISTENs or takes session locks on pooled connections). asyncpg still rolls back an
    # open transaction before calling this.
    return None


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

_LOAD_TENANT = """
SELECT t.*, p.features AS plan_features, p.quotas AS plan_quotas, p.rate_limits AS plan_rate_limits
FROM tenants t JOIN plans p ON p.name = t.plan
WHERE t.id = $1
"""

# One statement, so one snapshot: the revision, the membership and the grants agree.
# No rows: no such tenant. One row with a NULL role: a tenant, but no grants.
_LOAD_SUBJECT = """
SELECT t.revision, m.subject_id IS NOT NULL AS is_member, a.role, a.scope, r.permissions,
       k.id IS NOT NULL AS is_key, k.permissions AS key_permissions,
       extract(epoch FROM k.expires_at)::float8 AS key_expires_at, k.revoked_at IS NOT NULL AS key_revoked
FROM tenants t
LEFT JOIN api_keys k
       ON $2 = 'api_key' AND k.id = $3 AND k.tenant_id = t.id
LEFT JOIN memberships m
       ON m.tenant_id = t.id AND m.subject_type = $2 AND m.subject_id = $3
LEFT JOIN role_assignments a
       ON a.tenant_id = m.tenant_id AND a.subject_type = m.subject_type AND a.subject_id = m.subject_id
LEFT JOIN roles r
       ON r.tenant_id = a.tenant_id AND r.name = a.role
WHERE t.id = $1
ORDER BY a.role, a.scope
"""

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


# The end of every single-tenant mutation (`_complete_write`): revision bump, audit row,
# outbox event and NOTIFY in one statement. Data-modifying CTEs always run; the NOTIFY is
# made to depend on the outbox insert so it is sent only with it (and, being
# transactional, only on commit).
_COMPLETE_WRITE = """
WITH bumped AS (
    UPDATE tenants SET revision = revision + 1{assignments} WHERE id = $1 RETURNING *
), audited AS (
    INSERT INTO audit_log (tenant_id, actor, action, target, request_id, outcome, reason, details)
    SELECT id, $2::text, $3::text, $4::text, $5::text, 'ok', $6::text, $7::jsonb FROM bumped
), evented AS (
    INSERT INTO outbox (tenant_id, revision, kind, subject, payload)
    SELECT id, revision, $8::text, $9::text, $10::jsonb FROM bumped
    RETURNING tenant_id
)
SELECT bumped.*, (SELECT count(pg_notify($11::text, tenant_id::text)) FROM evented) AS notified
FROM bumped
"""


class PostgresStore:
    """The `Store` on Postgres. Build it with `connect()`; every method is a coroutine."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.idempotency = IdempotencyKeys(pool)
        self._changes = ChangeFeed()

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Hear of every write this store commits (`Subscribable`)."""
        return self._changes.subscribe(listener)

    # --- lifecycle of the driver ---------------------------------------------------------

    async def close(self) -> None:
        """Close the pool, waiting for borrowed connections to come back."""
        with translated():
            await self._pool.close()

    async def ping(self) -> None:
        """Return when Postgres answers; StoreUnavailable when it does not."""
        async with self._reading(PLATFORM_SCOPE):
            pass  # beginning and committing a transaction is the round trip we want

    async def schema_version(self) -> int:
        """The schema version of the database (compare with migrate.LATEST_VERSION)."""
        async with self._reading(PLATFORM_SCOPE) as conn:
            return await read_version(conn)

    # --- the read path ---------------------------------------------------------------------

    async def load_tenant(self, tenant_id: str) -> TenantSnapshot | None:
        """The tenant and its plan, read in one statement; None when there is no such tenant."""
        tid = _parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow(_LOAD_TENANT, tid)
        if row is None:
            return None
        plan = _plan(row["plan"], row["plan_features"], row["plan_quotas"], row["plan_rate_limits"])
        return TenantSnapshot(tenant=_tenant_record(row), plan=plan)

    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> SubjectSnapshot | None:
        """Membership and grants of one subject, stamped with the tenant revision read in
        the same statement; None when there is no such tenant."""
        tid = _parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            rows = await conn.fetch(_LOAD_SUBJECT, tid, subject.type, subject.id)
        if not rows:
            return None
        assignments = tuple(
            AssignmentRow(role=row["role"], scope=row["scope"], permissions=tuple(row["permissions"]))
            for row in rows
            if row["role"] is not None
        )
        first = rows[0]
        key = None
        if first["is_key"]:
            key = KeyState(
                permissions=tuple(first["key_permissions"]),
                expires_at=first["key_expires_at"],
                revoked=first["key_revoked"],
            )
        return SubjectSnapshot(
            tenant_id=str(tid),
            subject=subject,
            revision=first["revision"],
            is_member=first["is_member"],
            assignments=assignments,
            key=key,
        )

    # --- tenants ---------------------------------------------------------------------------

    async def create_tenant(
        self, actor: Actor, *, slug: str, name: str, plan: str, region: str, settings: Mapping[str, Any]
    ) -> TenantRecord:
        """A new DRAFT tenant at revision 1 with the system roles; AlreadyExists for a taken slug."""
        plan = plan or DEFAULT_PLAN
        # Platform scope: the tenant's id does not exist until the INSERT makes it.
        async with self._transaction(PLATFORM_SCOPE) as conn:
            await _require_plan(conn, plan)
            row = await conn.fetchrow(
                """
                INSERT INTO tenants (slug, name, plan, region, settings) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (slug) DO NOTHING
                RETURNING *
                """,
                slug,
                name,
                plan,
                region,
                dict(settings),
            )
            if row is None:
                raise AlreadyExists("a tenant with this slug already exists", metadata={"slug": slug})
            await conn.executemany(
                "INSERT INTO roles (tenant_id, name, permissions, description, system) VALUES ($1, $2, $3, $4, true)",
                [
                    (row["id"], role, list(permissions), _SYSTEM_ROLE_DESCRIPTIONS.get(role, ""))
                    for role, permissions in SYSTEM_ROLES.items()
                ],
            )
            change = AuditedChange(
                action="tenant.create",
                target=_tenant_target(row["id"]),
                kind="tenant",
                details={"slug": slug, "plan": plan, "region": region},
            )
            await _append_events(conn, actor, change, audit_tenant=row["id"], revisions=[(row["id"], row["revision"])])
        await self._changes.publish([tenant_change(row["id"], row["revision"], change.kind, change.subject)])
        return _tenant_record(row)

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant; TenantNotFound when there is none."""
        tid = _require_tenant_id(tenant_id)
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow("SELECT * FROM tenants WHERE id = $1", tid)
        if row is None:
            raise TenantNotFound("tenant not found", metadata={"tenant_id": tenant_id})
        return _tenant_record(row)

    async def list_tenants(
        self, *, page_size: int, page_token: str, status: TenantStatus | None, plan: str, region: str
    ) -> Page[TenantRecord]:
        """Tenants in slug order, optionally filtered by status, plan and region (empty = any)."""
        query = _Filters()
        if status is not None:
            query.add("status = {}", status.value)
        if plan:
            query.add("plan = {}", plan)
        if region:
            query.add("region = {}", region)
        after = _decode_token(page_token, (str,))
        if after is not None:
            query.add("slug > {}", *after)
        size = _page_size(page_size)
        sql = f"SELECT * FROM tenants{query.where()} ORDER BY slug LIMIT {query.param(size + 1)}"
        async with self._reading(PLATFORM_SCOPE) as conn:
            rows = await conn.fetch(sql, *query.args)
        return _page(rows, size, _tenant_record, key=lambda row: [row["slug"]])

    async def update_tenant(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        expected_revision: int,
        name: str | None,
        plan: str | None,
        region: str | None,
    ) -> TenantRecord:
        """Change name, plan and/or region (None = unchanged)."""
        columns = {
            column: value for column, value in (("name", name), ("plan", plan), ("region", region)) if value is not None
        }
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            if plan is not None:
                await _require_plan(write.conn, plan)
            write.record(
                AuditedChange(
                    action="tenant.update",
                    target=_tenant_target(write.tenant_id),
                    kind="tenant",
                    details=columns,
                    columns=columns,
                )
            )
        return _tenant_record(_completed(write))

    async def transition_tenant(
        self, actor: Actor, tenant_id: str, action: Action, *, reason: str, expected_revision: int, confirm: bool
    ) -> TenantRecord:
        """Apply a lifecycle action (IllegalTransition / ConfirmationRequired per the table),
        recording who did it and why; the database stamps when."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            before = TenantStatus(write.before["status"])
            after = transition(before, action, confirm=confirm)
            write.record(
                AuditedChange(
                    action=f"tenant.{action.value}",
                    target=_tenant_target(write.tenant_id),
                    kind="tenant",
                    details={"from": before.value, "to": after.value},
                    reason=reason,
                    columns={"status": after.value, "status_reason": reason, "status_changed_by": actor.id},
                )
            )
        return _tenant_record(_completed(write))

    async def patch_tenant_config(
        self, actor: Actor, tenant_id: str, patch: ConfigPatch, *, expected_revision: int
    ) -> TenantRecord:
        """Merge-patch the settings (RFC 7396) and set or clear flag and quota overrides.

        A key both set and cleared in one patch ends up set.
        """
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            columns: dict[str, Any] = {}
            if patch.settings_patch is not None:
                columns["settings"] = merge_patch(write.before["settings"], patch.settings_patch)
            if patch.set_flags or patch.clear_flags:
                columns["flag_overrides"] = _overridden(
                    write.before["flag_overrides"], patch.set_flags, patch.clear_flags
                )
            if patch.set_quotas or patch.clear_quotas:
                columns["quota_overrides"] = _overridden(
                    write.before["quota_overrides"], patch.set_quotas, patch.clear_quotas
                )
            write.record(
                AuditedChange(
                    action="tenant.config.patch",
                    target=_tenant_target(write.tenant_id),
                    kind="config",
                    details={
                        "settings_keys": sorted(patch.settings_patch or ()),
                        "set_flags": dict(patch.set_flags),
                        "clear_flags": list(patch.clear_flags),
                        "set_quotas": dict(patch.set_quotas),
                        "clear_quotas": list(patch.clear_quotas),
                    },
                    columns=columns,
                )
            )
        return _tenant_record(_completed(write))

    # --- plans -----------------------------------------------------------------------------

    async def upsert_plan(self, actor: Actor, plan: Plan) -> tuple[Plan, list[tuple[str, int]]]:
        """Create or replace a plan; every tenant on it gets a revision bump and an outbox
        event, since its effective flags may have changed. Deleted tenants too: a deleted
        tenant's config is still served, and one revision must mean one config. Returns the stored plan and
        (tenant id, new revision) of each of those tenants."""
        async with self._transaction(PLATFORM_SCOPE) as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO plans (name, features, quotas, rate_limits) VALUES ($1, $2, $3, $4)
                ON CONFLICT (name) DO UPDATE
                SET features = excluded.features, quotas = excluded.quotas, rate_limits = excluded.rate_limits
                RETURNING *
                """,
                plan.name,
                _features_json(plan.features),
                dict(plan.quotas),
                dict(plan.rate_limits),
            )
            bumped = await conn.fetch(
                """
                UPDATE tenants SET revision = revision + 1
                WHERE plan = $1
                RETURNING id, revision
                """,
                plan.name,
            )
            change = AuditedChange(
                action="plan.upsert", target=f"plan/{plan.name}", kind="plan", details={"plan": plan.name}
            )
            # One audit row for the plan (platform-wide: no tenant), one event per tenant.
            revisions = [(str(r["id"]), int(r["revision"])) for r in bumped]
            await _append_events(conn, actor, change, audit_tenant=None, revisions=revisions)
        await self._changes.publish(tenant_change(t, r, change.kind, change.subject) for t, r in revisions)
        return _plan(row["name"], row["features"], row["quotas"], row["rate_limits"]), revisions

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        async with self._reading(PLATFORM_SCOPE) as conn:
            rows = await conn.fetch("SELECT * FROM plans ORDER BY name")
        return [_plan(row["name"], row["features"], row["quotas"], row["rate_limits"]) for row in rows]

    # --- roles -----------------------------------------------------------------------------

    async def create_role(
        self, actor: Actor, tenant_id: str, *, name: str, permissions: tuple[str, ...], description: str
    ) -> tuple[RoleRecord, int]:
        """A new tenant role; AlreadyExists when the name is taken (system roles included)."""
        async with self._tenant_write(actor, tenant_id) as write:
            row = await write.conn.fetchrow(
                """
                INSERT INTO roles (tenant_id, name, permissions, description) VALUES ($1, $2, $3, $4)
                ON CONFLICT DO NOTHING
                RETURNING *
                """,
                write.tenant_id,
                name,
                list(permissions),
                description,
            )
            if row is None:
                raise AlreadyExists("a role with this name already exists", metadata={"role": name})
            write.record(_role_change("role.create", name, permissions))
        return _role_record(row), write.revision

    async def update_role(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        name: str,
        permissions: tuple[str, ...],
        description: str,
        expected_revision: int,
    ) -> tuple[RoleRecord, int]:
        """Replace a tenant role's permissions and description; system roles are immutable."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            await _require_custom_role(write.conn, write.tenant_id, name)
            row = await write.conn.fetchrow(
                "UPDATE roles SET permissions = $3, description = $4 WHERE tenant_id = $1 AND name = $2 RETURNING *",
                write.tenant_id,
                name,
                list(permissions),
                description,
            )
            # Every holder of the role is affected: the event names no single subject.
            write.record(_role_change("role.update", name, permissions))
        return _role_record(row), write.revision

    async def delete_role(self, actor: Actor, tenant_id: str, *, name: str) -> int:
        """Delete a tenant role that nobody holds (RoleInUse otherwise)."""
        async with self._tenant_write(actor, tenant_id) as write:
            await _require_custom_role(write.conn, write.tenant_id, name)
            in_use = await write.conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM role_assignments WHERE tenant_id = $1 AND role = $2)",
                write.tenant_id,
                name,
            )
            if in_use:
                raise RoleInUse("the role is still assigned; revoke it first", metadata={"role": name})
            await write.conn.execute("DELETE FROM roles WHERE tenant_id = $1 AND name = $2", write.tenant_id, name)
            write.record(_role_change("role.delete", name, ()))
        return write.revision

    async def list_roles(self, tenant_id: str) -> tuple[list[RoleRecord], int]:
        """Every role of the tenant (system roles included), by name, and the tenant revision."""
        tid = _require_tenant_id(tenant_id)
        async with self._reading(str(tid)) as conn:
            revision = await _tenant_revision(conn, tid)
            rows = await conn.fetch("SELECT * FROM roles WHERE tenant_id = $1 ORDER BY name", tid)
        return [_role_record(row) for row in rows], revision

    # --- members ---------------------------------------------------------------------------

    async def add_member(self, actor: Actor, tenant_id: str, subject: SubjectRef) -> tuple[MemberRecord, int]:
        """Make `subject` a member; AlreadyExists when it is one."""
        async with self._tenant_write(actor, tenant_id) as write:
            created_at = await write.conn.fetchval(
                """
                INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING
                RETURNING created_at
                """,
                write.tenant_id,
                subject.type,
                subject.id,
            )
            if created_at is None:
                raise AlreadyExists("the subject is already a member", metadata={"subject": subject.key})
            write.record(
                AuditedChange(
                    action="member.add", target=f"member/{subject.key}", kind="membership", subject=subject.key
                )
            )
        return MemberRecord(str(write.tenant_id), subject, created_at.timestamp()), write.revision

    async def remove_member(self, actor: Actor, tenant_id: str, subject: SubjectRef) -> int:
        """Remove a member and, by cascade, its role assignments; never the last owner."""
        async with self._tenant_write(actor, tenant_id) as write:
            await _refuse_last_owner(write.conn, write.tenant_id, subject)
            removed = await write.conn.fetchval(
                "DELETE FROM memberships WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3 RETURNING 1",
                write.tenant_id,
                subject.type,
                subject.id,
            )
            if removed is None:
                raise NotFound("the subject is not a member", metadata={"subject": subject.key})
            write.record(
                AuditedChange(
                    action="member.remove", target=f"member/{subject.key}", kind="membership", subject=subject.key
                )
            )
        return write.revision

    async def list_members(self, tenant_id: str, *, page_size: int, page_token: str) -> Page[MemberRecord]:
        """Members in (type, id) order."""
        tid = _require_tenant_id(tenant_id)
        query = _Filters()
        query.add("tenant_id = {}", tid)
        after = _decode_token(page_token, (str, str))
        if after is not None:
            query.add("(subject_type, subject_id) > ({}, {})", *after)
        size = _page_size(page_size)
        sql = (
            f"SELECT * FROM memberships{query.where()} ORDER BY subject_type, subject_id LIMIT {query.param(size + 1)}"
        )
        async with self._reading(str(tid)) as conn:
            await _tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return _page(rows, size, _member_record, key=lambda row: [row["subject_type"], row["subject_id"]])

    # --- role assignments ------------------------------------------------------------------

    async def assign_role(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str
    ) -> tuple[AssignmentRecord, int]:
        """Grant `role` at `scope` to a member (NotAMember / NotFound / AlreadyExists)."""
        async with self._tenant_write(actor, tenant_id) as write:
            is_member, role_exists = await write.conn.fetchrow(
                """
                SELECT EXISTS (SELECT 1 FROM memberships
                               WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3),
                       EXISTS (SELECT 1 FROM roles WHERE tenant_id = $1 AND name = $4)
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
            )
            if not is_member:
                raise NotAMember("roles are assigned to members only", metadata={"subject": subject.key})
            if not role_exists:
                raise NotFound("role not found", metadata={"role": role})
            created_at = await write.conn.fetchval(
                """
                INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT DO NOTHING
                RETURNING created_at
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
                scope,
            )
            if created_at is None:
                raise AlreadyExists("the subject already has this role at this scope", metadata={"role": role})
            write.record(_assignment_change("role.assign", subject, role, scope))
        return AssignmentRecord(str(write.tenant_id), subject, role, scope, created_at.timestamp()), write.revision

    async def revoke_role(self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str) -> int:
        """Take back one grant (NotFound when there is no such grant); never from the last owner."""
        async with self._tenant_write(actor, tenant_id) as write:
            if role == OWNER_ROLE and scope == "":
                await _refuse_last_owner(write.conn, write.tenant_id, subject)
            revoked = await write.conn.fetchval(
                """
                DELETE FROM role_assignments
                WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3 AND role = $4 AND scope = $5
                RETURNING 1
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
                scope,
            )
            if revoked is None:
                raise NotFound("no such role assignment", metadata={"subject": subject.key, "role": role})
            write.record(_assignment_change("role.revoke", subject, role, scope))
        return write.revision

    async def list_role_assignments(
        self, tenant_id: str, *, subject: SubjectRef | None, page_size: int, page_token: str
    ) -> Page[AssignmentRecord]:
        """Assignments in (subject, role, scope) order, optionally of one subject."""
        tid = _require_tenant_id(tenant_id)
        query = _Filters()
        query.add("tenant_id = {}", tid)
        if subject is not None:
            query.add("subject_type = {} AND subject_id = {}", subject.type, subject.id)
        after = _decode_token(page_token, (str, str, str, str))
        if after is not None:
            query.add("(subject_type, subject_id, role, scope) > ({}, {}, {}, {})", *after)
        size = _page_size(page_size)
        sql = (
            f"SELECT * FROM role_assignments{query.where()}"
            f" ORDER BY subject_type, subject_id, role, scope LIMIT {query.param(size + 1)}"
        )
        async with self._reading(str(tid)) as conn:
            await _tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return _page(
            rows,
            size,
            _assignment_record,
            key=lambda row: [row["subject_type"], row["subject_id"], row["role"], row["scope"]],
        )

    # --- API keys ---------------------------------------------------------------------------

    async def create_api_key(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        key_id: str,
        secret_hash: str,
        name: str,
        permissions: Sequence[str],
        expires_at: float | None,
        roles: Sequence[tuple[str, str]],
    ) -> tuple[ApiKeyRecord, int]:
        """A tenant key: a member of its tenant (subject `api_key/<id>`) holding `roles`,
        limited to `permissions`. With tenant_id "": an operator key, whose patterns are
        its whole grant, on the platform."""
        expires = datetime.fromtimestamp(expires_at, tz=UTC) if expires_at is not None else None
        details = {"name": name, "permissions": list(permissions), "roles": [list(r) for r in roles]}
        if not tenant_id:
            async with self._transaction(PLATFORM_SCOPE) as conn:
                row = await conn.fetchrow(
                    _INSERT_KEY, key_id, None, name, secret_hash, list(permissions), expires, actor.id
                )
                await _insert_audit(
                    conn, actor, tenant_id=None, action="key.create", target=key_subject(key_id).key, outcome="ok",
                    reason="", details=details,
                )
            return _key_record(row, ()), 0
        async with self._tenant_write(actor, tenant_id) as write:
            conn, tid = write.conn, write.tenant_id
            known = set(await conn.fetchval(
                "SELECT coalesce(array_agg(name), '{}') FROM roles WHERE tenant_id = $1 AND name = ANY($2::text[])",
                tid,
                [role for role, _ in roles],
            ))
            for role, _ in roles:
                if role not in known:
                    raise NotFound("role not found", metadata={"role": role})
            row = await conn.fetchrow(_INSERT_KEY, key_id, tid, name, secret_hash, list(permissions), expires, actor.id)
            await conn.execute(
                "INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, $2, $3)",
                tid,
                KEY_SUBJECT_TYPE,
                key_id,
            )
            await conn.executemany(
                "INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                [(tid, KEY_SUBJECT_TYPE, key_id, role, scope) for role, scope in roles],
            )
            write.record(
                AuditedChange(
                    action="key.create", target=key_subject(key_id).key, kind="key",
                    subject=key_subject(key_id).key, details=details,
                )
            )
        return _key_record(row, tuple(roles)), write.revision

    async def revoke_api_key(self, actor: Actor, tenant_id: str, key_id: str) -> int:
        """Stop a key working, at every sidecar (a `key` event names it). NotFound when the
        key is not in that tenant (or, with tenant_id "", not an operator key)."""
        subject = key_subject(key_id).key
        change = AuditedChange(action="key.revoke", target=subject, kind="key", subject=subject)
        if not tenant_id:
            async with self._transaction(PLATFORM_SCOPE) as conn:
                await _revoke_key(conn, actor, None, key_id)
                await _append_events(conn, actor, change, audit_tenant=None, revisions=[(PLATFORM_EVENT_TENANT, 0)])
            return 0
        async with self._tenant_write(actor, tenant_id) as write:
            await _revoke_key(write.conn, actor, write.tenant_id, key_id)
            write.record(change)
        return write.revision

    async def list_api_keys(self, tenant_id: str, *, page_size: int, page_token: str) -> Page[ApiKeyRecord]:
        """A tenant's keys (or, with tenant_id "", the operator keys), oldest first, with
        the roles each holds now; never a secret or a hash."""
        query = _Filters()
        if tenant_id:
            tid = _require_tenant_id(tenant_id)
            scope = str(tid)
            query.add("k.tenant_id = {}", tid)
        else:
            scope = PLATFORM_SCOPE
            query.add("k.tenant_id IS NULL")
        after = _decode_token(page_token, (str,))
        if after is not None:
            query.add("k.id > {}", *after)
        size = _page_size(page_size)
        sql = f"""
            SELECT k.*,
                   (SELECT coalesce(array_agg(ARRAY[a.role, a.scope] ORDER BY a.role, a.scope), '{{}}')
                    FROM role_assignments a
                    WHERE a.tenant_id = k.tenant_id AND a.subject_type = {query.param(KEY_SUBJECT_TYPE)}
                      AND a.subject_id = k.id) AS grants
            FROM api_keys k{query.where()} ORDER BY k.id LIMIT {query.param(size + 1)}
        """
        async with self._reading(scope) as conn:
            if tenant_id:
                await _tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return _page(
            # (role, scope) pairs as a two-dimensional array: no separator to collide with.
            rows, size, lambda row: _key_record(row, tuple((role, scope) for role, scope in row["grants"])),
            key=lambda row: [row["id"]],
        )

    async def find_api_key(self, key_id: str) -> ApiKeyCredential | None:
        async with self._reading(PLATFORM_SCOPE) as conn:
            row = await conn.fetchrow(
                "SELECT id, tenant_id, secret_hash, permissions, extract(epoch FROM expires_at)::float8 AS expires,"
                " revoked_at IS NOT NULL AS revoked FROM api_keys WHERE id = $1",
                key_id,
            )
        if row is None:
            return None
        return ApiKeyCredential(
            id=row["id"],
            tenant_id=str(row["tenant_id"]) if row["tenant_id"] is not None else "",
            secret_hash=row["secret_hash"],
            permissions=tuple(row["permissions"]),
            expires_at=row["expires"],
            revoked=row["revoked"],
        )

    # --- audit -----------------------------------------------------------------------------

    async def record_audit(
        self, actor: Actor, *, tenant_id: str | None, action: str, target: str, outcome: str, reason: str
    ) -> None:
        """An audit row on its own (denied or failed calls). A tenant id that is not one is
        kept in the details and the row filed as platform-wide."""
        tid = _parse_tenant_id(tenant_id) if tenant_id else None
        details = {"tenant_id": tenant_id} if tenant_id and tid is None else {}
        async with self._transaction(str(tid) if tid else PLATFORM_SCOPE) as conn:
            await _insert_audit(
                conn,
                actor,
                tenant_id=tid,
                action=action,
                target=target,
                outcome=outcome,
                reason=reason,
                details=details,
            )

    async def list_audit_events(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        since: float | None,
        until: float | None,
        page_size: int,
        page_token: str,
    ) -> Page[AuditRecord]:
        """Audit events newest first; one tenant's, or every event when tenant_id is empty.
        `since` is inclusive and `until` exclusive (unix seconds)."""
        query = _Filters()
        scope = PLATFORM_SCOPE
        if tenant_id:
            tid = _require_tenant_id(tenant_id)
            scope = str(tid)
            query.add("tenant_id = {}", tid)
        if actor:
            query.add("actor = {}", actor)
        if action:
            query.add("action = {}", action)
        if since is not None:
            query.add("created_at >= {}", datetime.fromtimestamp(since, tz=UTC))
        if until is not None:
            query.add("created_at < {}", datetime.fromtimestamp(until, tz=UTC))
        after = _decode_token(page_token, (int,))
        if after is not None:
            query.add("id < {}", *after)
        size = _page_size(page_size)
        sql = f"SELECT * FROM audit_log{query.where()} ORDER BY id DESC LIMIT {query.param(size + 1)}"
        async with self._reading(scope) as conn:
            rows = await conn.fetch(sql, *query.args)
        return _page(rows, size, _audit_record, key=lambda row: [row["id"]])

    # --- transactions ----------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(self, scope: str, *, readonly: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that sees only `scope`'s rows (a tenant id, or PLATFORM_SCOPE)."""
        with translated():
            conn = await self._begin(_begin_statement(scope, readonly=readonly))
            try:
                try:
                    yield conn
                except BaseException:
                    await _rollback(conn)
                    raise
                await conn.execute("COMMIT")
            finally:
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
                await conn.execute(begin)
                return conn
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

    @asynccontextmanager
    async def _tenant_write(
        self, actor: Actor, tenant_id: str, *, expected_revision: int = 0
    ) -> AsyncIterator[TenantWrite]:
        """The one way a tenant is changed: lock it, check it, let the body change rows and
        `record()` what it did, then bump the revision and write the audit row and the
        outbox event, all in one transaction. Any exception rolls all of it back."""
        tid = _require_tenant_id(tenant_id)
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
            write.after = await _complete_write(conn, actor, tid, write.change)
        # Committed: now, and only now, the subscribers hear of it.
        await self._changes.publish([tenant_change(tid, write.revision, write.change.kind, write.change.subject)])


# --- transactions ---------------------------------------------------------------------------------


def _begin_statement(scope: str, *, readonly: bool) -> str:
    """BEGIN and the row-level security scope, as one message and so one round trip.

    A simple-protocol message takes no parameters, so the scope is inlined: it must be
    exactly '*' or a canonical uuid (the only values this module builds), which leaves
    nothing to quote or inject. `is_local=true` ends the scope with the transaction, so
    the next borrower of this pooled connection starts with none.
    """
    if _SCOPE_RE.fullmatch(scope) is None:
        raise ValueError(f"not a tenant scope: {scope!r}")
    mode = " ISOLATION LEVEL REPEATABLE READ READ ONLY" if readonly else ""
    return f"BEGIN{mode}; SELECT set_config('gatehouse.tenant_id', '{scope}', true)"


async def _rollback(conn: asyncpg.Connection) -> None:
    # The body's error is the one the caller must see. If the rollback fails as well the
    # connection is broken, and the pool discards it on release.
    with contextlib.suppress(Exception):
        await conn.execute("ROLLBACK")


# --- statements shared by the mutations --------------------------------------------------------


async def _complete_write(
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
    assignments = "".join(f", {name} = ${number}" for number, name in enumerate(names, start=12))
    payload = {"action": change.action, "target": change.target, **change.details}
    row: asyncpg.Record = await conn.fetchrow(
        _COMPLETE_WRITE.format(assignments=assignments),
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


async def _append_events(
    conn: asyncpg.Connection,
    actor: Actor,
    change: AuditedChange,
    *,
    audit_tenant: uuid.UUID | None,
    revisions: Sequence[tuple[uuid.UUID, int]],
) -> None:
    """The audit row of a successful change and one outbox event per (tenant, new revision)."""
    await _insert_audit(
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


async def _insert_audit(
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


async def _require_plan(conn: asyncpg.Connection, plan: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)", plan):
        raise InvalidArgument("plan", "unknown plan")


async def _tenant_revision(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> int:
    """The tenant's revision; TenantNotFound when there is no such tenant."""
    revision: int | None = await conn.fetchval("SELECT revision FROM tenants WHERE id = $1", tenant_id)
    if revision is None:
        raise TenantNotFound("tenant not found", metadata={"tenant_id": str(tenant_id)})
    return revision


async def _require_custom_role(conn: asyncpg.Connection, tenant_id: uuid.UUID, name: str) -> None:
    """NotFound when the role does not exist, SystemRoleImmutable when it is a system role."""
    system = await conn.fetchval("SELECT system FROM roles WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    if system is None:
        raise NotFound("role not found", metadata={"role": name})
    if system:
        raise SystemRoleImmutable(f"{name} is a system role and cannot be changed", metadata={"role": name})


async def _refuse_last_owner(conn: asyncpg.Connection, tenant_id: uuid.UUID, subject: SubjectRef) -> None:
    """FailedPrecondition when `subject` is the only holder of `owner` at the tenant root."""
    holds, others = await conn.fetchrow(
        """
        SELECT coalesce(bool_or(subject_type = $2 AND subject_id = $3), false),
               count(*) FILTER (WHERE NOT (subject_type = $2 AND subject_id = $3))
        FROM role_assignments
        WHERE tenant_id = $1 AND role = $4 AND scope = ''
        """,
        tenant_id,
        subject.type,
        subject.id,
        OWNER_ROLE,
    )
    if holds and others == 0:
        raise LastOwner(
            "the last owner of a tenant cannot be removed or demoted",
            metadata={"subject": subject.key, "rule": "last_owner"},
        )


def _completed(write: TenantWrite) -> asyncpg.Record:
    if write.after is None:
        raise RuntimeError("the write has not completed")
    return write.after


def _role_change(action: str, name: str, permissions: Sequence[str]) -> AuditedChange:
    details: dict[str, Any] = {"role": name}
    if permissions:
        details["permissions"] = list(permissions)
    return AuditedChange(action=action, target=f"role/{name}", kind="role", details=details)


def _assignment_change(action: str, subject: SubjectRef, role: str, scope: str) -> AuditedChange:
    return AuditedChange(
        action=action,
        target=f"{subject.key}#{role}@{scope}",
        kind="assignment",
        subject=subject.key,
        details={"role": role, "scope": scope},
    )


def _overridden(current: Mapping[str, T], set_: Mapping[str, T], clear: Sequence[str]) -> dict[str, T]:
    cleared = set(clear)
    overrides = {key: value for key, value in current.items() if key not in cleared}
    overrides.update(set_)
    return overrides


# --- tenant ids ----------------------------------------------------------------------------------


def _parse_tenant_id(tenant_id: str) -> uuid.UUID | None:
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


def _require_tenant_id(tenant_id: str) -> uuid.UUID:
    tid = _parse_tenant_id(tenant_id)
    if tid is None:
        raise TenantNotFound("tenant not found", metadata={"tenant_id": tenant_id})
    return tid


def _tenant_target(tenant_id: uuid.UUID) -> str:
    return f"tenant/{tenant_id}"


# --- rows to records ------------------------------------------------------------------------------


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _tenant_record(row: asyncpg.Record) -> TenantRecord:
    return TenantRecord(
        id=str(row["id"]),
        slug=row["slug"],
        name=row["name"],
        status=TenantStatus(row["status"]),
        plan=row["plan"],
        region=row["region"],
        settings=row["settings"],
        flag_overrides=row["flag_overrides"],
        quota_overrides=row["quota_overrides"],
        revision=row["revision"],
        status_reason=row["status_reason"],
        status_changed_by=row["status_changed_by"],
        status_changed_at=_timestamp(row["status_changed_at"]),
        created_at=_timestamp(row["created_at"]),
        updated_at=_timestamp(row["updated_at"]),
    )


def _plan(name: str, features: Mapping[str, Any], quotas: Mapping[str, int], rate_limits: Mapping[str, int]) -> Plan:
    return Plan(
        name=name,
        features={
            feature: PlanFeature(default_enabled=bool(spec.get("default_enabled")), gates=tuple(spec.get("gates", ())))
            for feature, spec in features.items()
        },
        quotas=dict(quotas),
        rate_limits=dict(rate_limits),
    )


def _features_json(features: Mapping[str, PlanFeature]) -> dict[str, Any]:
    return {
        feature: {"default_enabled": spec.default_enabled, "gates": list(spec.gates)}
        for feature, spec in features.items()
    }


def _role_record(row: asyncpg.Record) -> RoleRecord:
    return RoleRecord(
        tenant_id=str(row["tenant_id"]),
        name=row["name"],
        permissions=tuple(row["permissions"]),
        description=row["description"],
        system=row["system"],
    )


def _member_record(row: asyncpg.Record) -> MemberRecord:
    return MemberRecord(
        tenant_id=str(row["tenant_id"]),
        subject=SubjectRef(row["subject_type"], row["subject_id"]),
        created_at=_timestamp(row["created_at"]),
    )


def _assignment_record(row: asyncpg.Record) -> AssignmentRecord:
    return AssignmentRecord(
        tenant_id=str(row["tenant_id"]),
        subject=SubjectRef(row["subject_type"], row["subject_id"]),
        role=row["role"],
        scope=row["scope"],
        created_at=_timestamp(row["created_at"]),
    )


def _audit_record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        tenant_id=str(row["tenant_id"]) if row["tenant_id"] is not None else "",
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        request_id=row["request_id"],
        outcome=row["outcome"],
        reason=row["reason"],
        time=row["created_at"].timestamp(),
    )


# --- list queries and page tokens ---------------------------------------------------------------


class _Filters:
    """A WHERE clause assembled from optional filters, numbering its `$n` parameters.

    Built per call rather than one query with `($1 IS NULL OR ...)` so that each filter
    combination gets a plan that can use its index.
    """

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        """A placeholder bound to `value`."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: Any) -> None:
        """Add a condition; each `{}` in `template` becomes a placeholder for the next value."""
        self.clauses.append(template.format(*(self.param(value) for value in values)))

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""


def _page_size(requested: int) -> int:
    return min(requested, MAX_PAGE_SIZE) if requested > 0 else DEFAULT_PAGE_SIZE


def _page(
    rows: Sequence[asyncpg.Record],
    size: int,
    convert: Callable[[asyncpg.Record], T],
    *,
    key: Callable[[asyncpg.Record], list[Any]],
) -> Page[T]:
    """The first `size` rows as records; a token for the next page when there were more
    (the query asks for size + 1 rows to find out without a count)."""
    items = [convert(row) for row in rows[:size]]
    token = _encode_token(key(rows[size - 1])) if len(rows) > size else ""
    return Page(items=items, next_page_token=token)


def _encode_token(key: list[Any]) -> str:
    # Opaque to callers: the sort key of the last row returned, as base64url JSON.
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(token: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The sort key in `token` (None for the first page); InvalidArgument when it is not
    one this listing handed out."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
        key = None
    if not (
        isinstance(key, list)
        and len(key) == len(shape)
        and all(type(value) is expected for value, expected in zip(key, shape, strict=True))
        # One spelling per token, like every identifier: base64 decoding ignores stray
        # characters and padding, and JSON spacing, so a token must be exactly what
        # `_encode_token` makes of the key it holds.
        and _encode_token(key) == token
    ):
        raise InvalidArgument("page_token", "is not a page token from this listing")
    return key


_INSERT_KEY = """
INSERT INTO api_keys (id, tenant_id, name, secret_hash, permissions, expires_at, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""


async def _revoke_key(conn: asyncpg.Connection, actor: Actor, tenant_id: uuid.UUID | None, key_id: str) -> None:
    revoked_at = await conn.fetchrow(
        "SELECT revoked_at FROM api_keys WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 FOR UPDATE",
        key_id,
        tenant_id,
    )
    if revoked_at is None:
        raise NotFound("no such API key", metadata={"key_id": key_id})
    if revoked_at["revoked_at"] is not None:
        raise KeyAlreadyRevoked("the key is already revoked", metadata={"key_id": key_id})
    await conn.execute(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2 WHERE id = $1", key_id, actor.id
    )


def _key_record(row: asyncpg.Record, roles: tuple[tuple[str, str], ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        tenant_id=str(row["tenant_id"]) if row["tenant_id"] is not None else "",
        name=row["name"],
        permissions=tuple(row["permissions"]),
        expires_at=_timestamp(row["expires_at"]),
        created_by=row["created_by"],
        created_at=_timestamp(row["created_at"]),
        revoked_at=_timestamp(row["revoked_at"]),
        roles=roles,
    )
