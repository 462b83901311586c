import datetime

from gatehouse_client.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExistingGrantPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXISTING_GRANT_POLICY_UNSPECIFIED: _ClassVar[ExistingGrantPolicy]
    EXISTING_GRANT_POLICY_REFUSE: _ClassVar[ExistingGrantPolicy]
    EXISTING_GRANT_POLICY_REPLACE: _ClassVar[ExistingGrantPolicy]

class MoveConflictPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVE_CONFLICT_POLICY_UNSPECIFIED: _ClassVar[MoveConflictPolicy]
    MOVE_CONFLICT_POLICY_FAIL: _ClassVar[MoveConflictPolicy]
    MOVE_CONFLICT_POLICY_KEEP_EXISTING: _ClassVar[MoveConflictPolicy]
EXISTING_GRANT_POLICY_UNSPECIFIED: ExistingGrantPolicy
EXISTING_GRANT_POLICY_REFUSE: ExistingGrantPolicy
EXISTING_GRANT_POLICY_REPLACE: ExistingGrantPolicy
MOVE_CONFLICT_POLICY_UNSPECIFIED: MoveConflictPolicy
MOVE_CONFLICT_POLICY_FAIL: MoveConflictPolicy
MOVE_CONFLICT_POLICY_KEEP_EXISTING: MoveConflictPolicy

class Tenant(_message.Message):
    __slots__ = ("id", "slug", "name", "status", "plan", "region", "settings", "flag_overrides", "quota_overrides", "revision", "status_reason", "status_changed_by", "status_changed_at", "created_at", "updated_at")
    class FlagOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: bool = ...) -> None: ...
    class QuotaOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FLAG_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    slug: str
    name: str
    status: _common_pb2.TenantStatus
    plan: str
    region: str
    settings: _struct_pb2.Struct
    flag_overrides: _containers.ScalarMap[str, bool]
    quota_overrides: _containers.ScalarMap[str, int]
    revision: int
    status_reason: str
    status_changed_by: str
    status_changed_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., slug: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TenantStatus, str]] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., flag_overrides: _Optional[_Mapping[str, bool]] = ..., quota_overrides: _Optional[_Mapping[str, int]] = ..., revision: _Optional[int] = ..., status_reason: _Optional[str] = ..., status_changed_by: _Optional[str] = ..., status_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("slug", "name", "plan", "region", "settings")
    SLUG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    slug: str
    name: str
    plan: str
    region: str
    settings: _struct_pb2.Struct
    def __init__(self, slug: _Optional[str] = ..., name: _Optional[str] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status", "plan", "region")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: _common_pb2.TenantStatus
    plan: str
    region: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TenantStatus, str]] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "expected_revision", "name", "plan", "region")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    expected_revision: int
    name: str
    plan: str
    region: str
    def __init__(self, tenant_id: _Optional[str] = ..., expected_revision: _Optional[int] = ..., name: _Optional[str] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class TenantTransitionRequest(_message.Message):
    __slots__ = ("tenant_id", "reason", "expected_revision", "confirm")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    reason: str
    expected_revision: int
    confirm: bool
    def __init__(self, tenant_id: _Optional[str] = ..., reason: _Optional[str] = ..., expected_revision: _Optional[int] = ..., confirm: bool = ...) -> None: ...

class PatchTenantConfigRequest(_message.Message):
    __slots__ = ("tenant_id", "expected_revision", "settings_patch", "set_flag_overrides", "clear_flag_overrides", "set_quota_overrides", "clear_quota_overrides")
    class SetFlagOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: bool = ...) -> None: ...
    class SetQuotaOverridesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_PATCH_FIELD_NUMBER: _ClassVar[int]
    SET_FLAG_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FLAG_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    SET_QUOTA_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    CLEAR_QUOTA_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    expected_revision: int
    settings_patch: _struct_pb2.Struct
    set_flag_overrides: _containers.ScalarMap[str, bool]
    clear_flag_overrides: _containers.RepeatedScalarFieldContainer[str]
    set_quota_overrides: _containers.ScalarMap[str, int]
    clear_quota_overrides: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant_id: _Optional[str] = ..., expected_revision: _Optional[int] = ..., settings_patch: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., set_flag_overrides: _Optional[_Mapping[str, bool]] = ..., clear_flag_overrides: _Optional[_Iterable[str]] = ..., set_quota_overrides: _Optional[_Mapping[str, int]] = ..., clear_quota_overrides: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanFeature(_message.Message):
    __slots__ = ("default_enabled", "gates")
    DEFAULT_ENABLED_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    default_enabled: bool
    gates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, default_enabled: bool = ..., gates: _Optional[_Iterable[str]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("name", "features", "quotas", "rate_limits")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PlanFeature
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PlanFeature, _Mapping]] = ...) -> None: ...
    class QuotasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RateLimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    features: _containers.MessageMap[str, PlanFeature]
    quotas: _containers.ScalarMap[str, int]
    rate_limits: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., features: _Optional[_Mapping[str, PlanFeature]] = ..., quotas: _Optional[_Mapping[str, int]] = ..., rate_limits: _Optional[_Mapping[str, int]] = ...) -> None: ...

class UpsertPlanRequest(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ...) -> None: ...

class UpsertPlanResponse(_message.Message):
    __slots__ = ("plan", "tenants_affected")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    TENANTS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    plan: Plan
    tenants_affected: int
    def __init__(self, plan: _Optional[_Union[Plan, _Mapping]] = ..., tenants_affected: _Optional[int] = ...) -> None: ...

class ListPlansRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPlansResponse(_message.Message):
    __slots__ = ("plans",)
    PLANS_FIELD_NUMBER: _ClassVar[int]
    plans: _containers.RepeatedCompositeFieldContainer[Plan]
    def __init__(self, plans: _Optional[_Iterable[_Union[Plan, _Mapping]]] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("tenant_id", "name", "permissions", "description", "system")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    description: str
    system: bool
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., system: bool = ...) -> None: ...

class CreateRoleRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "permissions", "description", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    description: str
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class UpdateRoleRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "permissions", "description", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    description: str
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeleteRoleRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class RoleResponse(_message.Message):
    __slots__ = ("role", "revision")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    role: Role
    revision: int
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles", "revision")
    ROLES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    revision: int
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class MutationResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("tenant_id", "subject", "created_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class MemberResponse(_message.Message):
    __slots__ = ("member", "revision")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    member: Member
    revision: int
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    next_page_token: str
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RoleAssignment(_message.Message):
    __slots__ = ("tenant_id", "subject", "role", "scope", "created_at", "expires_at", "condition")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    role: str
    scope: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    condition: str
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., role: _Optional[str] = ..., scope: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., condition: _Optional[str] = ...) -> None: ...

class AssignRoleRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "role", "scope", "expected_revision", "expires_at", "condition", "on_existing")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    ON_EXISTING_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    role: str
    scope: str
    expected_revision: int
    expires_at: _timestamp_pb2.Timestamp
    condition: str
    on_existing: ExistingGrantPolicy
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., role: _Optional[str] = ..., scope: _Optional[str] = ..., expected_revision: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., condition: _Optional[str] = ..., on_existing: _Optional[_Union[ExistingGrantPolicy, str]] = ...) -> None: ...

class RevokeRoleRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "role", "scope", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    role: str
    scope: str
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., role: _Optional[str] = ..., scope: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class RoleAssignmentResponse(_message.Message):
    __slots__ = ("assignment", "revision")
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    assignment: RoleAssignment
    revision: int
    def __init__(self, assignment: _Optional[_Union[RoleAssignment, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListRoleAssignmentsRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRoleAssignmentsResponse(_message.Message):
    __slots__ = ("assignments", "next_page_token")
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[RoleAssignment]
    next_page_token: str
    def __init__(self, assignments: _Optional[_Iterable[_Union[RoleAssignment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MoveScopeRequest(_message.Message):
    __slots__ = ("tenant_id", "from_scope", "to_scope", "on_conflict", "expected_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SCOPE_FIELD_NUMBER: _ClassVar[int]
    TO_SCOPE_FIELD_NUMBER: _ClassVar[int]
    ON_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    from_scope: str
    to_scope: str
    on_conflict: MoveConflictPolicy
    expected_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., from_scope: _Optional[str] = ..., to_scope: _Optional[str] = ..., on_conflict: _Optional[_Union[MoveConflictPolicy, str]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class MoveScopeResponse(_message.Message):
    __slots__ = ("revision", "moved", "merged")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    moved: int
    merged: int
    def __init__(self, revision: _Optional[int] = ..., moved: _Optional[int] = ..., merged: _Optional[int] = ...) -> None: ...

class RoleGrant(_message.Message):
    __slots__ = ("role", "scope")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    role: str
    scope: str
    def __init__(self, role: _Optional[str] = ..., scope: _Optional[str] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "tenant_id", "name", "permissions", "roles", "expires_at", "created_at", "created_by", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedCompositeFieldContainer[RoleGrant]
    expires_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[_Union[RoleGrant, _Mapping]]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "permissions", "roles", "expires_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedCompositeFieldContainer[RoleGrant]
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[_Union[RoleGrant, _Mapping]]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key", "secret", "revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    revision: int
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "key_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "tenant_id", "actor", "action", "target", "request_id", "outcome", "reason", "time")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    tenant_id: str
    actor: str
    action: str
    target: str
    request_id: str
    outcome: str
    reason: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., tenant_id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., request_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("tenant_id", "actor", "action", "since", "until", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    actor: str
    action: str
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
