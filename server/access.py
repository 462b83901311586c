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
from gatehouse.engine.patterns import is_valid_id, is_valid_permission, is_valid_scope
from gatehouse.engine.validate import ID_RULE, PERMISSION_RULE, SCOPE_RULE
from gatehouse.errors import InvalidArgument
from gatehouse.server.errors import grpc_errors
from gatehouse.server.wire import parse, register
from gatehouse.v1 import access_pb2

MAX_BATCH = 1000
Response = access_pb2.CheckAccessResponse
SERVICE = access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name


class AccessServicer:
    """CheckAccess and CheckAccessBatch on raw bytes: a request asked before is answered
    from `answers` (see `gatehouse.cache.answers`) without being parsed, validated or
    decided again; any other is parsed here, so malformed bytes get INVALID_ARGUMENT."""

    def __init__(self, cache: PolicyCache, answers: Answers) -> None:
        self._cache = cache
        self._answers = answers

    def add_to(self, server: grpc.aio.Server) -> None:
        register(server, SERVICE, {
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
        for index, check in enumerate(checks):
            subject, resource = check.subject, check.resource
            fields = (check.tenant_id, subject.type, subject.id, check.permission, resource.type, resource.id,
                      resource.scope, check.min_revision)
            if fields not in valid:
                _validate(check, f"checks[{index}].")
                valid.add(fields)
        snapshots = _Snapshots(self._cache)
        results = []
        remembered: dict[bytes, bytes] = {}
        for part, check in zip(parts, checks):
            framed = remembered.get(part) if part else None
            if framed is None:
                decided = await snapshots.decide(check, now)
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
