"""Envoy's external authorization, v3: `envoy.service.auth.v3.Authorization/Check`.

    CheckRequest → route (server/ext_authz_routes.py) → tenant, subject, permission, scope
                 → step 1 (gatehouse.engine.validate) → DecisionService (steps 2-6)
                 → CheckResponse Envoy acts on

Served on every gRPC listener beside AccessService, through the same interceptor chain
(admission class hot), when GATEHOUSE_EXT_AUTHZ_CONFIG names a route mapping. The answer,
as envoy/service/auth/v3/external_auth.proto defines it (protos/third_party/):

- allowed: `status` OK and an `ok_response` whose `headers` set `x-gatehouse-revision`
  (the tenant revision decided at), `x-gatehouse-role` and `x-gatehouse-scope` (what
  granted it) on the request going upstream, overwriting any the client sent, and whose
  `headers_to_remove` drop the mapping's `remove_headers` (a credential the upstream
  need not see) and every other `x-gatehouse-*` the client sent, so none is spoofed;
- denied: `status` PERMISSION_DENIED and a `denied_response` Envoy sends to the client
  as is: 403 with a small JSON body `{"allowed": false, "reason": ..., "message": ...}`
  (`reason`: the decision's, NO_GRANT, NOT_A_MEMBER, TENANT_SUSPENDED, CONDITIONAL (with
  `missing_attributes`: what a condition needed that the route's `attributes` did not
  read from this request), ..., or NO_ROUTE, ROUTE_DENIED, NO_TENANT); 401 and UNAUTHENTICATED when no subject was found in the
  request; 400 and INVALID_ARGUMENT, naming the value and where it was read, when a
  value breaks the rules of step 1 (a tenant id that is no canonical uuid, a bad scope)
  or an attribute read breaks CheckAccess's rules for attributes (over 16 KiB in all),
  and (reason PATH_NOT_NORMALIZED) when the path is not in normal form, whatever route
  it would match (server/ext_authz_routes.not_normalized);
- both: `dynamic_metadata` with the decision (decision, reason, route, tenant_id,
  permission, revision), which Envoy files under `envoy.filters.http.ext_authz` for its
  access log: `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%`.

A Gatehouse error (store down, data stale past the max staleness, overloaded, deadline)
leaves as the gRPC status it is everywhere else (server/errors.py): Envoy counts it as
an ext_authz error, and with `failure_mode_allow: false` (its default) denies the request
with its `status_on_error` (403 unless configured). Fail closed. So does a proxy that is
no caller (GATEHOUSE_CALLER_CREDENTIALS=required, server/callers.py): without the key it
sends in `grpc_service.initial_metadata` (or its mTLS certificate) every Check is
UNAUTHENTICATED, and one limited to some tenants gets PERMISSION_DENIED for the others.
"""

from __future__ import annotations

import json
from collections import Counter
from time import time

import grpc
from cachetools import LRUCache
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from gatehouse.engine.conditions import ConditionFacts, ConditionInput
from gatehouse.engine.model import Reason, SubjectRef
from gatehouse.engine.patterns import is_valid_id, is_valid_scope, is_valid_tenant_id
from gatehouse.engine.validate import Violations, require_id, require_scope, require_tenant_id
from gatehouse.envoy_api.envoy.config.core.v3 import base_pb2
from gatehouse.envoy_api.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from gatehouse.envoy_api.envoy.type.v3 import http_status_pb2
from gatehouse.errors import Code, FieldViolation, InvalidArgument
from gatehouse.server.access import facts_violations
from gatehouse.server.callers import CHECK, Callers, Credentials
from gatehouse.server.decisions import DecisionService
from gatehouse.server.errors import grpc_errors
from gatehouse.server.ext_authz_routes import (
    ATTRIBUTE_KINDS,
    JWT_AUTHN,
    Action,
    Attribute,
    Request,
    Route,
    RouteMap,
    not_normalized,
)
from gatehouse.server.interceptors import Chain
from gatehouse.server.wire import parse, register_service

SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
CheckRequest = external_auth_pb2.CheckRequest
CheckResponse = external_auth_pb2.CheckResponse

REVISION_HEADER = "x-gatehouse-revision"
ROLE_HEADER = "x-gatehouse-role"
SCOPE_HEADER = "x-gatehouse-scope"
OWN_HEADERS = "x-gatehouse-"
ENCODED_ANSWERS = 10_000  # ~0.5 KB each
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_JSON = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value="application/json"), append_action=_OVERWRITE
)


class ExtAuthzServicer:
    """`Check`: one HTTP request, mapped by `routes`, decided by `decisions`."""

    def __init__(self, decisions: DecisionService, routes: RouteMap, callers: Callers | None = None) -> None:
        self._decisions = decisions
        self._routes = routes
        # Who may ask (server/callers.py): Envoy itself, by the key it sends in
        # grpc_service.initial_metadata or its mTLS certificate. None when anyone may.
        self._callers = callers if callers is not None and callers.required else None
        # Answers by outcome (allowed, a denial's reason, skipped, ...): bounded by the
        # reasons there are, never by tenant or route.
        self.outcomes: Counter[str] = Counter()
        # Serialized answers by what they say (route, tenant, revision, what granted it,
        # headers removed): an answer given again is not built again. Every request is
        # still decided; only the encoding is remembered.
        self._encoded: LRUCache[tuple[object, ...], bytes] = LRUCache(ENCODED_ANSWERS)

    def add_to(self, server: grpc.aio.Server, chain: Chain) -> None:
        register_service(server, SERVICE, self, chain=chain, raw={
            "Check": grpc.unary_unary_rpc_method_handler(self.Check),
        })

    def values(self) -> dict[str, float]:
        """For the stats registry: `checks{outcome=...}`."""
        return {f"checks{{outcome={outcome}}}": n for outcome, n in self.outcomes.items()}

    @grpc_errors
    async def Check(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        credentials = None
        if self._callers is not None and not self._callers.admitted(context, CHECK):
            # The caller is the proxy asking, never the HTTP request it describes. A
            # remembered key of every tenant passes above (no await); any other: first who
            # it is (before anything of the request is read), then, once the mapping has
            # named the tenant, whether it may ask about that one.
            credentials = Credentials.from_grpc(context)
            await self._callers.require_all(credentials, CHECK, lambda: ())
        return await self.check(parse(CheckRequest, body), credentials)

    async def check(self, request: external_auth_pb2.CheckRequest, credentials: Credentials | None = None) -> bytes:
        """The answer to one CheckRequest, serialized. Raises a GatehouseError
        (Unavailable, Stale, DeadlineExceeded, ...) when Gatehouse cannot decide, and
        Unauthenticated / PermissionDenied when callers are required and the proxy is no
        caller of this tenant: those are no denial but a failure, which Envoy turns into one."""
        http = request.attributes.request.http
        problem = not_normalized(http.path)
        if problem is not None:
            # Matched as written it would decide about another request than the upstream serves.
            return self._denied(
                400, Code.INVALID_ARGUMENT, "PATH_NOT_NORMALIZED",
                f"the path holds {problem}: normalize it first (Envoy: normalize_path, merge_slashes)", None,
            )
        found = self._routes.route(http.method, http.path)
        if found is None:
            return self._denied(403, Code.PERMISSION_DENIED, "NO_ROUTE", "no route of the mapping matches", None)
        route, params = found
        headers = _headers(http)
        if route.action is Action.DENY:
            return self._denied(403, Code.PERMISSION_DENIED, "ROUTE_DENIED", "this route is denied", route)
        if route.action is Action.ALLOW:
            return self._ok(route, headers, self._routes.remove_headers, "ALLOWED_BY_ROUTE")
        if route.action is Action.SKIP:
            return self._ok(route, headers, (), "SKIPPED")
        assert route.tenant is not None and route.subject_type is not None and route.subject_id is not None
        claims: struct_pb2.Struct | None = None
        jwt = request.attributes.metadata_context.filter_metadata.get(JWT_AUTHN)
        if jwt is not None and self._routes.jwt_payload_in_metadata in jwt:
            payload = jwt[self._routes.jwt_payload_in_metadata]
            claims = payload if isinstance(payload, struct_pb2.Struct) else None
        values = Request(headers, params, claims)
        try:
            tenant_id = route.tenant.read(values)
            subject_type, subject_id = route.subject_type.read(values), route.subject_id.read(values)
            scope = (route.scope.read(values) if route.scope is not None else None) or ""
            attributes = _attributes(route.attributes, values) if route.attributes else None
        except InvalidArgument as error:  # a claim present in an unusable shape
            return self._denied(400, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", error.message, route, field=error)
        if tenant_id is None:
            return self._denied(
                403, Code.PERMISSION_DENIED, "NO_TENANT", f"no tenant in the request ({route.tenant.describe()})", route
            )
        if subject_type is None or subject_id is None:
            where = route.subject_type.describe() if subject_type is None else route.subject_id.describe()
            return self._denied(
                401, Code.UNAUTHENTICATED, "NO_SUBJECT", f"no subject in the request ({where})", route, tenant_id
            )
        try:
            _validate(route, tenant_id, subject_type, subject_id, scope)
        except InvalidArgument as error:
            return self._denied(400, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", error.message, route, field=error)
        if self._callers is not None and credentials is not None:
            await self._callers.require(credentials, CHECK, tenant_id)
        facts: ConditionFacts | None = None
        if attributes is not None:
            read = ConditionInput(
                subject_type, subject_id, resource_scope=scope, subject_attributes=attributes[0],
                resource_attributes=attributes[1], context=attributes[2],
            )
            facts = lambda: read  # noqa: E731
        evaluation = await self._decisions.session().evaluate(
            tenant_id, SubjectRef(subject_type, subject_id), route.permission, scope, 0, time(), facts
        )
        d = evaluation.decision
        if not d.allowed:
            message = f"{route.permission} denied: {d.reason.name}"
            if d.missing:
                message += f" (missing {', '.join(d.missing)})"
            return self._denied(
                403, Code.PERMISSION_DENIED, d.reason.name, message, route, tenant_id, d.revision, missing=d.missing,
            )
        self.outcomes["ALLOWED"] += 1
        removed = _removed(headers, self._routes.remove_headers, (REVISION_HEADER, ROLE_HEADER, SCOPE_HEADER))
        key = ("allowed", route.line, tenant_id, d.revision, d.role, d.scope, removed)
        encoded = self._encoded.get(key)
        if encoded is None:
            ok = external_auth_pb2.OkHttpResponse(
                headers=[
                    _header(REVISION_HEADER, str(d.revision)),
                    _header(ROLE_HEADER, d.role),
                    _header(SCOPE_HEADER, d.scope),
                ],
                headers_to_remove=removed,
            )
            encoded = self._encoded[key] = CheckResponse(
                status=status_pb2.Status(code=Code.OK),
                ok_response=ok,
                dynamic_metadata=_metadata("allowed", Reason.ALLOWED.name, route, tenant_id, d.revision),
            ).SerializeToString()
        return encoded

    def _ok(self, route: Route, headers: dict[str, str], remove: tuple[str, ...], reason: str) -> bytes:
        """OK without a decision (an allow or skip route)."""
        self.outcomes[reason] += 1
        removed = _removed(headers, remove, ())
        key = (reason, route.line, removed)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = self._encoded[key] = CheckResponse(
                status=status_pb2.Status(code=Code.OK),
                ok_response=external_auth_pb2.OkHttpResponse(headers_to_remove=removed),
                dynamic_metadata=_metadata("allowed", reason, route, "", 0),
            ).SerializeToString()
        return encoded

    def _denied(
        self,
        http_status: int,
        code: Code,
        reason: str,
        message: str,
        route: Route | None,
        tenant_id: str = "",
        revision: int = 0,
        *,
        field: InvalidArgument | None = None,
        missing: tuple[str, ...] = (),
    ) -> bytes:
        self.outcomes[reason] += 1
        key = (reason, route.line if route is not None else 0, tenant_id, revision, message)
        encoded = self._encoded.get(key) if field is None else None
        if encoded is not None:
            return encoded
        body: dict[str, object] = {"allowed": False, "reason": reason, "message": message}
        if field is not None:
            body["fields"] = [{"field": v.field, "description": v.description} for v in field.violations]
        if revision:
            body["revision"] = revision
        if missing:
            body["missing_attributes"] = list(missing)
        encoded = CheckResponse(
            status=status_pb2.Status(code=code, message=message),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status),  # type: ignore[arg-type]  # a StatusCode number
                headers=[_JSON],
                body=json.dumps(body, separators=(",", ":")),
            ),
            dynamic_metadata=_metadata("denied", reason, route, tenant_id, revision),
        ).SerializeToString()
        if field is None:
            self._encoded[key] = encoded
        return encoded


Facts = tuple[dict[str, str] | None, dict[str, str] | None, dict[str, str] | None]


def _attributes(attributes: tuple[Attribute, ...], values: Request) -> Facts:
    """The route's attributes read from the request: (subject attributes, resource
    attributes, context), each None when none of its names was present. Raises
    InvalidArgument (a claim in an unusable shape; what was read breaks CheckAccess's
    rules for attributes, each named by where it was read)."""
    read: dict[str, dict[str, str]] = {}
    sources: dict[tuple[str, str], str] = {}
    for attribute in attributes:
        value = attribute.value.read(values)
        if value is not None:
            read.setdefault(attribute.kind, {})[attribute.name] = value
            sources[(attribute.kind, attribute.name)] = f"{attribute.field} ({attribute.value.describe()})"
    structs = []
    for kind in ATTRIBUTE_KINDS:
        if kind in read:
            struct = struct_pb2.Struct()
            struct.update(read[kind])
            structs.append((struct, kind))
    found = facts_violations(structs) if structs else []
    if found:
        named = [FieldViolation(_read_where(v.field, sources), v.description) for v in found]
        raise InvalidArgument(named[0].field, named[0].description, *named[1:])
    return read.get("subject"), read.get("resource"), read.get("context")


def _read_where(field: str, sources: dict[tuple[str, str], str]) -> str:
    """A violation's field (`resource.fields['owner'].string_value`, or a whole kind for
    the limits) as where the value was read (`resource.attributes.owner (header x-owner)`)."""
    kind, _, rest = field.partition(".")
    for (source_kind, name), where in sources.items():
        if source_kind == kind and rest.startswith(f"fields[{name!r}]"):
            return where
    return {"subject": "subject.attributes", "resource": "resource.attributes"}.get(kind, kind)


def _validate(route: Route, tenant_id: str, subject_type: str, subject_id: str, scope: str) -> None:
    """Step 1, with the rules CheckAccess uses; a field is named by where it was read.
    As in server/access.py, the usual valid request costs one test per value; an invalid
    one goes through the shared rules, so the error names every bad value."""
    if is_valid_tenant_id(tenant_id) and is_valid_id(subject_type) and is_valid_id(subject_id) and is_valid_scope(scope):
        return
    assert route.tenant is not None and route.subject_type is not None and route.subject_id is not None
    v = Violations()
    v.check(require_tenant_id, f"tenant ({route.tenant.describe()})", tenant_id)
    v.check(require_id, f"subject.type ({route.subject_type.describe()})", subject_type)
    v.check(require_id, f"subject.id ({route.subject_id.describe()})", subject_id)
    if route.scope is not None:
        v.check(require_scope, f"scope ({route.scope.describe()})", scope)
    v.raise_if_any()


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, str]:
    """The request's headers by lower-case name: `headers`, or with Envoy's
    `encode_raw_headers: true` the `header_map` (repeated names joined by ",", as
    Envoy joins them in `headers`)."""
    headers: dict[str, str] = dict(http.headers)
    if not headers and http.HasField("header_map"):
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            key = entry.key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def _removed(headers: dict[str, str], remove: tuple[str, ...], setting: tuple[str, ...]) -> tuple[str, ...]:
    """What to take off the request: `remove`, and every `x-gatehouse-*` the client sent
    that this answer does not set itself (those it sets are overwritten)."""
    spoofed = tuple(name for name in headers if name.startswith(OWN_HEADERS) and name not in setting)
    return remove + spoofed if spoofed else remove


def _metadata(decision: str, reason: str, route: Route | None, tenant_id: str, revision: int) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update({
        "decision": decision,
        "reason": reason,
        "route": route.label if route is not None else "",
        "tenant_id": tenant_id,
        "permission": route.permission if route is not None else "",
        "revision": revision,
    })
    return metadata
