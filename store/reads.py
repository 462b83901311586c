"""The hot path: what the cache loads on a miss, each one statement in one snapshot."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from gatehouse.engine.model import (
    AssignmentRow,
    KeyState,
    Membership,
    RosterSnapshot,
    SubjectRef,
    SubjectSnapshot,
    TenantSnapshot,
    TenantStatus,
)
from gatehouse.store.api import Page
from gatehouse.store.pages import clamp_page_size, decode_token, page_of
from gatehouse.store.rows import plan_record, tenant_record
from gatehouse.store.transactions import PLATFORM_SCOPE, Transactions, parse_tenant_id

_LOAD_TENANT = """
SELECT t.*, p.features AS plan_features, p.quotas AS plan_quotas, p.rate_limits AS plan_rate_limits
FROM tenants t JOIN plans p ON p.name = t.plan
WHERE t.id = $1
"""


# One statement, so one snapshot: the revision, the membership and the grants agree.
# No rows: no such tenant. One row with a NULL role: a tenant, but no grants. Grants
# already expired (not yet swept) are left out; the rest carry their expiry, which the
# engine compares with the clock on every decision.
_LOAD_SUBJECT = """
SELECT t.revision, m.subject_id IS NOT NULL AS is_member, a.role, a.scope, r.permissions,
       extract(epoch FROM a.expires_at)::float8 AS expires_at, a.condition,
       k.id IS NOT NULL AS is_key, k.permissions AS key_permissions,
       extract(epoch FROM k.expires_at)::float8 AS key_expires_at, k.revoked_at IS NOT NULL AS key_revoked
FROM tenants t
LEFT JOIN api_keys k
       ON $2 = 'api_key' AND k.id = $3 AND k.tenant_id = t.id
LEFT JOIN memberships m
       ON m.tenant_id = t.id AND m.subject_type = $2 AND m.subject_id = $3
LEFT JOIN role_assignments a
       ON a.tenant_id = m.tenant_id AND a.subject_type = m.subject_type AND a.subject_id = m.subject_id
      AND (a.expires_at IS NULL OR a.expires_at > statement_timestamp())
LEFT JOIN roles r
       ON r.tenant_id = a.tenant_id AND r.name = a.role
WHERE t.id = $1
ORDER BY a.role, a.scope
"""

# Every member of one tenant with its grants (and, for an API key, the key's state): the
# roster LookupSubjects decides from. Read in the same REPEATABLE READ transaction as the
# tenant row, so both are at the tenant's revision: one row per member (its assignments
# aggregated), and the tenant's roles once, joined in Python (a row per assignment, each
# carrying its role's patterns, took twice as long to read for 10,000 members). Uses the
# primary keys' (tenant, ...) prefixes: one index range per table.
_LOAD_ROSTER = """
SELECT m.subject_type, m.subject_id,
       coalesce(array_agg(a.role ORDER BY a.role, a.scope) FILTER (WHERE a.role IS NOT NULL), '{}') AS roles,
       coalesce(array_agg(a.scope ORDER BY a.role, a.scope) FILTER (WHERE a.role IS NOT NULL), '{}') AS scopes,
       coalesce(array_agg(extract(epoch FROM a.expires_at)::float8 ORDER BY a.role, a.scope)
                FILTER (WHERE a.role IS NOT NULL), '{}') AS expiries,
       coalesce(array_agg(a.condition ORDER BY a.role, a.scope) FILTER (WHERE a.role IS NOT NULL), '{}') AS conditions,
       k.id IS NOT NULL AS is_key, k.permissions AS key_permissions,
       extract(epoch FROM k.expires_at)::float8 AS key_expires_at, k.revoked_at IS NOT NULL AS key_revoked
FROM memberships m
LEFT JOIN api_keys k
       ON m.subject_type = 'api_key' AND k.id = m.subject_id AND k.tenant_id = m.tenant_id
LEFT JOIN role_assignments a
       ON a.tenant_id = m.tenant_id AND a.subject_type = m.subject_type AND a.subject_id = m.subject_id
      AND (a.expires_at IS NULL OR a.expires_at > statement_timestamp())
WHERE m.tenant_id = $1
GROUP BY m.subject_type, m.subject_id, k.id
"""
_LOAD_ROLES = "SELECT name, permissions FROM roles WHERE tenant_id = $1"
ROSTER_CHUNK = 256  # members built between two yields to the event loop (load_roster)

# A subject's memberships across tenants, under the platform scope (row-level security
# shows every tenant), through the index memberships_by_subject (migration 6).
# Keyset paging on the slug (unique): a page asks for one row more than it returns, so a
# page that stops short of the memberships says so with a next page token.
_SUBJECT_TENANTS = """
SELECT t.id, t.slug, t.status, t.revision
FROM memberships m JOIN tenants t ON t.id = m.tenant_id
WHERE m.subject_type = $1 AND m.subject_id = $2 AND t.slug > $3
ORDER BY t.slug
LIMIT $4
"""


def _tenant_snapshot(row: Any) -> TenantSnapshot:
    """A `_LOAD_TENANT` row as the tenant and its plan."""
    plan = plan_record(row["plan"], row["plan_features"], row["plan_quotas"], row["plan_rate_limits"])
    return TenantSnapshot(tenant=tenant_record(row), plan=plan)


def _key_state(row: Any) -> KeyState | None:
    if not row["is_key"]:
        return None
    return KeyState(
        permissions=tuple(row["key_permissions"]), expires_at=row["key_expires_at"], revoked=row["key_revoked"]
    )


def _assignments(rows: Sequence[Any]) -> tuple[AssignmentRow, ...]:
    return tuple(
        AssignmentRow(
            role=row["role"],
            scope=row["scope"],
            permissions=tuple(row["permissions"]),
            expires_at=row["expires_at"],
            condition=row["condition"],
        )
        for row in rows
        if row["role"] is not None
    )


def _subject_snapshot(tenant_id: str, subject: SubjectRef, rows: Sequence[Any]) -> SubjectSnapshot | None:
    """`_LOAD_SUBJECT`'s rows as a snapshot; None when there were none (no such tenant)."""
    if not rows:
        return None
    first = rows[0]
    return SubjectSnapshot(
        tenant_id=tenant_id,
        subject=subject,
        revision=first["revision"],
        is_member=first["is_member"],
        assignments=_assignments(rows),
        key=_key_state(first),
    )


class Reads(Transactions):
    """`load_tenant` and `load_subject`: the store's side of `StoreReader`."""

    async def load_tenant(self, tenant_id: str) -> TenantSnapshot | None:
        """The tenant and its plan, read in one statement; None when there is no such tenant."""
        tid = parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow(_LOAD_TENANT, tid)
        return None if row is None else _tenant_snapshot(row)

    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> SubjectSnapshot | None:
        """Membership and grants of one subject, stamped with the tenant revision read in
        the same statement; None when there is no such tenant."""
        tid = parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            rows = await conn.fetch(_LOAD_SUBJECT, tid, subject.type, subject.id)
        return _subject_snapshot(str(tid), subject, rows)

    async def load_subjects(self, tenant_id: str, subjects: Sequence[SubjectRef]) -> list[SubjectSnapshot] | None:
        """`load_subject` of each, in one REPEATABLE READ transaction: every snapshot at
        the same tenant revision. None when there is no such tenant."""
        tid = parse_tenant_id(tenant_id)
        if tid is None or not subjects:
            return None
        found = []
        async with self._reading(str(tid)) as conn:
            for subject in subjects:
                snapshot = _subject_snapshot(str(tid), subject, await conn.fetch(_LOAD_SUBJECT, tid, subject.type, subject.id))
                if snapshot is None:
                    return None
                found.append(snapshot)
        return found

    async def load_roster(self, tenant_id: str) -> RosterSnapshot | None:
        """The tenant and every member with its grants, in one snapshot at the tenant's
        revision; None when there is no such tenant. Members come ordered by (type, id)."""
        tid = parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow(_LOAD_TENANT, tid)
            if row is None:
                return None
            rows = await conn.fetch(_LOAD_ROSTER, tid)
            roles = {role["name"]: tuple(role["permissions"]) for role in await conn.fetch(_LOAD_ROLES, tid)}
        tenant = _tenant_snapshot(row)
        tenant_key = str(tid)
        members: list[SubjectSnapshot] = []
        # A few ms of CPU a chunk, yielding to the event loop between them (CheckAccess is
        # served on it): 10,000 members in one go held it for tens of ms.
        for start in range(0, len(rows), ROSTER_CHUNK):
            members.extend(
                SubjectSnapshot(
                    tenant_id=tenant_key,
                    subject=SubjectRef(member["subject_type"], member["subject_id"]),
                    revision=tenant.revision,
                    is_member=True,
                    assignments=tuple(
                        AssignmentRow(
                            role=role, scope=scope, permissions=roles[role], expires_at=expires_at, condition=condition
                        )
                        for role, scope, expires_at, condition in zip(
                            member["roles"], member["scopes"], member["expiries"], member["conditions"]
                        )
                    ),
                    key=_key_state(member),
                )
                for member in rows[start:start + ROSTER_CHUNK]
            )
            await asyncio.sleep(0)
        members.sort(key=lambda m: (m.subject.type, m.subject.id))
        return RosterSnapshot(tenant=tenant, members=tuple(members))

    async def list_subject_tenants(self, subject: SubjectRef, *, page_size: int, page_token: str) -> Page[Membership]:
        """A page of the tenants `subject` is a member of, by slug, each with its revision,
        after the slug `page_token` holds; read under the platform scope."""
        after = decode_token(page_token, (str,))
        size = clamp_page_size(page_size)
        # "" sorts before every slug (slugs are 3-63 characters): the first page.
        start = after[0] if after is not None else ""
        async with self._reading(PLATFORM_SCOPE) as conn:
            rows = await conn.fetch(_SUBJECT_TENANTS, subject.type, subject.id, start, size + 1)
        return page_of(
            rows, size,
            lambda row: Membership(str(row["id"]), row["slug"], TenantStatus(row["status"]), row["revision"]),
            key=lambda row: [row["slug"]],
        )
