"""The hot path: what the cache loads on a miss, each one statement in one snapshot."""

from __future__ import annotations

from gatehouse.engine.model import AssignmentRow, KeyState, SubjectRef, SubjectSnapshot, TenantSnapshot
from gatehouse.store.rows import plan_record, tenant_record
from gatehouse.store.transactions import Transactions, parse_tenant_id

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



class Reads(Transactions):
    """`load_tenant` and `load_subject`: the store's side of `StoreReader`."""

    async def load_tenant(self, tenant_id: str) -> TenantSnapshot | None:
        """The tenant and its plan, read in one statement; None when there is no such tenant."""
        tid = parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow(_LOAD_TENANT, tid)
        if row is None:
            return None
        plan = plan_record(row["plan"], row["plan_features"], row["plan_quotas"], row["plan_rate_limits"])
        return TenantSnapshot(tenant=tenant_record(row), plan=plan)

    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> SubjectSnapshot | None:
        """Membership and grants of one subject, stamped with the tenant revision read in
        the same statement; None when there is no such tenant."""
        tid = parse_tenant_id(tenant_id)
        if tid is None:
            return None
        async with self._reading(str(tid)) as conn:
            rows = await conn.fetch(_LOAD_SUBJECT, tid, subject.type, subject.id)
        if not rows:
            return None
        assignments = tuple(
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
