from gatehouse_client.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_REASON_UNSPECIFIED: _ClassVar[DecisionReason]
    DECISION_REASON_ALLOWED: _ClassVar[DecisionReason]
    DECISION_REASON_NO_GRANT: _ClassVar[DecisionReason]
    DECISION_REASON_NOT_A_MEMBER: _ClassVar[DecisionReason]
    DECISION_REASON_TENANT_NOT_FOUND: _ClassVar[DecisionReason]
    DECISION_REASON_TENANT_SUSPENDED: _ClassVar[DecisionReason]
    DECISION_REASON_TENANT_INACTIVE: _ClassVar[DecisionReason]
    DECISION_REASON_FEATURE_DISABLED: _ClassVar[DecisionReason]
    DECISION_REASON_KEY_REVOKED: _ClassVar[DecisionReason]
    DECISION_REASON_CONDITIONAL: _ClassVar[DecisionReason]
DECISION_REASON_UNSPECIFIED: DecisionReason
DECISION_REASON_ALLOWED: DecisionReason
DECISION_REASON_NO_GRANT: DecisionReason
DECISION_REASON_NOT_A_MEMBER: DecisionReason
DECISION_REASON_TENANT_NOT_FOUND: DecisionReason
DECISION_REASON_TENANT_SUSPENDED: DecisionReason
DECISION_REASON_TENANT_INACTIVE: DecisionReason
DECISION_REASON_FEATURE_DISABLED: DecisionReason
DECISION_REASON_KEY_REVOKED: DecisionReason
DECISION_REASON_CONDITIONAL: DecisionReason

class CheckAccessRequest(_message.Message):
    __slots__ = ("tenant_id", "subject", "permission", "resource", "min_revision", "context")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    subject: _common_pb2.Subject
    permission: str
    resource: _common_pb2.Resource
    min_revision: int
    context: _struct_pb2.Struct
    def __init__(self, tenant_id: _Optional[str] = ..., subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., permission: _Optional[str] = ..., resource: _Optional[_Union[_common_pb2.Resource, _Mapping]] = ..., min_revision: _Optional[int] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CheckAccessResponse(_message.Message):
    __slots__ = ("allowed", "reason", "revision", "granted_by_role", "granted_at_scope", "feature", "missing_attributes")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    MISSING_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: DecisionReason
    revision: int
    granted_by_role: str
    granted_at_scope: str
    feature: str
    missing_attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, allowed: bool = ..., reason: _Optional[_Union[DecisionReason, str]] = ..., revision: _Optional[int] = ..., granted_by_role: _Optional[str] = ..., granted_at_scope: _Optional[str] = ..., feature: _Optional[str] = ..., missing_attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckAccessBatchRequest(_message.Message):
    __slots__ = ("checks",)
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[CheckAccessRequest]
    def __init__(self, checks: _Optional[_Iterable[_Union[CheckAccessRequest, _Mapping]]] = ...) -> None: ...

class CheckAccessBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckAccessResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[CheckAccessResponse, _Mapping]]] = ...) -> None: ...
