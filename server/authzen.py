"""The OpenID AuthZEN Authorization API 1.0, as Gatehouse questions and answers.

What the specification says, and what Gatehouse does with it (quotes are from
"Authorization API 1.0", openid/authzen `api/authorization-api-1_0.md`):

* "The Access Evaluation request is an object consisting of four entities":
  `subject` (REQUIRED), `action` (REQUIRED), `resource` (REQUIRED), `context`
  (OPTIONAL). A Subject "contains two REQUIRED keys, `type` and `id`, which have a string
  value, and an OPTIONAL key, `properties`, with a value of an object"; a Resource is
  "constructed similar to a Subject"; an Action "contains a REQUIRED `name` key with a
  string value". Mapped onto CheckAccess:

      subject {type, id}                  → subject (type, id)       ids: 1-128 of [A-Za-z0-9._:@-]
      action {name}                       → permission               e.g. invoice.read, can_read
      resource {type, id}                 → resource (type, id)      checked as CheckAccess checks them
      resource.properties.tenant_id       → tenant_id                else the X-Gatehouse-Tenant header
      resource.properties.scope           → resource scope           e.g. emea/de; absent = tenant root
      context.min_revision (integer ≥ 0)  → min_revision             read-your-writes; absent = 0
      subject.properties                  → subject.attributes       what conditions read
      resource.properties (but tenant_id, scope) → resource.attributes
      context (but min_revision)          → context

  The attributes and the context are what a role assignment's condition reads
  (engine/conditions.py: `resource.attributes.owner == subject.id`); the reserved keys
  keep their own meaning and are not attributes (a condition reads the scope as
  `resource.scope`). `action.properties` must be an object and is otherwise ignored:
  a condition has no action but the permission, so what it needs of the request goes in
  `context`. A JSON `null` counts as absent ("properties with a value of null SHOULD be
  omitted"): an entity, a `properties` or `context` of null, or a top-level key of null
  (nested inside a value, null is a value). They are checked as CheckAccess checks its
  `google.protobuf.Struct`s (server/access.py `facts_violations`: storable strings,
  finite numbers, at most 32 levels, and at most MAX_ATTRIBUTE_VALUES values and
  MAX_ATTRIBUTE_BYTES encoded in one question's attributes and context together); a
  violation is a 400 naming the value as the caller spelled it
  (`evaluations[2].subject.properties['tags'][3]`). Numbers are doubles, as in a Struct;
  an integer beyond 2**53 is a 400 (a double would round it, and two ids compare equal):
  pass it as a string.
  The tenant may come from the header when every question is about one
  tenant; a resource naming another tenant than the header is refused (400), never
  decided in either.

* "If a required attribute in the information model is omitted, the server MUST
  return a "Bad Request" error": a missing or mistyped entity, and (as CheckAccess and
  CheckAccessBatch do, engine/validate.py's rules) any value Gatehouse cannot ask
  about, fail the whole request with 400 before anything is decided, naming every bad
  field as the caller spelled it (`evaluations[2].resource.properties.scope`).

* The answer is a Decision: "a REQUIRED `decision` key with a `boolean` value, and an
  OPTIONAL `context` key", which may convey "Reason(s) a decision was made". Gatehouse's
  context holds what CheckAccessResponse says beside `allowed`, under its field names:
  `reason` (the DecisionReason name, e.g. DECISION_REASON_NO_GRANT), `revision` (the
  tenant revision the answer was computed at), `granted_by_role` and `granted_at_scope`
  when allowed, `feature` when a feature flag decided, and when a condition needed
  attributes the request did not carry, `reason` DECISION_REASON_CONDITIONAL (decision
  false) with `missing_attributes`, their names as a condition reads them
  (`["resource.attributes.owner"]`: pass `resource.properties.owner`).

* Access Evaluations: "The top-level `subject`, `action`, `resource`, and `context` keys
  provide default values for each object in the evaluations array. Any of these keys
  specified within an individual evaluation object overrides the corresponding top-level
  default" (the whole key: an item's `context` replaces the default's, min_revision with
  it; an item's `subject` or `resource`, its properties with it). "If an `evaluations`
  array is NOT present or is empty, the Access Evaluations Request behaves in a
  backwards-compatible manner with the (single) Access Evaluation API Request" (and is
  answered as one Decision). At most `MAX_EVALUATIONS` items, as
  CheckAccessBatch. `options.evaluations_semantic` is "exactly one of" execute_all (the
  default: every item answered, in order), deny_on_first_deny ("returning on the first
  denial", like `&&`) or permit_on_first_permit (like `||`): the answer lists the items
  decided, up to and including the one that stopped it.

* "There are two types of errors": errors about the whole payload are HTTP statuses
  (server/errors.py); an error of one evaluation is "handled at the payload level.
  Decisions default to *closed* (i.e. `false`), but the `context` field can include
  errors": in a batch, a min_revision the item's tenant has not reached answers that
  item `{"decision": false, "context": {"error": {"status": 412, ...}}}` and counts as a
  denial for deny_on_first_deny. (Alone, it is the request's 412.)

Every decision goes through `DecisionService`: a request's questions share one
`DecisionSession`, so each tenant and subject is read once and every answer of a batch
comes from one snapshot, exactly as CheckAccessBatch answers.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from time import time
from typing import Any, Mapping

from google.protobuf import json_format, struct_pb2

from gatehouse.engine.conditions import ConditionFacts, ConditionInput
from gatehouse.engine.decision import Decision
from gatehouse.engine.model import Reason, SubjectRef
from gatehouse.engine.validate import (
    REQUIRED,
    Violations,
    optional_id,
    require_id,
    require_permission,
    require_revision,
    require_scope,
    require_tenant_id,
)
from gatehouse.errors import InvalidArgument, RevisionNotReached
from gatehouse.server.access import MAX_BATCH, facts_violations, plain
from gatehouse.server.decisions import DecisionService
from gatehouse.server.errors import error_json
from gatehouse.server.wire import MAX_VALUE_DEPTH
from gatehouse_client.v1 import access_pb2

EVALUATION_PATH = "/access/v1/evaluation"
EVALUATIONS_PATH = "/access/v1/evaluations"
METADATA_PATH = "/.well-known/authzen-configuration"

TENANT_HEADER = "X-Gatehouse-Tenant"
TENANT_PROPERTY = "tenant_id"  # resource.properties.tenant_id
SCOPE_PROPERTY = "scope"  # resource.properties.scope
MIN_REVISION_KEY = "min_revision"  # context.min_revision
RESOURCE_RESERVED = (TENANT_PROPERTY, SCOPE_PROPERTY)  # resource.properties keys that are no attributes

MAX_EVALUATIONS = MAX_BATCH
EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT = "execute_all", "deny_on_first_deny", "permit_on_first_permit"
SEMANTICS = (EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT)
MAX_REVISION = 2**63 - 1  # CheckAccessRequest.min_revision is an int64

REASON_NAMES = {reason: access_pb2.DecisionReason.Name(int(reason)) for reason in Reason}

ENTITIES = ("subject", "action", "resource")  # REQUIRED in every evaluation


@dataclass(frozen=True, slots=True)
class Question:
    """One evaluation, validated: what `DecisionService.evaluate` takes."""

    tenant_id: str
    subject: SubjectRef
    permission: str
    scope: str
    min_revision: int
    resource_type: str = ""
    resource_id: str = ""
    # What conditions read, validated, as CheckAccess carries it; None: not given.
    subject_attributes: struct_pb2.Struct | None = None
    resource_attributes: struct_pb2.Struct | None = None
    context: struct_pb2.Struct | None = None

    def facts(self) -> ConditionFacts:
        """What a condition reads of this question (`DecisionService.evaluate`'s `facts`),
        converted to plain maps only if a condition is reached, as CheckAccess does."""

        def facts() -> ConditionInput:
            return ConditionInput(
                self.subject.type, self.subject.id, self.resource_type, self.resource_id, self.scope,
                _plain(self.subject_attributes), _plain(self.resource_attributes), _plain(self.context),
            )

        return facts


def _plain(struct: struct_pb2.Struct | None) -> dict[str, object] | None:
    return plain(struct) if struct is not None else None


@dataclass(frozen=True, slots=True)
class Evaluations:
    """An Access Evaluations request, validated. `single`: it had no (or an empty)
    `evaluations` array, so it is one question answered as one Decision."""

    questions: tuple[Question, ...]
    semantic: str
    single: bool


def parse_evaluation(body: Any, header_tenant: str | None) -> Question:
    """The one question of an Access Evaluation request body (parsed JSON).
    `header_tenant`: the X-Gatehouse-Tenant header, None when absent. Raises
    InvalidArgument naming every bad field."""
    v = Violations()
    request = _request_object(body)
    parts = _Parts(v, header_tenant)
    question = parts.question("", {key: parts.entity("", key, request.get(key)) for key in (*ENTITIES, "context")})
    v.raise_if_any()
    assert question is not None
    return question


def parse_evaluations(body: Any, header_tenant: str | None) -> Evaluations:
    """An Access Evaluations request body (parsed JSON), defaults resolved item by item.
    Raises InvalidArgument naming every bad field (an item's own, or the top-level
    default it used, once)."""
    v = Violations()
    request = _request_object(body)
    parts = _Parts(v, header_tenant)
    semantic = _semantic(v, request.get("options"))
    items = request.get("evaluations")
    defaults = {key: parts.entity("", key, request.get(key)) for key in (*ENTITIES, "context")}
    if items is None or items == []:
        question = parts.question("", defaults)
        v.raise_if_any()
        assert question is not None
        return Evaluations((question,), semantic, single=True)
    if not isinstance(items, list):
        raise InvalidArgument("evaluations", "must be an array")
    if len(items) > MAX_EVALUATIONS:
        raise InvalidArgument("evaluations", f"at most {MAX_EVALUATIONS} evaluations per call")
    questions: list[Question] = []
    for index, item in enumerate(items):
        path = f"evaluations[{index}]"
        if not isinstance(item, dict):
            v.found.extend(InvalidArgument(path, "must be an object").violations)
            continue
        entities = {
            key: parts.entity(f"{path}.", key, item[key]) if item.get(key) is not None else defaults[key]
            for key in (*ENTITIES, "context")
        }
        question = parts.question(f"{path}.", entities, defaulted=True)
        if question is not None:
            questions.append(question)
    v.raise_if_any()
    return Evaluations(tuple(questions), semantic, single=False)


def _request_object(body: Any) -> dict[str, Any]:
    # "The top-level element of all request and response bodies MUST be a JSON object."
    if not isinstance(body, dict):
        raise InvalidArgument("request", "must be a JSON object")
    return body


def _semantic(v: Violations, options: Any) -> str:
    if options is None:
        return EXECUTE_ALL
    if not isinstance(options, dict):
        v.found.extend(InvalidArgument("options", "must be an object").violations)
        return EXECUTE_ALL
    semantic = options.get("evaluations_semantic")
    if semantic is None:
        return EXECUTE_ALL
    if semantic not in SEMANTICS:
        v.found.extend(InvalidArgument("options.evaluations_semantic", f"must be one of {', '.join(SEMANTICS)}").violations)
        return EXECUTE_ALL
    return str(semantic)


@dataclass(frozen=True, slots=True)
class _Facts:
    """An entity's attributes (or a context) as given: the Struct CheckAccess would carry,
    not yet checked (`facts_violations`, per question), and the JSON path that names it
    (`subject.properties`, `evaluations[1].context`)."""

    struct: struct_pb2.Struct
    path: str


@dataclass(frozen=True, slots=True)
class _Entity:
    """One entity as given: its path (for messages) and its fields, shapes checked;
    `valid` False once any of its fields was refused (the request fails anyway).
    `values["facts"]`: its attributes (a context: itself), a _Facts or None."""

    path: str
    values: Mapping[str, Any]
    valid: bool


class _Parts:
    """Checks each entity's shape (AuthZEN's information model) and values (Gatehouse's
    rules, as CheckAccess checks them), collecting every violation in `v`."""

    def __init__(self, v: Violations, header_tenant: str | None) -> None:
        self._v = v
        self._header_tenant = header_tenant

    def _bad(self, field: str, description: str) -> None:
        for violation in InvalidArgument(field, description).violations:
            if violation not in self._v.found:  # a default's fault is named once, not per item
                self._v.found.append(violation)

    def entity(self, prefix: str, key: str, value: Any) -> _Entity | None:
        """The entity `key` of a request or item (None: absent or null)."""
        if value is None:
            return None
        path = prefix + key
        if not isinstance(value, dict):
            self._bad(path, "must be an object")
            return _Entity(path, {}, False)
        before = len(self._v.found)
        values: dict[str, Any] = {}
        if key == "action":
            values["name"] = self._string(f"{path}.name", value.get("name"), require_permission)
            self._object(f"{path}.properties", value.get("properties"))
        elif key in ("subject", "resource"):
            rule = require_id if key == "subject" else optional_id
            values["type"] = self._string(f"{path}.type", value.get("type"), rule)
            values["id"] = self._string(f"{path}.id", value.get("id"), rule)
            properties = self._object(f"{path}.properties", value.get("properties"))
            if key == "resource":
                values["tenant_id"] = self._optional_string(f"{path}.properties.{TENANT_PROPERTY}", properties)
                scope = self._optional_string(f"{path}.properties.{SCOPE_PROPERTY}", properties)
                values["scope"] = self._v.check(require_scope, f"{path}.properties.{SCOPE_PROPERTY}", scope or "")
            reserved = RESOURCE_RESERVED if key == "resource" else ()
            values["facts"] = self._facts(f"{path}.properties", properties, reserved)
        else:  # context: any object; min_revision is Gatehouse's, the rest the conditions'
            values["min_revision"] = self._revision(f"{path}.{MIN_REVISION_KEY}", value.get(MIN_REVISION_KEY))
            values["facts"] = self._facts(path, value, (MIN_REVISION_KEY,))
        return _Entity(path, values, len(self._v.found) == before)

    def question(self, prefix: str, entities: Mapping[str, _Entity | None], defaulted: bool = False) -> Question | None:
        """The question these entities ask (None: one of them is missing or invalid)."""
        for key in ENTITIES:
            if entities[key] is None:
                self._bad(prefix + key, REQUIRED + (" (in the item or as a top-level default)" if defaulted else ""))
        subject, action, resource, context = (entities[key] for key in (*ENTITIES, "context"))
        if subject is None or action is None or resource is None:
            return None
        tenant_id = self._tenant(resource)
        if not (subject.valid and action.valid and resource.valid and (context is None or context.valid)):
            return None
        if tenant_id is None:
            return None
        subject_facts, resource_facts = subject.values["facts"], resource.values["facts"]
        context_facts = context.values["facts"] if context is not None else None
        given = [facts for facts in (subject_facts, resource_facts, context_facts) if facts is not None]
        if given:
            found = facts_violations([(facts.struct, facts.path) for facts in given])
            if found:
                for violation in found:
                    self._bad(_json_field(violation.field, given), violation.description)
                return None
        return Question(
            tenant_id,
            SubjectRef(subject.values["type"], subject.values["id"]),
            action.values["name"],
            resource.values["scope"],
            context.values["min_revision"] if context is not None else 0,
            resource.values["type"],
            resource.values["id"],
            subject_facts.struct if subject_facts is not None else None,
            resource_facts.struct if resource_facts is not None else None,
            context_facts.struct if context_facts is not None else None,
        )

    def _facts(self, path: str, given: Mapping[str, Any], reserved: tuple[str, ...]) -> _Facts | None:
        """The attributes in `given` (a `properties` object or a context) but its `reserved`
        keys and its keys of null; None when none is left. A value no Struct can hold (an
        integer beyond a double's range, a lone surrogate, nesting past what protobuf
        parses) is refused here, naming its key; every other rule is `facts_violations`'s,
        applied per question (its limits count the question's three maps together)."""
        kept = {key: value for key, value in given.items() if value is not None and key not in reserved}
        if not kept:
            return None

        def named(key: str) -> str:  # the key as the caller spelled it, when short enough to echo
            return f"{path}[{key!r}]" if len(repr(key)) <= 64 else f"{path}[key]"

        for key, value in kept.items():
            if _inexact(value, 0):
                # A Struct's numbers are doubles: 2**53 + 1 would be read as 2**53, equal to
                # another caller's id, and a condition comparing them would allow.
                self._bad(named(key), INEXACT_INTEGER)
                return None
        struct = struct_pb2.Struct()
        try:
            json_format.ParseDict(kept, struct)
        except Exception:  # see _unstorable: each of ParseDict's failures, named by its key
            for key, value in kept.items():
                problem = _unstorable(key, value)
                if problem is not None:
                    self._bad(named(key), problem)
                    return None
            self._bad(path, "cannot be held as a google.protobuf.Struct")  # a failure _unstorable does not know
            return None
        return _Facts(struct, path)

    def _tenant(self, resource: _Entity) -> str | None:
        """The tenant of a question: its resource's `properties.tenant_id`, else the header."""
        field = f"{resource.path}.properties.{TENANT_PROPERTY}"
        named = resource.values.get("tenant_id")
        header = self._header_tenant
        if named is None and header is None:
            if resource.valid:
                self._bad(field, f"{REQUIRED} (or the {TENANT_HEADER} header)")
            return None
        if named is not None and header is not None and named != header:
            self._bad(field, f"names another tenant than the {TENANT_HEADER} header")
            return None
        if named is None:
            field, named = TENANT_HEADER, header
        before = len(self._v.found)
        self._v.check(require_tenant_id, field, named)
        return named if len(self._v.found) == before else None

    def _string(self, field: str, value: Any, rule: Any) -> str:
        if value is None:
            self._bad(field, REQUIRED)
            return ""
        if not isinstance(value, str):
            self._bad(field, "must be a string")
            return ""
        return self._v.check(rule, field, value)  # type: ignore[no-any-return]  # rule: a require_* of engine/validate.py

    def _object(self, field: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._bad(field, "must be an object")
            return {}
        return value

    def _optional_string(self, field: str, properties: Mapping[str, Any]) -> str | None:
        value = properties.get(field.rpartition(".")[2])
        if value is None or isinstance(value, str):
            return value
        self._bad(field, "must be a string")
        return None

    def _revision(self, field: str, value: Any) -> int:
        if value is None:
            return 0
        # bool is an int to Python, never to JSON; 5.0 is no integer revision either.
        if not isinstance(value, int) or isinstance(value, bool):
            self._bad(field, "must be an integer")
            return 0
        if value > MAX_REVISION:
            self._bad(field, f"must be at most {MAX_REVISION}")
            return 0
        return self._v.check(require_revision, field, value)


MAX_EXACT_INTEGER = 2**53  # a double holds every integer up to it, and not all beyond
_MAX_DOUBLE_INTEGER = int(sys.float_info.max)
INEXACT_INTEGER = f"an integer beyond {MAX_EXACT_INTEGER} is no exact number (a double): pass it as a string"


def _inexact(value: Any, depth: int) -> bool:
    """Whether parsed JSON `value` holds an integer a double cannot hold exactly (at any
    depth up to the nesting protobuf parses; deeper is refused anyway)."""
    if isinstance(value, int) and not isinstance(value, bool):
        # Beyond a double's range altogether: "must be a finite number" (_unstorable).
        return MAX_EXACT_INTEGER < abs(value) <= _MAX_DOUBLE_INTEGER
    if depth > 100:
        return False
    if isinstance(value, dict):
        return any(_inexact(item, depth + 1) for item in value.values())
    if isinstance(value, list):
        return any(_inexact(item, depth + 1) for item in value)
    return False


def _unstorable(key: str, value: Any) -> str | None:
    """Why `{key: value}` (parsed JSON) cannot be a Struct, in check_values's words; None
    when it can."""
    try:
        json_format.ParseDict({key: value}, struct_pb2.Struct())
    except OverflowError:  # an integer beyond a double's range (1e400 is read as inf: check_values)
        return "must be a finite number"
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escape can spell
        return "must be valid Unicode (no lone surrogate)"
    except (RecursionError, json_format.ParseError):  # protobuf parses 100 levels, we allow 32
        return f"nests deeper than {MAX_VALUE_DEPTH} levels"
    return None


# check_values names a Struct's parts as protobuf spells them; the caller wrote JSON.
_PROTO_STEPS = re.compile(
    r"\.(?:struct_value|list_value|string_value|number_value|bool_value|null_value)|\.(?:fields|values)(?=\[)"
)


def _json_field(field: str, given: list[_Facts]) -> str:
    """`field` as check_values names it (`subject.properties.fields['a'].list_value.values[1]
    .string_value`) spelled as the caller wrote it (`subject.properties['a'][1]`)."""
    for facts in given:
        if field.startswith(facts.path):
            rest = _PROTO_STEPS.sub("", field[len(facts.path):])
            return facts.path + rest.replace(".fields key", " key")
    return field


def decision_json(decision: Decision) -> dict[str, Any]:
    """A Decision: `{"decision": bool, "context": {reason, revision, granted_by_role?,
    granted_at_scope?, feature?, missing_attributes?}}` (see the module)."""
    context: dict[str, Any] = {"reason": REASON_NAMES[decision.reason], "revision": decision.revision}
    if decision.allowed:
        context["granted_by_role"] = decision.role
        context["granted_at_scope"] = decision.scope
    if decision.feature:
        context["feature"] = decision.feature
    if decision.missing:
        context["missing_attributes"] = list(decision.missing)
    return {"decision": decision.allowed, "context": context}


class AuthZen:
    """Answers parsed AuthZEN requests through the one decision service."""

    def __init__(self, decisions: DecisionService) -> None:
        self._decisions = decisions

    async def evaluation(self, question: Question) -> dict[str, Any]:
        """The Decision for one question. Raises RevisionNotReached (412), StoreUnavailable,
        Stale (503) and DeadlineExceeded (504) as CheckAccess does."""
        q = question
        evaluation = await self._decisions.evaluate(
            q.tenant_id, q.subject, q.permission, q.scope, q.min_revision, time(), q.facts()
        )
        return decision_json(evaluation.decision)

    async def evaluations(self, request: Evaluations) -> dict[str, Any]:
        """`{"evaluations": [Decision, ...]}` in request order, stopped by the semantic
        (see the module); a single request's Decision as `evaluation` answers it."""
        if request.single:
            return await self.evaluation(request.questions[0])
        session = self._decisions.session()
        now = time()
        semantic = request.semantic
        answers: list[dict[str, Any]] = []
        for q in request.questions:
            try:
                evaluation = await session.evaluate(
                    q.tenant_id, q.subject, q.permission, q.scope, q.min_revision, now, q.facts()
                )
            except RevisionNotReached as error:
                # An error of this evaluation alone: closed, with the error in its context.
                answers.append({"decision": False, "context": {"error": error_json(error)}})
                allowed = False
            else:
                answers.append(decision_json(evaluation.decision))
                allowed = evaluation.decision.allowed
            if (semantic == DENY_ON_FIRST_DENY and not allowed) or (semantic == PERMIT_ON_FIRST_PERMIT and allowed):
                break
        return {"evaluations": answers}
