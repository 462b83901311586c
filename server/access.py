"""AccessService: the hot path. servicer → PolicyCache → (L1 | L2 | store) → engine."""

from __future__ import annotations

from time import time

import grpc

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.decision import decide, needs_subject
from gatehouse.engine.model import SubjectRef
from gatehouse.engine.patterns import is_valid_id, is_valid_permission, is_valid_scope
from gatehouse.engine.validate import ID_RULE, PERMISSION_RULE, SCOPE_RULE
from gatehouse.errors import InvalidArgument
from gatehouse.server.errors import grpc_errors
from gatehouse.v1 import access_pb2, access_pb2_grpc

MAX_BATCH = 1000
Response = access_pb2.CheckAccessResponse


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache

    @grpc_errors
    async def CheckAccess(
        self, request: access_pb2.CheckAccessRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.CheckAccessResponse:
        return await self._check(request, "")

    @grpc_errors
    async def CheckAccessBatch(
        self, request: access_pb2.CheckAccessBatchRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.CheckAccessBatchResponse:
        checks = request.checks
        if len(checks) > MAX_BATCH:
            raise InvalidArgument("checks", f"at most {MAX_BATCH} checks per call")
        # Validate everything first: a malformed entry fails the call before any work.
        for index, check in enumerate(checks):
            _validate(check, f"checks[{index}].")
        return access_pb2.CheckAccessBatchResponse(results=[await self._decide(check) for check in checks])

    async def _check(self, request: access_pb2.CheckAccessRequest, prefix: str) -> access_pb2.CheckAccessResponse:
        _validate(request, prefix)
        return await self._decide(request)

    async def _decide(self, request: access_pb2.CheckAccessRequest) -> access_pb2.CheckAccessResponse:
        tenant_id = request.tenant_id
        min_revision = request.min_revision
        permission = request.permission
        tenant = await self._cache.tenant(tenant_id, min_revision)
        policy = tenant.policy if tenant is not None else None
        grants = None
        if needs_subject(policy, permission):
            subject = SubjectRef(request.subject.type, request.subject.id)
            grants = await self._cache.subject(tenant_id, subject, min_revision)
        decision = decide(policy, grants, permission, request.resource.scope, now=time())
        return Response(
            allowed=decision.allowed,
            reason=decision.reason,  # type: ignore[arg-type]
            revision=decision.revision,
            granted_by_role=decision.role,
            granted_at_scope=decision.scope,
            feature=decision.feature,
        )


def _validate(request: access_pb2.CheckAccessRequest, prefix: str) -> None:
    """Step 1 of the decision: every field, named as the caller spelled it."""
    if not is_valid_id(request.tenant_id):
        raise InvalidArgument(f"{prefix}tenant_id", ID_RULE)
    subject = request.subject
    if not is_valid_id(subject.type):
        raise InvalidArgument(f"{prefix}subject.type", ID_RULE)
    if not is_valid_id(subject.id):
        raise InvalidArgument(f"{prefix}subject.id", ID_RULE)
    if not is_valid_permission(request.permission):
        raise InvalidArgument(f"{prefix}permission", PERMISSION_RULE)
    resource = request.resource
    if resource.type and not is_valid_id(resource.type):
        raise InvalidArgument(f"{prefix}resource.type", ID_RULE)
    if resource.id and not is_valid_id(resource.id):
        raise InvalidArgument(f"{prefix}resource.id", ID_RULE)
    if not is_valid_scope(resource.scope):
        raise InvalidArgument(f"{prefix}resource.scope", SCOPE_RULE)
    if request.min_revision < 0:
        raise InvalidArgument(f"{prefix}min_revision", "must not be negative")
