"""Memberships: add, remove (never the last owner), list."""

from __future__ import annotations

import uuid

import asyncpg

from gatehouse.engine.model import SubjectRef
from gatehouse.errors import AlreadyExists, LastOwner, NotFound
from gatehouse.store.api import OWNER_ROLE, Actor, MemberRecord, Page
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import member_record
from gatehouse.store.transactions import require_tenant_id, tenant_revision
from gatehouse.store.write_tail import AuditedChange, TenantWrites


class Members(TenantWrites):
    """A tenant's members."""

    async def add_member(
        self, actor: Actor, tenant_id: str, subject: SubjectRef, *, expected_revision: int = 0
    ) -> tuple[MemberRecord, int]:
        """Make `subject` a member; AlreadyExists when it is one."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
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

    async def remove_member(self, actor: Actor, tenant_id: str, subject: SubjectRef, *, expected_revision: int = 0) -> int:
        """Remove a member and, by cascade, its role assignments; never the last owner."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            await refuse_last_owner(write.conn, write.tenant_id, subject)
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
        tid = require_tenant_id(tenant_id)
        query = Filters()
        query.add("tenant_id = {}", tid)
        after = decode_token(page_token, (str, str))
        if after is not None:
            query.add("(subject_type, subject_id) > ({}, {})", *after)
        size = clamp_page_size(page_size)
        sql = (
            f"SELECT * FROM memberships{query.where()} ORDER BY subject_type, subject_id LIMIT {query.param(size + 1)}"
        )
        async with self._reading(str(tid)) as conn:
            await tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return page_of(rows, size, member_record, key=lambda row: [row["subject_type"], row["subject_id"]])


async def refuse_last_owner(conn: asyncpg.Connection, tenant_id: uuid.UUID, subject: SubjectRef) -> None:
    """FailedPrecondition when `subject` is the only holder of `owner` at the tenant root.
    An owner grant that expires or has a condition does not count as another owner: it
    could leave the tenant with none."""
    holds, others = await conn.fetchrow(
        """
        SELECT coalesce(bool_or(subject_type = $2 AND subject_id = $3), false),
               count(*) FILTER (WHERE NOT (subject_type = $2 AND subject_id = $3) AND expires_at IS NULL AND condition = '')
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
