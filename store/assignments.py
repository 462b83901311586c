"""Role assignments: assign (optionally until a time), revoke (never the last owner),
list, and sweep the expired ones away."""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from gatehouse.engine.model import SubjectRef
from gatehouse.errors import AlreadyExists, NotAMember, NotFound
from gatehouse.store.api import OWNER_ROLE, Actor, AssignmentRecord, Page
from gatehouse.store.members import refuse_last_owner
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import assignment_record
from gatehouse.store.transactions import PLATFORM_SCOPE, require_tenant_id, tenant_revision
from gatehouse.store.write_tail import AuditedChange, TenantWrites, complete_write


class Assignments(TenantWrites):
    """Who holds which role at which scope."""

    async def assign_role(
        self,
        actor: Actor,
        tenant_id: str,
        subject: SubjectRef,
        *,
        role: str,
        scope: str,
        expected_revision: int = 0,
        expires_at: float | None = None,
        condition: str = "",
    ) -> tuple[AssignmentRecord, int]:
        """Grant `role` at `scope` to a member (NotAMember / NotFound / AlreadyExists),
        until `expires_at` (unix seconds; None = for good; the caller checks it is in the
        future), applying only where `condition` (CEL, checked by the caller; "" = none)
        holds. The same grant already expired but not yet swept is granted anew."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
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
                INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope, expires_at, condition)
                VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7)
                ON CONFLICT (tenant_id, subject_type, subject_id, role, scope) DO UPDATE
                    SET expires_at = excluded.expires_at, condition = excluded.condition, created_at = now()
                    WHERE role_assignments.expires_at <= statement_timestamp()
                RETURNING created_at
                """,
                write.tenant_id,
                subject.type,
                subject.id,
                role,
                scope,
                expires_at,
                condition,
            )
            if created_at is None:
                raise AlreadyExists("the subject already has this role at this scope", metadata={"role": role})
            change = _assignment_change("role.assign", subject, role, scope)
            extra: dict[str, object] = {"expires_at": expires_at} if expires_at is not None else {}
            if condition:
                extra["condition"] = condition
            if extra:
                change = replace(change, details={**change.details, **extra})
            write.record(change)
        record = AssignmentRecord(
            str(write.tenant_id), subject, role, scope, created_at.timestamp(), expires_at, condition
        )
        return record, write.revision

    async def revoke_role(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str, expected_revision: int = 0
    ) -> int:
        """Take back one grant (NotFound when there is no such grant); never from the last owner."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            if role == OWNER_ROLE and scope == "":
                await refuse_last_owner(write.conn, write.tenant_id, subject)
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
        tid = require_tenant_id(tenant_id)
        query = Filters()
        query.add("tenant_id = {}", tid)
        if subject is not None:
            query.add("subject_type = {} AND subject_id = {}", subject.type, subject.id)
        after = decode_token(page_token, (str, str, str, str))
        if after is not None:
            query.add("(subject_type, subject_id, role, scope) > ({}, {}, {}, {})", *after)
        size = clamp_page_size(page_size)
        sql = (
            f"SELECT * FROM role_assignments{query.where()}"
            f" ORDER BY subject_type, subject_id, role, scope LIMIT {query.param(size + 1)}"
        )
        async with self._reading(str(tid)) as conn:
            await tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return page_of(
            rows,
            size,
            assignment_record,
            key=lambda row: [row["subject_type"], row["subject_id"], row["role"], row["scope"]],
        )


def _assignment_change(action: str, subject: SubjectRef, role: str, scope: str) -> AuditedChange:
    return AuditedChange(
        action=action,
        target=f"{subject.key}#{role}@{scope}",
        kind="assignment",
        subject=subject.key,
        details={"role": role, "scope": scope},
    )


# --- the sweeper: expired assignments go, as an admin write would take them -------------

SWEEPER = Actor("gatehouse:expiry")  # the audit rows' actor

# Subjects holding an expired assignment, oldest expiry first (the partial index).
_EXPIRED_SUBJECTS = """
SELECT tenant_id, subject_type, subject_id
FROM role_assignments
WHERE expires_at IS NOT NULL AND expires_at <= statement_timestamp()
GROUP BY tenant_id, subject_type, subject_id
ORDER BY min(expires_at)
LIMIT $1
"""
_PLATFORM = "SELECT set_config('gatehouse.tenant_id', $1, true)"
_REMOVE_EXPIRED = """
DELETE FROM role_assignments
WHERE tenant_id = $1 AND subject_type = $2 AND subject_id = $3
  AND expires_at IS NOT NULL AND expires_at <= statement_timestamp()
RETURNING role, scope, extract(epoch FROM expires_at)::float8 AS expires_at
"""


async def sweep_expired_assignments(conn: asyncpg.Connection, *, limit: int = 100) -> int:
    """Delete assignments past their `expires_at`, at most `limit` subjects' worth; the
    number of subjects swept. Every tenant's rows are visible to it: each of its
    transactions sets the platform scope for itself. `conn` has the store's codecs
    (`store.transactions.init_connection`): the relay's own connection.

    Each subject's expired rows go in one transaction of their own, exactly like an admin
    write: the tenant row locked, the rows deleted, the revision bumped, one audit row
    (`role.expire`, actor `gatehouse:expiry`, naming every removed grant) and one outbox
    event for that subject. Nothing depends on it for correctness (an expired grant
    already grants nothing, in every sidecar, from its instant on): it keeps the table
    and ListRoleAssignments clean and tells every cache, through the event, to drop
    entries holding grants that will never apply again. A deleted tenant is skipped (it
    takes no writes; its rows grant nothing anyway).
    """
    swept = 0
    async with conn.transaction():
        await conn.execute(_PLATFORM, PLATFORM_SCOPE)
        expired = await conn.fetch(_EXPIRED_SUBJECTS, limit)
    for tenant_id, subject_type, subject_id in expired:
        async with conn.transaction():
            await conn.execute(_PLATFORM, PLATFORM_SCOPE)
            status = await conn.fetchval("SELECT status FROM tenants WHERE id = $1 FOR UPDATE", tenant_id)
            if status is None or status == "deleted":
                continue
            removed = await conn.fetch(_REMOVE_EXPIRED, tenant_id, subject_type, subject_id)
            if not removed:
                continue  # revoked or re-granted meanwhile
            subject = SubjectRef(subject_type, subject_id)
            change = AuditedChange(
                action="role.expire",
                target=f"member/{subject.key}",
                kind="assignment",
                subject=subject.key,
                details={
                    "expired": [
                        {"role": row["role"], "scope": row["scope"], "expires_at": row["expires_at"]} for row in removed
                    ]
                },
            )
            await complete_write(conn, SWEEPER, tenant_id, change)
            swept += 1
    return swept
