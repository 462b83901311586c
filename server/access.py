"""AccessService: the hot path.

    request bytes → remembered answer (cache.answers)                     asked before
                  → parse, validate (step 1) → DecisionService (steps 2-6) → answer bytes
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence
from time import time

import grpc

from gatehouse.cache.answers import Answers
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from gatehouse.engine.conditions import MAX_ATTRIBUTE_BYTES, MAX_ATTRIBUTE_VALUES, ConditionFacts, ConditionInput
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
from gatehouse.errors import FieldViolation, InvalidArgument, RevisionNotReached
from gatehouse.server.callers import CHECK, Callers
from gatehouse.server.convert import check_response
from gatehouse.server.decisions import DecisionService, DecisionSession, Evaluation
from gatehouse.server.errors import grpc_errors
from gatehouse.server.interceptors import Chain
from gatehouse.server.wire import EncodedAnswer, check_values, parse, register_service, split_field1
from gatehouse_client.v1 import access_pb2

MAX_BATCH = 1000
SERVICE = access_pb2.DESCRIPTOR.services_by_name["AccessService"]


class AccessServicer:
    """CheckAccess and CheckAccessBatch on raw bytes: a request asked before is answered
    from `answers` (see `gatehouse.cache.answers`) without being parsed, validated or
    decided again; any other is parsed here, so malformed bytes get INVALID_ARGUMENT."""

    def __init__(
        self, decisions: DecisionService, answers: Answers[EncodedAnswer], callers: Callers | None = None
    ) -> None:
        self._decisions = decisions
        self._answers = answers
        # Who may ask (server/callers.py); None when anyone may.
        self._callers = callers if callers is not None and callers.required else None
        # The decision log (None: off) also records answers given from memory.
        self._log = decisions.log
        # Answers by DecisionReason number, remembered or decided: a plain increment per
        # answer (no tenant or subject in the key: bounded by the enum).
        self.reasons: Counter[int] = Counter()

    def add_to(self, server: grpc.aio.Server, chain: Chain) -> None:
        register_service(server, SERVICE, self, chain=chain, raw={
            "CheckAccess": grpc.unary_unary_rpc_method_handler(self.CheckAccess),
            "CheckAccessBatch": grpc.unary_unary_rpc_method_handler(self.CheckAccessBatch),
        })

    @grpc_errors
    async def CheckAccess(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if self._callers is not None:
            await self._callers.require_grpc(
                context, CHECK, lambda: (parse(access_pb2.CheckAccessRequest, body).tenant_id,)
            )
        now = time()
        known = self._answers.get(body, now)
        if known is not None:
            self.reasons[known.reason] += 1
            if self._log is not None and known.record is not None:
                self._log.offer(known.record, remembered=True)
            return known.encoded
        request = parse(access_pb2.CheckAccessRequest, body)
        _validate(request, "")
        answer = _answer(self._answers, await _evaluate(self._decisions.session(), request, now), body, request)
        self.reasons[answer.reason] += 1
        return answer.encoded

    @grpc_errors
    async def CheckAccessBatch(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        """All remembered: the answers, framed, joined (no await, so one snapshot). Else one
        pass: validate every entry (a malformed one fails the call before any work), then
        look each distinct tenant and (tenant, subject) up once and decide every check
        from those, so a batch answers each subject from one snapshot."""
        if self._callers is not None:
            await self._callers.require_grpc(
                context, CHECK,
                lambda: {check.tenant_id for check in parse(access_pb2.CheckAccessBatchRequest, body).checks},
            )
        now = time()
        parts = split_field1(body)
        if parts is not None and len(parts) <= MAX_BATCH:
            answers, log = self._answers, self._log
            all_known = []
            for part in parts:
                known = answers.get(part, now)
                if known is None:
                    break
                all_known.append(known)
            else:
                reasons = self.reasons
                for known in all_known:
                    reasons[known.reason] += 1
                    if log is not None and known.record is not None:
                        log.offer(known.record, remembered=True)
                return b"".join([known.framed for known in all_known])
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
            # A check carrying attributes or context is checked on its own (they are not in `fields`).
            if fields not in valid or _has_facts(check):
                try:
                    _validate(check, f"checks[{index}].")
                except InvalidArgument as error:
                    violations.found.extend(error.violations)
                    continue
                valid.add(fields)
        violations.raise_if_any()
        session = self._decisions.session()
        results = []
        remembered: dict[bytes, EncodedAnswer] = {}
        for index, (part, check) in enumerate(zip(parts, checks)):
            answer = remembered.get(part) if part else None
            if answer is None:
                try:
                    evaluation = await _evaluate(session, check, now)
                except RevisionNotReached as error:
                    error.metadata["check"] = f"checks[{index}]"
                    raise
                answer = _answer(self._answers, evaluation, part, check)
                if part:
                    remembered[part] = answer
            results.append(answer)
        reasons = self.reasons
        for answer in results:
            reasons[answer.reason] += 1
        return b"".join([answer.framed for answer in results])


def _answer(
    answers: Answers[EncodedAnswer], evaluation: Evaluation, body: bytes, check: access_pb2.CheckAccessRequest
) -> EncodedAnswer:
    """The serialized answer to `check`, remembered for `body` (b"": not remembered)."""
    d = evaluation.decision
    answer = EncodedAnswer.of(check_response(d).SerializeToString(), int(d.reason), evaluation.record)
    # The request bytes hold the attributes and context, so an answer that depended on
    # them is remembered keyed by them; one that read the time (valid_until = now) is not.
    if body and evaluation.valid_until > evaluation.now:
        answers.remember(
            body, check.tenant_id, check.min_revision, evaluation.tenant, evaluation.subject_key, evaluation.grants,
            evaluation.valid_until, answer,
        )
    return answer


async def _evaluate(session: DecisionSession, check: access_pb2.CheckAccessRequest, now: float) -> Evaluation:
    subject = check.subject
    return await session.evaluate(
        check.tenant_id, SubjectRef(subject.type, subject.id), check.permission, check.resource.scope,
        check.min_revision, now, _facts(check),
    )


def _facts(check: access_pb2.CheckAccessRequest) -> ConditionFacts:
    """What conditions may read of `check`, converted only if a condition is reached."""

    def facts() -> ConditionInput:
        subject, resource = check.subject, check.resource
        return ConditionInput(
            subject.type,
            subject.id,
            resource.type,
            resource.id,
            resource.scope,
            plain_if_set(subject, "attributes"),
            plain_if_set(resource, "attributes"),
            plain_if_set(check, "context"),
        )

    return facts


def plain(message: struct_pb2.Struct) -> dict[str, object]:
    """A Struct as the JSON-like map conditions read."""
    data: dict[str, object] = json_format.MessageToDict(message)
    return data


def plain_if_set(owner: Message, name: str) -> dict[str, object] | None:
    """`plain` of the Struct field `name` of `owner` when set, else None (not given)."""
    return plain(getattr(owner, name)) if owner.HasField(name) else None


def given(owner: Message, name: str, path: str) -> list[tuple[struct_pb2.Struct, str]]:
    """[(the Struct field `name` of `owner`, its path)] when set, else []: what
    `facts_violations` takes."""
    return [(getattr(owner, name), path)] if owner.HasField(name) else []


def _has_facts(check: access_pb2.CheckAccessRequest) -> bool:
    return check.subject.HasField("attributes") or check.resource.HasField("attributes") or check.HasField("context")


def _facts_violations(check: access_pb2.CheckAccessRequest, prefix: str) -> list[FieldViolation]:
    """What is wrong with the attributes and context of `check` (`facts_violations`)."""
    return facts_violations(
        given(check.subject, "attributes", f"{prefix}subject.attributes")
        + given(check.resource, "attributes", f"{prefix}resource.attributes")
        + given(check, "context", f"{prefix}context")
    )


def facts_violations(present: Sequence[tuple[struct_pb2.Struct, str]]) -> list[FieldViolation]:
    """What is wrong with the attributes and context of one question (each Struct given,
    with the field path that names it): `decode`'s rules for Struct values (storable
    strings, at most 32 levels, finite numbers), and at most MAX_ATTRIBUTE_VALUES values
    and MAX_ATTRIBUTE_BYTES encoded in all (a condition's cost grows with them). The
    rules of CheckAccess, for every method that takes attributes (LookupService too)."""
    found: list[FieldViolation] = []
    for message, path in present:
        check_values(message, f"{path}.", found)
    if not found and sum(message.ByteSize() for message, _ in present) > MAX_ATTRIBUTE_BYTES:
        found.append(FieldViolation(
            present[-1][1], f"at most {MAX_ATTRIBUTE_BYTES} bytes (encoded) in attributes and context together"
        ))
    if not found:
        budget = MAX_ATTRIBUTE_VALUES
        for message, path in present:
            budget -= _count_values(message, budget + 1)
            if budget < 0:
                found.append(FieldViolation(path, f"at most {MAX_ATTRIBUTE_VALUES} values in attributes and context together"))
                break
    return found


def _count_values(message: struct_pb2.Struct | struct_pb2.ListValue, cap: int) -> int:
    """Values in a Struct or ListValue at any depth (each entry, list item and nested
    value counts one), stopping once past `cap`. Depth is already bounded."""
    items = message.fields.values() if isinstance(message, struct_pb2.Struct) else message.values
    count = 0
    for value in items:
        count += 1
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            count += _count_values(value.struct_value, cap - count)
        elif kind == "list_value":
            count += _count_values(value.list_value, cap - count)
        if count > cap:
            break
    return count


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
        if _has_facts(request):
            found = _facts_violations(request, prefix)
            if found:
                raise InvalidArgument(found[0].field, found[0].description, *found[1:])
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
    if _has_facts(request):
        v.found.extend(_facts_violations(request, prefix))
    v.raise_if_any()
