"""How cached snapshots are written to Redis: plain JSON, never pickle (anyone who can
write to Redis must not be able to run code in the sidecar)."""

from __future__ import annotations

import json
from typing import Any

from gatehouse.engine.model import (
    AssignmentRow,
    KeyState,
    Plan,
    PlanFeature,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
)

# Bump when the layout changes; entries of another format are then ignored (a miss).
# 2: subjects carry their API key's state (limit, expiry, revocation). Format 1 dropped
# it, so a key read back from L2 was an unlimited, unrevocable member: never read one.
# 3: an assignment carries its expiry and condition (issue 18). Format 2 has neither: a
# grant read back from it would never expire and always apply, so never read one.
FORMAT = 3


def dump_tenant(snapshot: TenantSnapshot) -> bytes:
    t, p = snapshot.tenant, snapshot.plan
    return json.dumps(
        {
            "v": FORMAT,
            "tenant": {
                "id": t.id,
                "slug": t.slug,
                "name": t.name,
                "status": t.status.value,
                "plan": t.plan,
                "region": t.region,
                "settings": t.settings,
                "flag_overrides": t.flag_overrides,
                "quota_overrides": t.quota_overrides,
                "revision": t.revision,
                "status_reason": t.status_reason,
                "status_changed_by": t.status_changed_by,
                "status_changed_at": t.status_changed_at,
                "created_at": t.created_at,
                "updated_at": t.updated_at,
            },
            "plan": {
                "name": p.name,
                "features": {k: [f.default_enabled, list(f.gates)] for k, f in p.features.items()},
                "quotas": p.quotas,
                "rate_limits": p.rate_limits,
            },
        },
        separators=(",", ":"),
    ).encode()


def load_tenant(raw: bytes) -> TenantSnapshot | None:
    data = json.loads(raw)
    if data.get("v") != FORMAT:
        return None
    t, p = data["tenant"], data["plan"]
    return TenantSnapshot(
        tenant=TenantRecord(**{**t, "status": TenantStatus(t["status"])}),
        plan=Plan(
            name=p["name"],
            features={k: PlanFeature(bool(v[0]), tuple(v[1])) for k, v in p["features"].items()},
            quotas=p["quotas"],
            rate_limits=p["rate_limits"],
        ),
    )


def dump_subject(snapshot: SubjectSnapshot) -> bytes:
    return json.dumps(
        {
            "v": FORMAT,
            "tenant_id": snapshot.tenant_id,
            "subject": [snapshot.subject.type, snapshot.subject.id],
            "revision": snapshot.revision,
            "is_member": snapshot.is_member,
            "assignments": [
                [a.role, a.scope, list(a.permissions), a.expires_at, a.condition] for a in snapshot.assignments
            ],
            "key": None
            if snapshot.key is None
            else [list(snapshot.key.permissions), snapshot.key.expires_at, snapshot.key.revoked],
        },
        separators=(",", ":"),
    ).encode()


def load_subject(raw: bytes) -> SubjectSnapshot | None:
    data: dict[str, Any] = json.loads(raw)
    if data.get("v") != FORMAT:
        return None
    return SubjectSnapshot(
        tenant_id=data["tenant_id"],
        subject=SubjectRef(*data["subject"]),
        revision=int(data["revision"]),
        is_member=bool(data["is_member"]),
        assignments=tuple(
            AssignmentRow(a[0], a[1], tuple(a[2]), None if a[3] is None else float(a[3]), str(a[4]))
            for a in data["assignments"]
        ),
        key=None if data["key"] is None else KeyState(tuple(data["key"][0]), data["key"][1], bool(data["key"][2])),
    )
