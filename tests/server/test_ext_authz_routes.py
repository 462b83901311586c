"""The ext_authz route mapping file: matching, sources, and errors that name the line."""

from __future__ import annotations

import pathlib

import pytest

from gatehouse.errors import InvalidArgument

from gatehouse.server.ext_authz_routes import Action, Request, RouteFileError, RouteMap, from_settings, load, parse
from google.protobuf import struct_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
TENANT = "0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c"

MAPPING = f"""defaults:
  tenant: [{{claim: tenant_id}}, {{header: x-tenant-id}}]
  subject: {{type: user, id: {{claim: [user, id]}}}}
routes:
  - path: /healthz
    action: skip
  - prefix: /public/
    methods: [get]
    action: allow
  - template: /v1/invoices/{{id}}
    methods: [GET, HEAD]
    permission: invoice.read
  - template: /v1/invoices/{{id}}
    permission: invoice.write
  - template: /v1/tenants/{{tenant}}/*/reports/**
    permission: report.read
    tenant: {{param: tenant}}
    subject: {{type: service, id: {{header: x-service}}}}
    scope: {{value: emea/de}}
"""


def routes() -> RouteMap:
    return parse(MAPPING, "routes.yaml")


@pytest.mark.parametrize(
    ("method", "path", "line", "params"),
    [
        ("GET", "/healthz", 5, {}),
        ("POST", "/healthz?probe=1", 5, {}),
        ("GET", "/public/logo.png", 7, {}),
        ("GET", "/public/", 7, {}),
        ("GET", "/v1/invoices/42", 10, {"id": "42"}),
        ("HEAD", "/v1/invoices/42?expand=lines#top", 10, {"id": "42"}),
        ("DELETE", "/v1/invoices/42", 13, {"id": "42"}),  # first match wins: the GET route does not take DELETE
        ("GET", "/v1/tenants/t1/eu/reports", 15, {"tenant": "t1"}),  # ** matches nothing too
        ("GET", "/v1/tenants/t1/eu/reports/2026/q1", 15, {"tenant": "t1"}),
    ],
)
def test_the_first_matching_route_decides(method: str, path: str, line: int, params: dict[str, str]) -> None:
    found = routes().route(method, path)
    assert found is not None
    route, got = found
    assert (route.line, got) == (line, params)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/public/logo.png"),  # methods limit the route
        ("GET", "/healthz/"),  # exact means exact
        ("GET", "/v1/invoices/"),  # {id} needs a non-empty segment
        ("GET", "/v1/invoices/42/lines"),  # one segment, not more
        ("GET", "/v1/invoices"),
        ("GET", "/v1/tenants/t1//reports"),  # * needs a non-empty segment too
        ("GET", "/publicity"),
    ],
)
def test_no_route_matches(method: str, path: str) -> None:
    assert routes().route(method, path) is None


def test_patterns_that_look_odd_but_can_match_are_taken() -> None:
    for pattern in ("prefix: /.well-known/", "prefix: /a/.", "path: /a/", "template: /a/{id}/", "prefix: /a%2Fb"):
        parse(BASE.replace("path: /x", pattern), "routes.yaml")


def test_prefix_is_a_string_prefix_as_in_envoy() -> None:
    mapping = parse("routes:\n  - prefix: /api\n    action: allow\n")
    assert mapping.route("GET", "/apis") is not None and mapping.route("GET", "/ap") is None


def test_values_come_from_the_first_source_present() -> None:
    route = routes().routes[2]
    assert route.action is Action.CHECK and route.permission == "invoice.read"
    assert route.tenant is not None and route.subject_id is not None and route.subject_type is not None
    claims = struct_pb2.Struct()
    claims.update({"tenant_id": TENANT, "user": {"id": "alice"}, "n": 7})
    from_token = Request({"x-tenant-id": "other"}, {}, claims)
    assert route.tenant.read(from_token) == TENANT
    assert route.subject_id.read(from_token) == "alice"
    assert route.subject_type.read(from_token) == "user"
    no_token = Request({"x-tenant-id": "other"}, {}, None)
    assert route.tenant.read(no_token) == "other"
    assert route.subject_id.read(no_token) is None
    assert route.scope is None


def test_claims_read_nested_and_integral_numbers_only() -> None:
    mapping = parse(
        "routes:\n  - path: /x\n    permission: a.read\n    tenant: {claim: n}\n"
        "    subject: {type: user, id: {claim: [org, ids]}}\n"
    )
    route = mapping.routes[0]
    assert route.tenant is not None and route.subject_id is not None
    claims = struct_pb2.Struct()
    claims.update({"n": 7, "org": {"ids": ["a", "b"]}})
    request = Request({}, {}, claims)
    assert route.tenant.read(request) == "7"
    # A claim the token carries in a shape no value comes from is an error naming it,
    # never taken as absent: a list, a fraction, a path through a string, an empty string.
    with pytest.raises(InvalidArgument, match="claim org.ids"):
        route.subject_id.read(request)
    claims.update({"n": 7.5, "org": "flat"})
    for value in (route.tenant, route.subject_id):
        with pytest.raises(InvalidArgument):
            value.read(request)
    claims.update({"n": ""})
    with pytest.raises(InvalidArgument, match="claim n"):
        route.tenant.read(request)
    assert route.tenant.read(Request({}, {}, struct_pb2.Struct())) is None  # absent: None


def test_a_route_overrides_the_defaults() -> None:
    route = routes().routes[4]
    assert route.tenant is not None and route.subject_type is not None and route.scope is not None
    request = Request({"x-service": "billing"}, {"tenant": TENANT}, None)
    assert route.tenant.read(request) == TENANT
    assert route.subject_type.read(request) == "service"
    assert route.scope.read(request) == "emea/de"


def test_the_example_mapping_loads() -> None:
    mapping = load(str(ROOT / "deploy" / "envoy" / "gatehouse-routes.yaml"))
    assert mapping.remove_headers == ("authorization",)
    assert mapping.jwt_payload_in_metadata == "jwt_payload"
    found = mapping.route("GET", "/v1/invoices/42")
    assert found is not None and found[0].permission == "invoice.read"


ATTRIBUTES = f"""defaults:
  tenant: {{value: {TENANT}}}
  subject: {{type: user, id: {{claim: sub}}}}
  attributes:
    subject: {{dept: {{claim: [org, dept]}}}}
    context: {{client: [{{header: x-client}}, {{value: unknown}}]}}
routes:
  - template: /docs/{{id}}
    permission: doc.edit
    attributes:
      resource: {{owner: {{header: x-owner}}, id: {{param: id}}}}
  - path: /other
    permission: doc.read
"""


def test_attributes_are_read_per_kind_and_a_routes_own_replace_the_defaults() -> None:
    mapping = parse(ATTRIBUTES, "routes.yaml")
    own, inherited = mapping.routes
    assert [(a.kind, a.name, a.field) for a in own.attributes] == [
        ("resource", "owner", "resource.attributes.owner"), ("resource", "id", "resource.attributes.id"),
    ]
    assert [(a.kind, a.name, a.field) for a in inherited.attributes] == [
        ("subject", "dept", "subject.attributes.dept"), ("context", "client", "context.client"),
    ]
    claims = struct_pb2.Struct()
    claims.update({"sub": "alice", "org": {"dept": "finance"}})
    request = Request({"x-owner": "alice"}, {"id": "d1"}, claims)
    assert [a.value.read(request) for a in own.attributes] == ["alice", "d1"]
    assert [a.value.read(request) for a in inherited.attributes] == ["finance", "unknown"]
    assert [a.value.read(Request({}, {}, None)) for a in own.attributes] == [None, None]


BASE = "routes:\n  - path: /x\n    permission: a.read\n    tenant: {header: t}\n    subject: {type: user, id: {header: u}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("routes: [\n", "line 2: not valid YAML"),
        ("routes: []\n", "line 1: routes: must be a non-empty list"),
        ("defaults: {}\n", "routes: is required"),
        ("rutes: []\n", "line 1: rutes: unknown key"),
        (BASE + "    permision: a.read\n", "line 6: routes[0].permision: unknown key"),
        (BASE + "    permission: b.read\n", "line 6: routes[0].permission: given twice"),
        (BASE.replace("a.read", "Invoice.Read"), "line 3: routes[0].permission: must be dot-separated"),
        (BASE.replace("path: /x", "template: /x/{id}/{id}"), "line 2: routes[0].template: {id} appears twice"),
        (BASE.replace("path: /x", "template: /x/a{id}"), "line 2: routes[0].template: 'a{id}'"),
        (BASE.replace("path: /x", "template: /x/**/y"), "** may only be the last segment"),
        (BASE.replace("path: /x", "path: x"), "line 2: routes[0].path: must start with /"),
        (BASE.replace("path: /x", "path: /x\n    prefix: /y"), "line 2: routes[0]: needs exactly one of path, prefix, template"),
        (BASE.replace("{header: t}", "{param: tenant}"), "line 4: routes[0].tenant.param: the route's template has no {tenant}"),
        (BASE.replace("{header: t}", "{value: ACME}"), "line 4: routes[0].tenant.value: must be a tenant id"),
        (BASE.replace("{header: t}", "{header: t, claim: t}"), "line 4: routes[0].tenant: must name exactly one"),
        (BASE.replace("{header: t}", "[]"), "line 4: routes[0].tenant: must name at least one source"),
        (BASE.replace("type: user", "type: 'a b'"), "line 5: routes[0].subject.type: must be 1-128 characters"),
        (BASE + "    scope: {value: /emea}\n", "line 6: routes[0].scope.value: must be empty or /-separated"),
        (BASE + "    methods: [FETCH]\n", "line 6: routes[0].methods: 'FETCH' is no HTTP method"),
        (BASE + "    action: permit\n", "line 6: routes[0].action: must be check, allow, skip or deny"),
        (BASE + "    action: allow\n", "line 3: routes[0].permission: means nothing with action allow"),
        ("routes:\n  - path: /x\n    permission: a.read\n", "line 2: routes[0].tenant: is required here or in defaults"),
        (
            "defaults:\n  tenant: {param: tenant}\n  subject: {type: user, id: {header: u}}\n"
            "routes:\n  - path: /x\n    permission: a.read\n",
            "line 5: routes[0].tenant: reads {tenant} (from defaults), which this route's path lacks",
        ),
        (BASE + "    attributes: {action: {m: {header: m}}}\n", "line 6: routes[0].attributes.action: unknown key"),
        (BASE + "    attributes: {resource: [a]}\n", "line 6: routes[0].attributes.resource: must be a mapping"),
        (BASE + "    attributes: {resource: {'a b': {header: m}}}\n", "line 6: routes[0].attributes.resource.a b: must be 1-128"),
        (BASE + "    attributes: {resource: {a: {param: id}}}\n", "line 6: routes[0].attributes.resource.a.param: the route's template has no {id}"),
        (BASE + "    attributes: {resource: {a: {header: m}, a: {header: n}}}\n", "line 6: routes[0].attributes.resource.a: given twice"),
        (BASE + "    attributes: {resource: {a: {bogus: m}}}\n", "routes[0].attributes.resource.a.bogus: unknown key"),
        ("routes:\n  - path: /x\n    action: deny\n    attributes: {}\n", "line 4: routes[0].attributes: means nothing with action deny"),
        (
            "defaults:\n  attributes: {context: {id: {param: id}}}\n  tenant: {header: t}\n"
            "  subject: {type: user, id: {header: u}}\nroutes:\n  - path: /x\n    permission: a.read\n",
            "line 6: routes[0].attributes.context.id: reads {id} (from defaults), which this route's path lacks",
        ),
        ("remove_headers: ['bad header']\nroutes: [{path: /, action: allow}]\n", "line 1: remove_headers[0]: must be an HTTP header name"),
        # Patterns no request can ever match (a route's path is matched without its query
        # string and only in normal form): refused, not left to deny silently.
        (BASE.replace("path: /x", "path: /x?page=1"), "line 2: routes[0].path: never matches: a query string or fragment"),
        (BASE.replace("path: /x", "prefix: /x#top"), "line 2: routes[0].prefix: never matches: a query string or fragment"),
        (BASE.replace("path: /x", "prefix: /public/../x"), "line 2: routes[0].prefix: never matches: a path holding a . or .."),
        (BASE.replace("path: /x", "template: /x//{id}"), "line 2: routes[0].template: never matches: a path holding an empty"),
        (BASE.replace("path: /x", 'path: "/x\\0"'), "line 2: routes[0].path: never matches: a control character"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(text: str, expected: str) -> None:
    with pytest.raises(RouteFileError) as error:
        parse(text, "routes.yaml")
    assert str(error.value).startswith("routes.yaml"), str(error.value)
    assert expected in str(error.value), str(error.value)


def test_a_bad_file_stops_the_server_with_its_message(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - path: /x\n    action: maybe\n")
    with pytest.raises(SystemExit) as error:
        from_settings(str(path))
    assert str(error.value) == (
        f"gatehouse: GATEHOUSE_EXT_AUTHZ_CONFIG (--ext-authz-config): {path} line 3: routes[0].action:"
        " must be check, allow, skip or deny"
    )
    with pytest.raises(SystemExit, match="cannot read"):
        from_settings(str(tmp_path / "missing.yaml"))
    assert from_settings("") is None
