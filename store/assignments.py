"""Role assignments: assign, revoke (never the last owner), list."""

from __future__ import annotations

from gatehouse.engine.model import SubjectRef
from gatehouse.errors import AlreadyExists, NotAMember, NotFound
from gatehouse.store.api import OWNER_ROLE, Actor, AssignmentRecord, Page
from gatehouse.store.members import refuse_last_owner
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import assignment_record
from gatehouse.store.transactions import require_tenant_id, tenant_revision
from gatehouse.store.write_tail import AuditedChange, TenantWrites


class Assignments(TenantWrites):
    """Who holds which role at which scope."""

    async def assign_role(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, role: str, scope: str, expected_revision: int = 0
    ) -> tuple[AssignmentRecord, int]:
        """Grant `role` at `scope` to a member (NotAMember / NotFound / AlreadyExists)."""
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
