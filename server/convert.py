"""Between protobuf messages and domain values, in both directions, with validation.

Every servicer reads requests through these helpers, so a field is validated the same
way everywhere and an error always names the field as the caller spelled it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from gatehouse.engine.decision import Decision
from gatehouse.engine.model import Plan, PlanFeature, SubjectRef, TenantRecord, TenantStatus
from gatehouse.engine.validate import Violations, require_id, require_name, require_patterns, require_slug
from gatehouse.errors import FieldViolation, InvalidArgument
from gatehouse.store.api import ApiKeyRecord, AssignmentRecord, AuditRecord, MemberRecord, RoleRecord
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2

MAX_SETTINGS_BYTES = 64 * 1024
MAX_MAP_ENTRIES = 256

STATUS_TO_PROTO: dict[TenantStatus, common_pb2.TenantStatus] = {
    TenantStatus.DRAFT: common_pb2.TENANT_STATUS_DRAFT,
    TenantStatus.ACTIVE: common_pb2.TENANT_STATUS_ACTIVE,
    TenantStatus.SUSPENDED: common_pb2.TENANT_STATUS_SUSPENDED,
    TenantStatus.ARCHIVED: common_pb2.TENANT_STATUS_ARCHIVED,
    TenantStatus.DELETED: common_pb2.TENANT_STATUS_DELETED,
}
STATUS_FROM_PROTO: dict[int, TenantStatus] = {v: k for k, v in STATUS_TO_PROTO.items()}


def subject(field: str, message: common_pb2.Subject, *, attributes: bool = False) -> SubjectRef:
    """A subject an admin call names. Its `attributes` are for decisions (conditions)
    only: set where they would be ignored, they are refused (`attributes`: the caller
    reads them, and checks them itself)."""
    v = Violations()
    ref = SubjectRef(v.check(require_id, f"{field}.type", message.type), v.check(require_id, f"{field}.id", message.id))
    if message.HasField("attributes") and not attributes:
        v.found.append(FieldViolation(f"{field}.attributes", "is read by CheckAccess only (conditions)"))
    v.raise_if_any()
    return ref


def optional_subject(field: str, message: common_pb2.Subject) -> SubjectRef | None:
    if not message.type and not message.id and not message.HasField("attributes"):
        return None
    return subject(field, message)


def tenant_status(field: str, value: int) -> TenantStatus | None:
    """0 = unspecified (no filter); an unknown number is INVALID_ARGUMENT."""
    if value == 0:
        return None
    try:
        return STATUS_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown tenant status {value}") from None


def move_conflict_policy(field: str, value: int) -> bool:
    """MoveScope's `on_conflict` as `keep_existing`: UNSPECIFIED and FAIL refuse a
    conflicting move, KEEP_EXISTING keeps the assignment already there; an unknown number
    is INVALID_ARGUMENT."""
    if value in (admin_pb2.MOVE_CONFLICT_POLICY_UNSPECIFIED, admin_pb2.MOVE_CONFLICT_POLICY_FAIL):
        return False
    if value == admin_pb2.MOVE_CONFLICT_POLICY_KEEP_EXISTING:
        return True
    raise InvalidArgument(field, f"unknown conflict policy {value}")


def existing_grant_policy(field: str, value: int) -> bool:
    """AssignRole's `on_existing` as `replace`: UNSPECIFIED and REFUSE refuse a grant held
    already, REPLACE gives it the request's terms; an unknown number is INVALID_ARGUMENT."""
    if value in (admin_pb2.EXISTING_GRANT_POLICY_UNSPECIFIED, admin_pb2.EXISTING_GRANT_POLICY_REFUSE):
        return False
    if value == admin_pb2.EXISTING_GRANT_POLICY_REPLACE:
        return True
    raise InvalidArgument(field, f"unknown existing-grant policy {value}")


def slug(field: str, value: str) -> str:
    return require_slug(field, value)


def struct_to_dict(field: str, message: struct_pb2.Struct) -> dict[str, Any]:
    data = json_format.MessageToDict(message)
    if len(json.dumps(data)) > MAX_SETTINGS_BYTES:
        raise InvalidArgument(field, f"at most {MAX_SETTINGS_BYTES} bytes of JSON")
    return data


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(dict(data))
    return message


def key_map(field: str, values: Mapping[str, Any]) -> dict[str, Any]:
    if len(values) > MAX_MAP_ENTRIES:
        raise InvalidArgument(field, f"at most {MAX_MAP_ENTRIES} entries")
    for key in values:
        require_id(f"{field}[{key!r}]" if len(key) < 130 else f"{field}[key]", key)
    return dict(values)


def key_list(field: str, values: Any) -> tuple[str, ...]:
    keys = tuple(values)
    for index, key in enumerate(keys):
        require_id(f"{field}[{index}]", key)
    return keys


def plan(field: str, message: admin_pb2.Plan) -> Plan:
    name = require_id(f"{field}.name", message.name)
    features = {}
    for feature_name, feature in key_map(f"{field}.features", message.features).items():
        features[feature_name] = PlanFeature(
            default_enabled=feature.default_enabled,
            gates=require_patterns(f"{field}.features[{feature_name!r}].gates", feature.gates),
        )
    return Plan(
        name=name,
        features=features,
        quotas=key_map(f"{field}.quotas", message.quotas),
        rate_limits=key_map(f"{field}.rate_limits", message.rate_limits),
    )


def description(field: str, value: str) -> str:
    if len(value) > 1000 or not value.isprintable():
        raise InvalidArgument(field, "must be at most 1000 printable characters")
    return value


def name(field: str, value: str, *, required: bool = True) -> str:
    return require_name(field, value, required=required)


# --- domain -> proto ---


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromNanoseconds(int(seconds * 1e9))
    return message


# The last second a Timestamp may name (9999-12-31T23:59:59Z). Seconds are floats here,
# and 253402300799.999999999 rounds to 253402300800.0: the year 10000, which datetime
# (and so the store) cannot hold. A time in that last second counts as its start.
MAX_UNIX_SECONDS = 253_402_300_799.0


def seconds(message: timestamp_pb2.Timestamp, present: bool) -> float | None:
    """A checked Timestamp (server/wire.py) as unix seconds; None when absent."""
    return min(message.ToNanoseconds() / 1e9, MAX_UNIX_SECONDS) if present else None


def api_key_message(record: ApiKeyRecord) -> admin_pb2.ApiKey:
    message = admin_pb2.ApiKey(
        id=record.id,
        tenant_id=record.tenant_id,
        name=record.name,
        permissions=list(record.permissions),
        roles=[admin_pb2.RoleGrant(role=role, scope=scope) for role, scope in record.roles],
        created_by=record.created_by,
    )
    for name, value in (("expires_at", record.expires_at), ("created_at", record.created_at),
                        ("revoked_at", record.revoked_at)):
        if value is not None:
            getattr(message, name).FromNanoseconds(int(value * 1e9))
    return message


def tenant_message(record: TenantRecord) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        id=record.id,
        slug=record.slug,
        name=record.name,
        status=STATUS_TO_PROTO[record.status],
        plan=record.plan,
        region=record.region,
        settings=dict_to_struct(record.settings),
        flag_overrides=dict(record.flag_overrides),
        quota_overrides=dict(record.quota_overrides),
        revision=record.revision,
        status_reason=record.status_reason,
        status_changed_by=record.status_changed_by,
        status_changed_at=timestamp(record.status_changed_at),
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
    )


def plan_message(value: Plan) -> admin_pb2.Plan:
    return admin_pb2.Plan(
        name=value.name,
        features={
            k: admin_pb2.PlanFeature(default_enabled=f.default_enabled, gates=list(f.gates))
            for k, f in value.features.items()
        },
        quotas=dict(value.quotas),
        rate_limits=dict(value.rate_limits),
    )


def subject_message(value: SubjectRef) -> common_pb2.Subject:
    return common_pb2.Subject(type=value.type, id=value.id)


def role_message(record: RoleRecord) -> admin_pb2.Role:
    return admin_pb2.Role(
        tenant_id=record.tenant_id,
        name=record.name,
        permissions=list(record.permissions),
        description=record.description,
        system=record.system,
    )


def member_message(record: MemberRecord) -> admin_pb2.Member:
    return admin_pb2.Member(
        tenant_id=record.tenant_id, subject=subject_message(record.subject), created_at=timestamp(record.created_at)
    )


def assignment_message(record: AssignmentRecord) -> admin_pb2.RoleAssignment:
    return admin_pb2.RoleAssignment(
        tenant_id=record.tenant_id,
        subject=subject_message(record.subject),
        role=record.role,
        scope=record.scope,
        created_at=timestamp(record.created_at),
        expires_at=timestamp(record.expires_at),
        condition=record.condition,
    )


def audit_message(record: AuditRecord) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        id=record.id,
        tenant_id=record.tenant_id,
        actor=record.actor,
        action=record.action,
        target=record.target,
        request_id=record.request_id,
        outcome=record.outcome,
        reason=record.reason,
        time=timestamp(record.time),
    )


def check_response(decision: Decision) -> access_pb2.CheckAccessResponse:
    """A decision as CheckAccess answers it (and every answer that stands for one)."""
    return access_pb2.CheckAccessResponse(
        allowed=decision.allowed,
        reason=decision.reason,  # type: ignore[arg-type]  # engine Reason values are the proto enum's numbers
        revision=decision.revision,
        granted_by_role=decision.role,
        granted_at_scope=decision.scope,
        feature=decision.feature,
        missing_attributes=decision.missing,
    )
