"""Rows to records: what each query's row becomes for the rest of Gatehouse."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from gatehouse.engine.model import Plan, PlanFeature, SubjectRef, TenantRecord, TenantStatus
from gatehouse.store.api import ApiKeyRecord, AssignmentRecord, AuditRecord, MemberRecord, RoleRecord


def timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def tenant_record(row: asyncpg.Record) -> TenantRecord:
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
        status_changed_at=timestamp(row["status_changed_at"]),
        created_at=timestamp(row["created_at"]),
        updated_at=timestamp(row["updated_at"]),
    )


def plan_record(name: str, features: Mapping[str, Any], quotas: Mapping[str, int], rate_limits: Mapping[str, int]) -> Plan:
    return Plan(
        name=name,
        features={
            feature: PlanFeature(default_enabled=bool(spec.get("default_enabled")), gates=tuple(spec.get("gates", ())))
            for feature, spec in features.items()
        },
        quotas=dict(quotas),
        rate_limits=dict(rate_limits),
    )


def features_json(features: Mapping[str, PlanFeature]) -> dict[str, Any]:
    return {
        feature: {"default_enabled": spec.default_enabled, "gates": list(spec.gates)}
        for feature, spec in features.items()
    }


def role_record(row: asyncpg.Record) -> RoleRecord:
    return RoleRecord(
        tenant_id=str(row["tenant_id"]),
        name=row["name"],
        permissions=tuple(row["permissions"]),
        description=row["description"],
        system=row["system"],
    )


def member_record(row: asyncpg.Record) -> MemberRecord:
    return MemberRecord(
        tenant_id=str(row["tenant_id"]),
        subject=SubjectRef(row["subject_type"], row["subject_id"]),
        created_at=timestamp(row["created_at"]),
    )


def assignment_record(row: asyncpg.Record) -> AssignmentRecord:
    return AssignmentRecord(
        tenant_id=str(row["tenant_id"]),
        subject=SubjectRef(row["subject_type"], row["subject_id"]),
        role=row["role"],
        scope=row["scope"],
        created_at=timestamp(row["created_at"]),
        expires_at=timestamp(row["expires_at"]),
        condition=row["condition"],
    )


def audit_record(row: asyncpg.Record) -> AuditRecord:
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


def key_record(row: asyncpg.Record, roles: tuple[tuple[str, str], ...]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"],
        tenant_id=str(row["tenant_id"]) if row["tenant_id"] is not None else "",
        name=row["name"],
        permissions=tuple(row["permissions"]),
        expires_at=timestamp(row["expires_at"]),
        created_by=row["created_by"],
        created_at=timestamp(row["created_at"]),
        revoked_at=timestamp(row["revoked_at"]),
        roles=roles,
    )
