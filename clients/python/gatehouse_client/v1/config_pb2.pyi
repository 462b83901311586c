from gatehouse_client.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetTenantConfigRequest(_message.Message):
    __slots__ = ("tenant_id", "if_revision_newer_than", "min_revision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    IF_REVISION_NEWER_THAN_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    if_revision_newer_than: int
    min_revision: int
    def __init__(self, tenant_id: _Optional[str] = ..., if_revision_newer_than: _Optional[int] = ..., min_revision: _Optional[int] = ...) -> None: ...

class WatchTenantConfigRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class TenantConfig(_message.Message):
    __slots__ = ("id", "slug", "name", "status", "plan", "region", "settings", "feature_flags", "quotas", "rate_limits", "revision", "not_modified")
    class FeatureFlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: bool = ...) -> None: ...
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
    ID_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    id: str
    slug: str
    name: str
    status: _common_pb2.TenantStatus
    plan: str
    region: str
    settings: _struct_pb2.Struct
    feature_flags: _containers.ScalarMap[str, bool]
    quotas: _containers.ScalarMap[str, int]
    rate_limits: _containers.ScalarMap[str, int]
    revision: int
    not_modified: bool
    def __init__(self, id: _Optional[str] = ..., slug: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.TenantStatus, str]] = ..., plan: _Optional[str] = ..., region: _Optional[str] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., feature_flags: _Optional[_Mapping[str, bool]] = ..., quotas: _Optional[_Mapping[str, int]] = ..., rate_limits: _Optional[_Mapping[str, int]] = ..., revision: _Optional[int] = ..., not_modified: bool = ...) -> None: ...
