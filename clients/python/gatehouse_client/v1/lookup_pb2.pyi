import datetime

from gatehouse_client.v1 import access_pb2 as _access_pb2
from gatehouse_client.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EffectiveGrant(_message.Message):
    __slots__ = ("role", "scope", "permissions", "condition", "expires_at")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    role: str
    scope: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    condition: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, role: _Optional[str] = ..., scope: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., condition: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSubjectPermissionsRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "scope", "permissions", "min_revision", "resource_attributes", "context")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    scope: str
    permissions: _containers.RepeatedScalarFieldContainer[str]
    min_revision: int
    resource_attributes: _struct_pb2.Struct
    context: _struct_pb2.Struct
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., scope: _Optional[str] = ..., permissions: _Optional[_Iterable[str]] = ..., min_revision: _Optional[int] = ..., resource_attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class PermissionDecision(_message.Message):
    __slots__ = ("permission", "decision")
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    permission: str
    decision: _access_pb2.CheckAccessResponse
    def __init__(self, permission: _Optional[str] = ..., decision: _Optional[_Union[_access_pb2.CheckAccessResponse, _Mapping]] = ...) -> None: ...

class ListSubjectPermissionsResponse(_message.Message):
    __slots__ = ("revision", "member", "grants", "limited_to", "decisions")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    LIMITED_TO_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    member: bool
    grants: _containers.RepeatedCompositeFieldContainer[EffectiveGrant]
    limited_to: _containers.RepeatedScalarFieldContainer[str]
    decisions: _containers.RepeatedCompositeFieldContainer[PermissionDecision]
    def __init__(self, revision: _Optional[int] = ..., member: bool = ..., grants: _Optional[_Iterable[_Union[EffectiveGrant, _Mapping]]] = ..., limited_to: _Optional[_Iterable[str]] = ..., decisions: _Optional[_Iterable[_Union[PermissionDecision, _Mapping]]] = ...) -> None: ...

class LookupSubjectsRequest(_message.Message):
    __slots__ = ("tenant_id", "permission", "scope", "page_size", "page_token", "min_revision", "resource_attributes", "context")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    permission: str
    scope: str
    page_size: int
    page_token: str
    min_revision: int
    resource_attributes: _struct_pb2.Struct
    context: _struct_pb2.Struct
    def __init__(self, tenant_id: _Optional[str] = ..., permission: _Optional[str] = ..., scope: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., min_revision: _Optional[int] = ..., resource_attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class LookedUpSubject(_message.Message):
    __slots__ = ("subject", "granted_by_role", "granted_at_scope", "conditional", "missing_attributes", "conditions")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    granted_by_role: str
    granted_at_scope: str
    conditional: bool
    missing_attributes: _containers.RepeatedScalarFieldContainer[str]
    conditions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., granted_by_role: _Optional[str] = ..., granted_at_scope: _Optional[str] = ..., conditional: bool = ..., missing_attributes: _Optional[_Iterable[str]] = ..., conditions: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupSubjectsResponse(_message.Message):
    __slots__ = ("subjects", "conditional_subjects", "revision", "next_page_token", "denied_for_all", "feature")
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DENIED_FOR_ALL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    subjects: _containers.RepeatedCompositeFieldContainer[LookedUpSubject]
    conditional_subjects: _containers.RepeatedCompositeFieldContainer[LookedUpSubject]
    revision: int
    next_page_token: str
    denied_for_all: _access_pb2.DecisionReason
    feature: str
    def __init__(self, subjects: _Optional[_Iterable[_Union[LookedUpSubject, _Mapping]]] = ..., conditional_subjects: _Optional[_Iterable[_Union[LookedUpSubject, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ..., denied_for_all: _Optional[_Union[_access_pb2.DecisionReason, str]] = ..., feature: _Optional[str] = ...) -> None: ...

class ListTenantsForSubjectRequest(_message.Message):
    __slots__ = ("subject", "page_size", "page_token")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    page_size: int
    page_token: str
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SubjectMembership(_message.Message):
    __slots__ = ("tenant_id", "tenant_slug", "tenant_status", "revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_SLUG_FIELD_NUMBER: _ClassVar[int]
    TENANT_STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    tenant_slug: str
    tenant_status: _common_pb2.TenantStatus
    revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., tenant_slug: _Optional[str] = ..., tenant_status: _Optional[_Union[_common_pb2.TenantStatus, str]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListTenantsForSubjectResponse(_message.Message):
    __slots__ = ("memberships", "next_page_token")
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    memberships: _containers.RepeatedCompositeFieldContainer[SubjectMembership]
    next_page_token: str
    def __init__(self, memberships: _Optional[_Iterable[_Union[SubjectMembership, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
