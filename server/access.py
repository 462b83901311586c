"""AccessService: the hot path. servicer → PolicyCache → (L1 | L2 | store) → engine."""

from __future__ import annotations

from time import time

import grpc

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.decision import Decision, SubjectGrants, TenantPolicy, decide, needs_subject
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
        _validate(request, "")
        return _response(await _Snapshots(self._cache).decide(request, time()))

    @grpc_errors
    async def CheckAccessBatch(
        self, request: access_pb2.CheckAccessBatchRequest, context: grpc.aio.ServicerContext
    ) -> access_pb2.CheckAccessBatchResponse:
        """One pass: validate every entry (a malformed one fails the call before any work),
        then look each distinct tenant and (tenant, subject) up once and decide every
        check from those, so a batch answers each subject from one snapshot."""
        checks = request.checks
        if len(checks) > MAX_BATCH:
            raise InvalidArgument("checks", f"at most {MAX_BATCH} checks per call")
        valid: set[tuple[str, str, str, str, str, str, str, int]] = set()
        for index, check in enumerate(checks):
            subject, resource = check.subject, check.resource
            fields = (check.tenant_id, subject.type, subject.id, check.permission, resource.type, resource.id,
                      resource.scope, check.min_revision)
            if fields not in valid:
                _validate(check, f"checks[{index}].")
                valid.add(fields)
        snapshots = _Snapshots(self._cache)
        now = time()
        answers: dict[Decision, access_pb2.CheckAccessResponse] = {}
        results = []
        for check in checks:
            decision = await snapshots.decide(check, now)
            answer = answers.get(decision)
            if answer is None:
                answer = answers[decision] = _response(decision)
            results.append(answer)
        return access_pb2.CheckAccessBatchResponse(results=results)


class _Snapshots:
    """The tenants and subjects one call has looked up, so that a batch asks the cache
    once per distinct (tenant, subject) and answers each from one snapshot."""

    __slots__ = ("_cache", "_policies", "_subjects")

    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache
        self._policies: dict[tuple[str, int], TenantPolicy | None] = {}
        self._subjects: dict[tuple[str, str, str, int], SubjectGrants | None] = {}

    async def decide(self, check: access_pb2.CheckAccessRequest, now: float) -> Decision:
        """Steps 2-6 for one validated check."""
        tenant_id, min_revision, permission = check.tenant_id, check.min_revision, check.permission
        tenant_key = (tenant_id, min_revision)
        if tenant_key in self._policies:
            policy = self._policies[tenant_key]
        else:
            tenant = await self._cache.tenant(tenant_id, min_revision)
            policy = self._policies[tenant_key] = tenant.policy if tenant is not None else None
        grants = None
        if needs_subject(policy, permission):
            subject = check.subject
            subject_key = (tenant_id, subject.type, subject.id, min_revision)
            if subject_key in self._subjects:
                grants = self._subjects[subject_key]
            else:
                ref = SubjectRef(subject.type, subject.id)
                grants = self._subjects[subject_key] = await self._cache.subject(tenant_id, ref, min_revision)
        return decide(policy, grants, permission, check.resource.scope, now=now)


def _response(decision: Decision) -> access_pb2.CheckAccessResponse:
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
