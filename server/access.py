"""AccessService: the hot path.

    request bytes → remembered answer (cache.answers)                     asked before
                  → parse, validate → PolicyCache (L1 | L2 | store) → engine → answer bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from time import time

import grpc

from gatehouse.cache.answers import Answers, frame, split_field1
from gatehouse.cache.policy_cache import CachedTenant, PolicyCache
from gatehouse.engine.decision import Decision, SubjectGrants, decide, decided_until, needs_subject
from gatehouse.engine.model import SubjectRef
from gatehouse.engine.patterns import is_valid_id, is_valid_permission, is_valid_scope, is_valid_tenant_id
from gatehouse.engine.validate import (
    Violations,
    optional_id,
    require_id,
    require_permission,
    require_revision,
    require_scope,
    require_tenant_id,
)
from gatehouse.errors import InvalidArgument, RevisionNotReached
from gatehouse.server.errors import grpc_errors
from gatehouse.server.wire import parse, register_service
from gatehouse.v1 import access_pb2

MAX_BATCH = 1000
Response = access_pb2.CheckAccessResponse
SERVICE = access_pb2.DESCRIPTOR.services_by_name["AccessService"]


class AccessServicer:
    """CheckAccess and CheckAccessBatch on raw bytes: a request asked before is answered
    from `answers` (see `gatehouse.cache.answers`) without being parsed, validated or
    decided again; any other is parsed here, so malformed bytes get INVALID_ARGUMENT."""

    def __init__(self, cache: PolicyCache, answers: Answers) -> None:
        self._cache = cache
        self._answers = answers

    def add_to(self, server: grpc.aio.Server) -> None:
        register_service(server, SERVICE, self, raw={
            "CheckAccess": grpc.unary_unary_rpc_method_handler(self.CheckAccess),
            "CheckAccessBatch": grpc.unary_unary_rpc_method_handler(self.CheckAccessBatch),
        })

    @grpc_errors
    async def CheckAccess(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        now = time()
        known = self._answers.get(body, now)
        if known is not None:
            return known.encoded
        request = parse(access_pb2.CheckAccessRequest, body)
        _validate(request, "")
        return (await _Snapshots(self._cache).decide(request, now)).answer(self._answers, body, request)

    @grpc_errors
    async def CheckAccessBatch(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """All remembered: the answers, framed, joined (no await, so one snapshot). Else one
        pass: validate every entry (a malformed one fails the call before any work), then
        look each distinct tenant and (tenant, subject) up once and decide every check
        from those, so a batch answers each subject from one snapshot."""
        now = time()
        parts = split_field1(body)
        if parts is not None and len(parts) <= MAX_BATCH:
            answers = self._answers
            framed = []
            for part in parts:
                known = answers.get(part, now)
                if known is None:
                    break
                framed.append(known.framed)
            else:
                return b"".join(framed)
        checks = parse(access_pb2.CheckAccessBatchRequest, body).checks
        if len(checks) > MAX_BATCH:
            raise InvalidArgument("checks", f"at most {MAX_BATCH} checks per call")
        if parts is None or len(parts) != len(checks):
            parts = [b""] * len(checks)  # other fields or an unusual encoding: answer, remember nothing
        valid: set[tuple[str, str, str, str, str, str, str, int]] = set()
        violations = Violations()
        for index, check in enumerate(checks):
            subject, resource = check.subject, check.resource
            fields = (check.tenant_id, subject.type, subject.id, check.permission, resource.type, resource.id,
                      resource.scope, check.min_revision)
            if fields not in valid:
                try:
                    _validate(check, f"checks[{index}].")
                except InvalidArgument as error:
                    violations.found.extend(error.violations)
                    continue
                valid.add(fields)
        violations.raise_if_any()
        snapshots = _Snapshots(self._cache)
        results = []
        remembered: dict[bytes, bytes] = {}
        for index, (part, check) in enumerate(zip(parts, checks)):
            framed = remembered.get(part) if part else None
            if framed is None:
                try:
                    decided = await snapshots.decide(check, now)
                except RevisionNotReached as error:
                    error.metadata["check"] = f"checks[{index}]"
                    raise
                framed = frame(decided.answer(self._answers, part, check))
                if part:
                    remembered[part] = framed
            results.append(framed)
        return b"".join(results)


@dataclass(slots=True)
class _Decided:
    """One decision and what it was decided from."""

    decision: Decision
    tenant: CachedTenant | None
    subject_key: str | None  # None: the decision did not read the subject
    grants: SubjectGrants | None
    now: float

    def answer(self, answers: Answers, body: bytes, check: access_pb2.CheckAccessRequest) -> bytes:
        """The serialized answer, remembered for `body` (b"": not remembered)."""
        d = self.decision
        encoded = Response(
            allowed=d.allowed,
            reason=d.reason,  # type: ignore[arg-type]
            revision=d.revision,
            granted_by_role=d.role,
            granted_at_scope=d.scope,
            feature=d.feature,
        ).SerializeToString()
        if body:
            answers.remember(
                body, check.tenant_id, check.min_revision, self.tenant, self.subject_key, self.grants,
                decided_until(self.grants, self.now), encoded,
            )
        return encoded


class _Snapshots:
    """The tenants and subjects one call has looked up, so that a batch asks the cache
    once per distinct (tenant, subject) and answers each from one snapshot."""

    __slots__ = ("_cache", "_tenants", "_subjects")

    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache
        self._tenants: dict[tuple[str, int], CachedTenant | None] = {}
        self._subjects: dict[tuple[str, str, str, int], SubjectGrants | None] = {}

    async def decide(self, check: access_pb2.CheckAccessRequest, now: float) -> _Decided:
        """Steps 2-6 for one validated check."""
        tenant_id, min_revision, permission = check.tenant_id, check.min_revision, check.permission
        tenant_key = (tenant_id, min_revision)
        if tenant_key in self._tenants:
            tenant = self._tenants[tenant_key]
        else:
            tenant = self._tenants[tenant_key] = await self._cache.tenant(tenant_id, min_revision)
        policy = tenant.policy if tenant is not None else None
        grants = subject_key = None
        if needs_subject(policy, permission):
            subject = check.subject
            ref = SubjectRef(subject.type, subject.id)
            subject_key = ref.key
            cache_key = (tenant_id, subject.type, subject.id, min_revision)
            if cache_key in self._subjects:
                grants = self._subjects[cache_key]
            else:
                grants = self._subjects[cache_key] = await self._cache.subject(tenant_id, ref, min_revision)
        decision = decide(policy, grants, permission, check.resource.scope, now=now)
        return _Decided(decision, tenant, subject_key, grants, now)


def _validate(request: access_pb2.CheckAccessRequest, prefix: str) -> None:
    """Step 1 of the decision. The usual, valid request costs one test per field; an
    invalid one is checked again by the shared rules, so the error names every bad field
    (as the caller spelled it) with the same words as every other method."""
    subject, resource = request.subject, request.resource
    if (
        is_valid_tenant_id(request.tenant_id)
        and is_valid_id(subject.type)
        and is_valid_id(subject.id)
        and is_valid_permission(request.permission)
        and (not resource.type or is_valid_id(resource.type))
        and (not resource.id or is_valid_id(resource.id))
        and is_valid_scope(resource.scope)
        and request.min_revision >= 0
    ):
        return
    v = Violations()
    v.check(require_tenant_id, f"{prefix}tenant_id", request.tenant_id)
    v.check(require_id, f"{prefix}subject.type", subject.type)
    v.check(require_id, f"{prefix}subject.id", subject.id)
    v.check(require_permission, f"{prefix}permission", request.permission)
    v.check(optional_id, f"{prefix}resource.type", resource.type)
    v.check(optional_id, f"{prefix}resource.id", resource.id)
    v.check(require_scope, f"{prefix}resource.scope", resource.scope)
    v.check(require_revision, f"{prefix}min_revision", request.min_revision)
    v.raise_if_any()
