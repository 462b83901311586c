"""The AuthZEN 1.0 endpoints against a real sidecar, Postgres and Redis.

The request bodies marked "spec" are the specification's own examples
(openid/authzen api/authorization-api-1_0.md), verbatim but for what Gatehouse needs
to know and the spec leaves to the PDP: the tenant (the X-Gatehouse-Tenant header) and,
where decisions differ per resource, each resource's scope (resource.properties.scope).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from typing import Any

import pytest

from google.protobuf.struct_pb2 import Struct, Value

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, user
from tests.server.authzen_client import (  # noqa: F401  (fixtures)
    EVALUATION,
    EVALUATIONS,
    METADATA,
    AuthZenClient,
    admin,
    authzen_sidecar,
    http,
)

ALICE = {"type": "user", "id": "alice@example.com"}
UNKNOWN_TENANT = "00000000-0000-0000-0000-000000000000"


def tenant_header(tenant_id: str) -> dict[str, str]:
    return {"X-Gatehouse-Tenant": tenant_id}


def with_scopes(body: dict[str, Any], scopes: dict[str, str]) -> dict[str, Any]:
    """`body` with `properties.scope` on every resource whose id `scopes` names."""
    body = copy.deepcopy(body)
    resources = [body.get("resource")] + [item.get("resource") for item in body.get("evaluations", [])]
    for resource in resources:
        if resource is not None and resource["id"] in scopes:
            resource.setdefault("properties", {})["scope"] = scopes[resource["id"]]
    return body


async def library(admin: Client, unique: str, *grants: tuple[str, list[str]]) -> str:
    """A tenant where alice@example.com holds a role of `permissions` at each `scope`."""
    tenant = await admin.tenant(f"authzen-{unique}")
    for index, (scope, permissions) in enumerate(grants):
        await admin.grant(tenant.id, user("alice@example.com"), f"r{index}", scope, permissions)
    return tenant.id


# --- The specification's examples ------------------------------------------------------

SPEC_EVALUATION_REQUEST = {  # "The Access Evaluation API Request", Example
    "subject": {"type": "user", "id": "alice@example.com"},
    "resource": {"type": "account", "id": "123"},
    "action": {"name": "can_read", "properties": {"method": "GET"}},
    "context": {"time": "1985-10-26T01:22-07:00"},
}


async def test_spec_access_evaluation_example(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id = await library(admin, unique, ("", ["can_read"]))
    reply = await http.post(EVALUATION, SPEC_EVALUATION_REQUEST, tenant_header(tenant_id))
    assert reply.status == 200
    assert reply.body["decision"] is True
    assert reply.body["context"]["reason"] == "DECISION_REASON_ALLOWED"
    assert reply.body["context"]["granted_by_role"] == "r0"
    assert reply.body["context"]["granted_at_scope"] == ""
    # The HTTPS binding's example: the request id comes back ("Request Identification").
    reply = await http.post(
        EVALUATION,
        {"subject": ALICE, "resource": {"type": "todo", "id": "1"}, "action": {"name": "can_read"},
         "context": {"time": "1985-10-26T01:22-07:00"}},
        {**tenant_header(tenant_id), "X-Request-ID": "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"},
    )
    assert reply.status == 200 and reply.body["decision"] is True
    assert reply.headers["X-Request-ID"] == "bfe9eb29-ab87-4ca3-be83-a1d5d8305716"
    denied = await http.post(EVALUATION, {**SPEC_EVALUATION_REQUEST, "action": {"name": "can_write"}}, tenant_header(tenant_id))
    assert denied.status == 200
    assert denied.body == {"decision": False, "context": {"reason": "DECISION_REASON_NO_GRANT", "revision": reply.body["context"]["revision"]}}


SPEC_THREE_WITHOUT_DEFAULTS = {  # "The Access Evaluations API Request": no default values
    "evaluations": [
        {"subject": ALICE, "action": {"name": "can_read"}, "resource": {"type": "document", "id": doc},
         "context": {"time": "2024-05-31T15:22-07:00"}}
        for doc in ("boxcarring.md", "subject-search.md", "resource-search.md")
    ]
}
SPEC_DEFAULT_SUBJECT_AND_CONTEXT = {  # "Default values", first example
    "subject": ALICE,
    "context": {"time": "2024-05-31T15:22-07:00"},
    "evaluations": [
        {"action": {"name": "can_read"}, "resource": {"type": "document", "id": doc}}
        for doc in ("boxcarring.md", "subject-search.md", "resource-search.md")
    ],
}
SPEC_DEFAULT_ACTION_OVERRIDDEN = {  # "Default values", second example; also the HTTPS binding's
    "subject": ALICE,
    "context": {"time": "2024-05-31T15:22-07:00"},
    "action": {"name": "can_read"},
    "evaluations": [
        {"resource": {"type": "document", "id": "boxcarring.md"}},
        {"resource": {"type": "document", "id": "subject-search.md"}},
        {"action": {"name": "can_edit"}, "resource": {"type": "document", "id": "resource-search.md"}},
    ],
}
DOC_SCOPES = {"boxcarring.md": "docs/public", "subject-search.md": "docs/private", "resource-search.md": "docs/public"}


@pytest.mark.parametrize(
    "example, decisions",
    [
        (SPEC_THREE_WITHOUT_DEFAULTS, [True, False, True]),
        (SPEC_DEFAULT_SUBJECT_AND_CONTEXT, [True, False, True]),
        # The HTTPS binding's response example: true, false, false (the third asks can_edit).
        (SPEC_DEFAULT_ACTION_OVERRIDDEN, [True, False, False]),
    ],
    ids=["no-defaults", "default-subject-context", "default-action-overridden"],
)
async def test_spec_access_evaluations_examples(
    admin: Client, http: AuthZenClient, unique: str, example: dict[str, Any], decisions: list[bool]
) -> None:
    tenant_id = await library(admin, unique, ("docs/public", ["can_read"]))
    reply = await http.post(EVALUATIONS, with_scopes(example, DOC_SCOPES), tenant_header(tenant_id))
    assert reply.status == 200
    assert [answer["decision"] for answer in reply.body["evaluations"]] == decisions
    assert "decision" not in reply.body  # "it is RECOMMENDED that the decision key of the response be omitted"
    reasons = [answer["context"]["reason"] for answer in reply.body["evaluations"]]
    assert reasons == ["DECISION_REASON_ALLOWED" if d else "DECISION_REASON_NO_GRANT" for d in decisions]


def semantic_example(semantic: str) -> dict[str, Any]:
    """"Example: Evaluate `read` action for three documents using all three semantics"."""
    return {
        "subject": ALICE,
        "action": {"name": "read"},
        "options": {"evaluations_semantic": semantic},
        "evaluations": [{"resource": {"type": "document", "id": doc}} for doc in ("1", "2", "3")],
    }


@pytest.mark.parametrize(
    "semantic, decisions",
    [
        ("execute_all", [True, False, True]),  # the spec's responses, decision by decision
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
async def test_spec_evaluations_semantics_examples(
    admin: Client, http: AuthZenClient, unique: str, semantic: str, decisions: list[bool]
) -> None:
    tenant_id = await library(admin, unique, ("docs/1", ["read"]), ("docs/3", ["read"]))
    body = with_scopes(semantic_example(semantic), {"1": "docs/1", "2": "docs/2", "3": "docs/3"})
    reply = await http.post(EVALUATIONS, body, tenant_header(tenant_id))
    assert reply.status == 200
    assert [answer["decision"] for answer in reply.body["evaluations"]] == decisions


async def test_semantics_short_circuit_where_the_first_deny_or_permit_is(
    admin: Client, http: AuthZenClient, unique: str
) -> None:
    tenant_id = await library(admin, unique, ("docs/1", ["read"]))
    first_denied = with_scopes(semantic_example("deny_on_first_deny"), {"1": "docs/2", "2": "docs/1", "3": "docs/1"})
    reply = await http.post(EVALUATIONS, first_denied, tenant_header(tenant_id))
    assert [a["decision"] for a in reply.body["evaluations"]] == [False]
    none_denied = with_scopes(semantic_example("deny_on_first_deny"), {"1": "docs/1", "2": "docs/1", "3": "docs/1"})
    reply = await http.post(EVALUATIONS, none_denied, tenant_header(tenant_id))
    assert [a["decision"] for a in reply.body["evaluations"]] == [True, True, True]
    last_permitted = with_scopes(semantic_example("permit_on_first_permit"), {"1": "docs/2", "2": "x", "3": "docs/1"})
    reply = await http.post(EVALUATIONS, last_permitted, tenant_header(tenant_id))
    assert [a["decision"] for a in reply.body["evaluations"]] == [False, False, True]
    none_permitted = with_scopes(semantic_example("permit_on_first_permit"), {"1": "a", "2": "b", "3": "c"})
    reply = await http.post(EVALUATIONS, none_permitted, tenant_header(tenant_id))
    assert [a["decision"] for a in reply.body["evaluations"]] == [False, False, False]
    # No options (and options without the key, or with others only): execute_all.
    for options in (None, {}, {"another_option": "value"}):
        body = with_scopes(semantic_example("x"), {"1": "docs/2", "2": "docs/2", "3": "docs/1"})
        if options is None:
            del body["options"]
        else:
            body["options"] = options
        reply = await http.post(EVALUATIONS, body, tenant_header(tenant_id))
        assert reply.status == 200, reply.body
        assert [a["decision"] for a in reply.body["evaluations"]] == [False, False, True]


async def test_items_override_each_default_key_whole(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id = await library(admin, unique, ("eu", ["doc.read"]))
    other = await admin.tenant(f"authzen-other-{unique}")
    await admin.grant(other.id, user("bob"), "all", "", ["*"])
    body = {
        "subject": {"type": "user", "id": "bob"},
        "action": {"name": "doc.read"},
        "resource": {"type": "doc", "id": "d", "properties": {"tenant_id": tenant_id, "scope": "eu/fr"}},
        "context": {"min_revision": 10**9},
        "evaluations": [
            {"subject": ALICE, "context": {}},  # alice, default action and resource; its context drops min_revision
            {"subject": ALICE, "resource": {"type": "doc", "id": "d", "properties": {"tenant_id": tenant_id, "scope": "us"}}, "context": {}},
            {"resource": {"type": "doc", "id": "d", "properties": {"tenant_id": other.id}}, "context": None},
            {"subject": ALICE, "action": {"name": "doc.write"}, "context": {"time": "now"}},
        ],
    }
    reply = await http.post(EVALUATIONS, body)
    assert reply.status == 200, reply.body
    answers = reply.body["evaluations"]
    assert [a["decision"] for a in answers] == [True, False, False, False]
    assert answers[1]["context"]["reason"] == "DECISION_REASON_NO_GRANT"
    # null = absent: item 2 took the default context, whose min_revision no tenant has reached.
    assert answers[2]["context"]["error"]["status"] == 412
    assert answers[2]["context"]["error"]["reason"] == "GATEHOUSE_REVISION_NOT_REACHED"
    assert answers[3]["context"]["reason"] == "DECISION_REASON_NO_GRANT"


async def test_empty_or_absent_evaluations_answer_as_one_evaluation(
    admin: Client, http: AuthZenClient, unique: str
) -> None:
    tenant_id = await library(admin, unique, ("", ["can_read"]))
    for extra in ({}, {"evaluations": []}, {"evaluations": None}):
        reply = await http.post(EVALUATIONS, {**SPEC_EVALUATION_REQUEST, **extra}, tenant_header(tenant_id))
        assert reply.status == 200
        assert reply.body["decision"] is True and "evaluations" not in reply.body
    missing = await http.post(EVALUATIONS, {"subject": ALICE, "evaluations": []}, tenant_header(tenant_id))
    assert missing.status == 400
    assert {v["field"] for v in missing.body["error"]["violations"]} == {"action", "resource"}


# --- Tenants, scopes, min_revision -----------------------------------------------------


async def test_unknown_tenant_is_a_decision_and_a_bad_tenant_id_a_400(http: AuthZenClient) -> None:
    unknown = await http.post(EVALUATION, SPEC_EVALUATION_REQUEST, tenant_header(UNKNOWN_TENANT))
    assert unknown.status == 200
    assert unknown.body == {"decision": False, "context": {"reason": "DECISION_REASON_TENANT_NOT_FOUND", "revision": 0}}
    bad = await http.post(EVALUATION, SPEC_EVALUATION_REQUEST, tenant_header("acme"))
    assert bad.status == 400
    assert [v["field"] for v in bad.body["error"]["violations"]] == ["X-Gatehouse-Tenant"]
    in_property = copy.deepcopy(SPEC_EVALUATION_REQUEST)
    in_property["resource"]["properties"] = {"tenant_id": "ACME"}
    bad = await http.post(EVALUATION, in_property)
    assert [v["field"] for v in bad.body["error"]["violations"]] == ["resource.properties.tenant_id"]
    none = await http.post(EVALUATION, SPEC_EVALUATION_REQUEST)
    assert none.status == 400
    assert none.body["error"]["violations"] == [
        {"field": "resource.properties.tenant_id", "description": "is required (or the X-Gatehouse-Tenant header)"}
    ]


async def test_tenant_in_properties_and_header_must_agree(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id = await library(admin, unique, ("", ["can_read"]))
    body = copy.deepcopy(SPEC_EVALUATION_REQUEST)
    body["resource"]["properties"] = {"tenant_id": tenant_id}
    same = await http.post(EVALUATION, body, tenant_header(tenant_id))
    assert same.status == 200 and same.body["decision"] is True
    other = await http.post(EVALUATION, body, tenant_header(UNKNOWN_TENANT))
    assert other.status == 400
    assert other.body["error"]["violations"][0]["field"] == "resource.properties.tenant_id"


async def test_min_revision_reads_your_writes_and_refuses_the_future(
    admin: Client, http: AuthZenClient, unique: str
) -> None:
    tenant = await admin.tenant(f"authzen-ryw-{unique}")
    await admin.grant(tenant.id, user("bob"), "reader", "", ["doc.read"])
    body = {"subject": {"type": "user", "id": "bob"}, "action": {"name": "doc.write"},
            "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": tenant.id}}}
    assert (await http.post(EVALUATION, body)).body["decision"] is False  # cached now
    revision = await admin.grant(tenant.id, user("bob"), "writer", "", ["doc.write"])
    after = await http.post(EVALUATION, {**body, "context": {"min_revision": revision}})
    assert after.body["decision"] is True and after.body["context"]["revision"] >= revision

    future = await http.post(EVALUATION, {**body, "context": {"min_revision": revision + 1000}}, {"X-Request-ID": "f1"})
    assert future.status == 412
    assert future.headers["X-Request-ID"] == "f1"
    error = future.body["error"]
    assert error["reason"] == "GATEHOUSE_REVISION_NOT_REACHED" and error["status"] == 412
    assert error["metadata"]["current_revision"] == str(after.body["context"]["revision"])
    # In a batch, that is the item's own error, closed; the others are answered.
    batch = await http.post(EVALUATIONS, {**body, "evaluations": [{"context": {"min_revision": revision + 1000}}, {}]})
    assert batch.status == 200
    first, second = batch.body["evaluations"]
    assert first["decision"] is False and first["context"]["error"]["status"] == 412
    assert second["decision"] is True
    # deny_on_first_deny: an error is a denial ("any denial (error, or decision false)").
    batch = await http.post(EVALUATIONS, {**body, "options": {"evaluations_semantic": "deny_on_first_deny"},
                                          "evaluations": [{"context": {"min_revision": revision + 1000}}, {}]})
    assert len(batch.body["evaluations"]) == 1


# --- Bad input: 400 naming the field, 413, never 500 -----------------------------------

GOOD = {"subject": {"type": "user", "id": "u"}, "action": {"name": "doc.read"},
        "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": UNKNOWN_TENANT}}}


def edit(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at dotted `path` replaced (value `...`: removed)."""
    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return body


BAD_FIELDS = [
    # missing ("If a required attribute in the information model is omitted ... Bad Request")
    ("subject", ..., "subject", "is required"),
    ("action", ..., "action", "is required"),
    ("resource", ..., "resource", "is required"),
    ("subject.type", ..., "subject.type", "is required"),
    ("subject.id", ..., "subject.id", "is required"),
    ("action.name", ..., "action.name", "is required"),
    ("resource.type", ..., "resource.type", "is required"),
    ("resource.id", ..., "resource.id", "is required"),
    ("subject", None, "subject", "is required"),
    # wrong JSON types, at every level
    ("subject", "alice", "subject", "must be an object"),
    ("subject", ["user", "alice"], "subject", "must be an object"),
    ("action", "read", "action", "must be an object"),
    ("resource", 7, "resource", "must be an object"),
    ("context", "now", "context", "must be an object"),
    ("subject.type", 1, "subject.type", "must be a string"),
    ("subject.id", True, "subject.id", "must be a string"),
    ("subject.properties", [], "subject.properties", "must be an object"),
    ("action.name", {"n": 1}, "action.name", "must be a string"),
    ("action.properties", "x", "action.properties", "must be an object"),
    ("resource.id", 123, "resource.id", "must be a string"),
    ("resource.properties", "x", "resource.properties", "must be an object"),
    ("resource.properties.tenant_id", 5, "resource.properties.tenant_id", "must be a string"),
    ("resource.properties.scope", ["a"], "resource.properties.scope", "must be a string"),
    ("context", {"min_revision": "5"}, "context.min_revision", "must be an integer"),
    ("context", {"min_revision": 5.0}, "context.min_revision", "must be an integer"),
    ("context", {"min_revision": True}, "context.min_revision", "must be an integer"),
    # values Gatehouse cannot ask about (engine/validate.py's words)
    ("subject.id", "", "subject.id", "is required"),
    ("subject.id", "alice smith", "subject.id", "must be 1-128 characters of [A-Za-z0-9._:@-]"),
    ("subject.type", "x" * 129, "subject.type", "must be 1-128 characters of [A-Za-z0-9._:@-]"),
    ("action.name", "Read", "action.name", "must be dot-separated segments of [a-z0-9_-]+"),
    ("action.name", "", "action.name", "is required"),
    ("resource.id", "a/b", "resource.id", "must be 1-128 characters of [A-Za-z0-9._:@-]"),
    ("resource.properties.scope", "a//b", "resource.properties.scope", None),
    ("resource.properties.scope", "../x", "resource.properties.scope", None),
    ("resource.properties.tenant_id", "", "resource.properties.tenant_id", "is required"),
    ("context", {"min_revision": -1}, "context.min_revision", "must not be negative"),
    ("context", {"min_revision": 2**63}, "context.min_revision", "must be at most 9223372036854775807"),
]


@pytest.mark.parametrize("path, value, field, description", BAD_FIELDS)
async def test_every_bad_field_is_a_400_naming_it(
    http: AuthZenClient, path: str, value: Any, field: str, description: str | None
) -> None:
    body = edit(path, value)
    for endpoint, prefix, request in (
        (EVALUATION, "", body),
        (EVALUATIONS, "", body),
        (EVALUATIONS, "evaluations[1].", {"evaluations": [GOOD, body]}),
    ):
        reply = await http.post(endpoint, request, {"X-Request-ID": "bad-1"})
        assert reply.status == 400, (endpoint, reply.body)
        assert reply.headers["X-Request-ID"] == "bad-1"
        error = reply.body["error"]
        assert error["status"] == 400 and error["reason"] == "GATEHOUSE_INVALID_ARGUMENT"
        violations = {v["field"]: v["description"] for v in error["violations"]}
        assert prefix + field in violations, (endpoint, violations)
        if description is not None:
            # a missing entity of an item may also come as a top-level default: it says so
            assert violations[prefix + field].startswith(description)


async def test_every_bad_field_of_a_request_is_named_at_once(http: AuthZenClient) -> None:
    body = {"subject": {"type": "user", "id": ""}, "action": {"name": "X"},
            "resource": {"type": "doc", "id": 1, "properties": {"tenant_id": "t", "scope": "/"}},
            "context": {"min_revision": -2}}
    reply = await http.post(EVALUATION, body)
    assert reply.status == 400
    assert [v["field"] for v in reply.body["error"]["violations"]] == [
        "subject.id", "action.name", "resource.id", "resource.properties.scope", "context.min_revision",
        "resource.properties.tenant_id",
    ]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"evaluations": "all"}, "evaluations"),
        ({"evaluations": {"0": GOOD}}, "evaluations"),
        ({"evaluations": [GOOD, 1]}, "evaluations[1]"),
        ({"evaluations": [GOOD, []]}, "evaluations[1]"),
        ({"evaluations": [GOOD], "options": "execute_all"}, "options"),
        ({"evaluations": [GOOD], "options": {"evaluations_semantic": "first"}}, "options.evaluations_semantic"),
        ({"evaluations": [GOOD], "options": {"evaluations_semantic": 1}}, "options.evaluations_semantic"),
        ({"evaluations": [{"subject": GOOD["subject"]}]}, "evaluations[0].action"),
        ({"evaluations": [GOOD] * 1001}, "evaluations"),
        ({"subject": "bad", "evaluations": [{}, {}]}, "subject"),
    ],
)
async def test_bad_evaluations_requests(http: AuthZenClient, body: dict[str, Any], field: str) -> None:
    reply = await http.post(EVALUATIONS, body)
    assert reply.status == 400, reply.body
    assert field in [v["field"] for v in reply.body["error"]["violations"]]


async def test_a_bad_default_is_named_once_not_per_item(http: AuthZenClient) -> None:
    reply = await http.post(EVALUATIONS, {**GOOD, "subject": {"type": "user", "id": "a b"}, "evaluations": [{}] * 50})
    assert reply.status == 400
    assert reply.body["error"]["violations"] == [
        {"field": "subject.id", "description": "must be 1-128 characters of [A-Za-z0-9._:@-]"}
    ]


async def test_a_batch_of_1000_is_answered(http: AuthZenClient) -> None:
    reply = await http.post(EVALUATIONS, {"evaluations": [GOOD] * 1000})
    assert reply.status == 200 and len(reply.body["evaluations"]) == 1000


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"{'subject': 1}", "not valid JSON"),
        (b'{"subject": NaN}', "not valid JSON"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b"\xff\xfe{}", "must be UTF-8"),
        (b"[]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"12", "must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"subject": {"type": "user", "type": "admin"}}', "appears twice"),
        (b'{"context": {"min_revision": 1' + b"0" * 5000 + b"}}", "not valid JSON"),
    ],
)
async def test_malformed_bodies_are_400(http: AuthZenClient, data: bytes, fragment: str) -> None:
    for endpoint in (EVALUATION, EVALUATIONS):
        reply = await http.send("POST", endpoint, data, {"Content-Type": "application/json"})
        assert reply.status == 400, reply.body
        assert fragment in reply.body["error"]["message"]


async def test_content_type_must_be_json(http: AuthZenClient) -> None:
    body = json.dumps(GOOD).encode()
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}):
        reply = await http.send("POST", EVALUATION, body, headers)
        assert reply.status == 400
        assert reply.body["error"]["violations"][0]["field"] == "Content-Type"
    charset = await http.send("POST", EVALUATION, body, {"Content-Type": "application/json; charset=utf-8"})
    assert charset.status == 200


async def test_oversize_bodies_are_413_declared_or_streamed(http: AuthZenClient) -> None:
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    reply = await http.send("POST", EVALUATIONS, big, {"Content-Type": "application/json", "X-Request-ID": "big"})
    assert reply.status == 413
    assert reply.body["error"]["reason"] == "GATEHOUSE_REQUEST_TOO_LARGE"
    assert reply.headers["X-Request-ID"] == "big"

    async def chunks() -> Any:  # no Content-Length: refused once the limit is passed
        for _ in range(40):
            yield b"x" * 65536

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {http.key}"}
    async with http.session.post(http.url + EVALUATION, data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert (await response.json())["error"]["reason"] == "GATEHOUSE_REQUEST_TOO_LARGE"
    # Just under the limit is read (and refused for what it says, not its size).
    fits = b'{"pad": "' + b"x" * (1024 * 1024 - 100) + b'"}'
    reply = await http.send("POST", EVALUATION, fits, {"Content-Type": "application/json"})
    assert reply.status == 400 and reply.body["error"]["violations"][0]["field"] == "subject"


async def test_unknown_paths_and_methods_answer_json(http: AuthZenClient) -> None:
    missing = await http.send("GET", "/access/v1/search/subject")
    assert missing.status == 404 and missing.body["error"]["status"] == 404
    wrong = await http.send("GET", EVALUATION, headers={"X-Request-ID": "m"})
    assert wrong.status == 405 and wrong.headers["Allow"] == "POST" and wrong.headers["X-Request-ID"] == "m"
    wrong = await http.send("POST", METADATA, b"{}", {"Content-Type": "application/json"})
    assert wrong.status == 405


# --- The metadata document ------------------------------------------------------------


async def test_metadata_document(http: AuthZenClient, authzen_sidecar: Sidecar) -> None:
    reply = await http.send("GET", METADATA, headers={"X-Request-ID": "meta"})
    assert reply.status == 200 and reply.headers["X-Request-ID"] == "meta"
    base = http.url
    assert reply.body == {
        "policy_decision_point": base,
        "access_evaluation_endpoint": base + "/access/v1/evaluation",
        "access_evaluations_endpoint": base + "/access/v1/evaluations",
    }
    assert "max-age" in reply.headers["Cache-Control"]
    # "policy_decision_point ... MUST be identical to the Policy Decision Point identifier
    # value into which the well-known URI string was inserted": the Host asked for.
    named = await http.send("GET", METADATA, headers={"Host": "pdp.example.com:8443"})
    assert named.body["policy_decision_point"] == "http://pdp.example.com:8443"
    assert named.body["access_evaluations_endpoint"] == "http://pdp.example.com:8443/access/v1/evaluations"


# --- Same answers as CheckAccess ------------------------------------------------------


async def test_authzen_answers_equal_check_access_answers(admin: Client, http: AuthZenClient, unique: str) -> None:
    """A differential test: random questions about two tenants (one suspended), asked
    through CheckAccess and through both AuthZEN endpoints, get the same decision,
    reason, revision, role and scope."""
    rng = random.Random(unique)
    first = await admin.tenant(f"authzen-diff-a-{unique}")
    second = await admin.tenant(f"authzen-diff-b-{unique}")
    people = ["ann", "ben", "cat", "dan"]
    scopes = ["", "eu", "eu/de", "eu/de/berlin", "us", "us/ny"]
    permissions = ["invoice.read", "invoice.write", "invoice.line.edit", "report.read", "doc.list"]
    patterns = ["invoice.*", "*", "report.read", "doc.list", "invoice.read"]
    revision = 0
    for tenant in (first, second):
        for person in people[:3]:
            for n in range(rng.randint(1, 2)):
                revision = max(revision, await admin.grant(
                    tenant.id, user(person), f"{person}-{n}-{rng.randint(0, 9)}", rng.choice(scopes), [rng.choice(patterns)]
                ))
    await admin.admin.SuspendTenant(admin_pb2.TenantTransitionRequest(tenant_id=second.id, reason="diff"), metadata=admin.auth)
    tenants = [first.id, second.id, UNKNOWN_TENANT]
    questions = [
        (rng.choice(tenants), rng.choice(people), rng.choice(permissions), rng.choice(scopes)) for _ in range(120)
    ]
    expected = []
    for tenant_id, person, permission, scope in questions:
        answer = await admin.access.CheckAccess(access_pb2.CheckAccessRequest(
            tenant_id=tenant_id, subject=user(person), permission=permission,
            resource=common_pb2.Resource(type="invoice", id="i1", scope=scope),
        ))
        context: dict[str, Any] = {"reason": access_pb2.DecisionReason.Name(answer.reason), "revision": answer.revision}
        if answer.allowed:
            context["granted_by_role"] = answer.granted_by_role
            context["granted_at_scope"] = answer.granted_at_scope
        if answer.feature:
            context["feature"] = answer.feature
        expected.append({"decision": answer.allowed, "context": context})

    def evaluation(tenant_id: str, person: str, permission: str, scope: str) -> dict[str, Any]:
        return {"subject": {"type": "user", "id": person}, "action": {"name": permission},
                "resource": {"type": "invoice", "id": "i1", "properties": {"tenant_id": tenant_id, "scope": scope}}}

    singles = [(await http.post(EVALUATION, evaluation(*q))).body for q in questions]
    assert singles == expected
    batch = await http.post(EVALUATIONS, {"evaluations": [evaluation(*q) for q in questions]})
    assert batch.body["evaluations"] == expected
    assert {a["decision"] for a in expected} == {True, False}  # the questions asked both ways


# --- Attributes: properties and context feed conditions -------------------------------

OWNER_ONLY = "resource.attributes.owner == subject.id"


async def conditional_library(admin: Client, unique: str, condition: str) -> tuple[str, int]:
    """A tenant where alice@example.com holds `doc.*` under `condition`; and its revision."""
    tenant = await admin.tenant(f"authzen-cond-{unique}")
    await admin.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="editor", permissions=["doc.*"]), metadata=admin.auth
    )
    await admin.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("alice@example.com")),
                                metadata=admin.auth)
    reply = await admin.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("alice@example.com"), role="editor",
                                    condition=condition),
        metadata=admin.auth,
    )
    return tenant.id, reply.revision


def doc(owner: Any = ..., **properties: Any) -> dict[str, Any]:
    """A resource doc/d1; `owner` as a property unless left out (`...`)."""
    given = dict(properties) if owner is ... else {"owner": owner, **properties}
    return {"type": "doc", "id": "d1", "properties": given}


def ask(resource: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"subject": ALICE, "action": {"name": "doc.edit"}, "resource": resource, **more}


async def test_resource_properties_satisfy_or_contradict_a_condition(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id, revision = await conditional_library(admin, unique, OWNER_ONLY)
    header = tenant_header(tenant_id)
    context = {"min_revision": revision}
    mine = await http.post(EVALUATION, ask(doc("alice@example.com"), context=context), header)
    assert mine.status == 200, mine.body
    assert mine.body["decision"] is True
    assert mine.body["context"]["reason"] == "DECISION_REASON_ALLOWED"
    assert mine.body["context"]["granted_by_role"] == "editor"
    theirs = await http.post(EVALUATION, ask(doc("bob"), context=context), header)
    assert theirs.body == {"decision": False, "context": {"reason": "DECISION_REASON_NO_GRANT", "revision": revision}}
    # Absent, or null ("properties with a value of null SHOULD be omitted"): CONDITIONAL,
    # naming what to pass, as CheckAccess's missing_attributes.
    conditional = {"decision": False, "context": {"reason": "DECISION_REASON_CONDITIONAL", "revision": revision,
                                                  "missing_attributes": ["resource.attributes.owner"]}}
    for resource in (doc(), doc(None), {"type": "doc", "id": "d1", "properties": None}, {"type": "doc", "id": "d1"}):
        unknown = await http.post(EVALUATION, ask(resource, context=context), header)
        assert unknown.body == conditional, resource
    # The reserved keys keep their meaning and are not attributes.
    tenant_only = await http.post(
        EVALUATION, ask(doc(tenant_id=tenant_id, scope="x"), context=context), {}
    )
    assert tenant_only.body == conditional
    # Each answer equals CheckAccess's with the same attributes.
    for owner, allowed in (("alice@example.com", True), ("bob", False)):
        answer = await admin.access.CheckAccess(access_pb2.CheckAccessRequest(
            tenant_id=tenant_id, subject=user("alice@example.com"), permission="doc.edit",
            resource=common_pb2.Resource(type="doc", id="d1", attributes=Struct(fields={"owner": Value(string_value=owner)})),
        ))
        assert answer.allowed is allowed


async def test_subject_properties_and_context_feed_conditions(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id, revision = await conditional_library(
        admin, unique,
        'subject.attributes.level >= 3 && context.ip.startsWith("10.") && resource.type == "doc" && resource.id == "d1"',
    )
    header = tenant_header(tenant_id)

    def body(level: Any, ip: Any, resource_id: str = "d1") -> dict[str, Any]:
        subject = {**ALICE, "properties": {"level": level}}
        return {"subject": subject, "action": {"name": "doc.read"}, "resource": {"type": "doc", "id": resource_id},
                "context": {"min_revision": revision, "ip": ip}}

    assert (await http.post(EVALUATION, body(3, "10.1.2.3"), header)).body["decision"] is True
    assert (await http.post(EVALUATION, body(2, "10.1.2.3"), header)).body["context"]["reason"] == "DECISION_REASON_NO_GRANT"
    assert (await http.post(EVALUATION, body(5, "192.168.0.1"), header)).body["context"]["reason"] == "DECISION_REASON_NO_GRANT"
    assert (await http.post(EVALUATION, body(5, "10.0.0.1", "d2"), header)).body["context"]["reason"] == "DECISION_REASON_NO_GRANT"
    missing = await http.post(EVALUATION, body(None, None), header)
    assert missing.body["context"]["reason"] == "DECISION_REASON_CONDITIONAL"
    assert missing.body["context"]["missing_attributes"] == ["context.ip", "subject.attributes.level"]
    # min_revision is Gatehouse's, not the context's; action.properties are ignored.
    only_revision = {**body(3, None), "action": {"name": "doc.read", "properties": {"ip": "10.0.0.1"}}}
    assert (await http.post(EVALUATION, only_revision, header)).body["context"]["missing_attributes"] == ["context.ip"]


async def test_batch_defaults_carry_properties_and_items_replace_them(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id, revision = await conditional_library(admin, unique, OWNER_ONLY + ' && context.via == "web"')
    request = {
        "subject": ALICE,
        "action": {"name": "doc.edit"},
        "resource": doc("alice@example.com"),
        "context": {"min_revision": revision, "via": "web"},
        "evaluations": [
            {},  # every default: allowed
            {"resource": doc("bob")},  # the item's resource, with its properties
            {"resource": {"type": "doc", "id": "d1"}},  # replaces the default's properties: none
            {"context": {"via": "web"}},  # replaces the default's context (min_revision with it)
            {"context": {"via": "app", "min_revision": revision}},
            {"context": {"min_revision": revision}},  # no `via`: CONDITIONAL
            {"context": None, "resource": None},  # null: the defaults
        ],
    }
    reply = await http.post(EVALUATIONS, request, tenant_header(tenant_id))
    assert reply.status == 200, reply.body
    answers = [(a["decision"], a["context"]["reason"], a["context"].get("missing_attributes")) for a in reply.body["evaluations"]]
    assert answers == [
        (True, "DECISION_REASON_ALLOWED", None),
        (False, "DECISION_REASON_NO_GRANT", None),
        (False, "DECISION_REASON_CONDITIONAL", ["resource.attributes.owner"]),
        (True, "DECISION_REASON_ALLOWED", None),
        (False, "DECISION_REASON_NO_GRANT", None),
        (False, "DECISION_REASON_CONDITIONAL", ["context.via"]),
        (True, "DECISION_REASON_ALLOWED", None),
    ]


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


RAW_1E400 = "<the number 1e400>"  # json.dumps writes inf as Infinity, no JSON; the body has 1e400
BAD_FACTS = [
    # (where in an evaluation: properties or context; what it holds; the field named; why)
    ("subject.properties", {"n": 10**400}, "subject.properties['n']", "must be a finite number"),
    ("resource.properties", {"n": RAW_1E400}, "resource.properties['n']", "must be a finite number"),  # read as inf
    ("context", {"s": "\ud800"}, "context['s']", "must be valid Unicode (no lone surrogate)"),
    ("context", {"s": ["ok", "a\x00b"]}, "context['s'][1]", "must not contain NUL (U+0000)"),
    ("subject.properties", {"k\x00": 1}, "subject.properties key", "must not contain NUL (U+0000)"),
    ("resource.properties", {"deep": nested(40)}, "resource.properties['deep']", "nests deeper than 32 levels"),
    ("context", {"deep": nested(200)}, "context['deep']", "nests deeper than 32 levels"),
    ("context", {"many": list(range(300))}, "context", "at most 256 values in attributes and context together"),
    ("subject.properties", {"big": "x" * 17_000}, "subject.properties",
     "at most 16384 bytes (encoded) in attributes and context together"),
]


@pytest.mark.parametrize("where, value, field, description", BAD_FACTS)
async def test_bad_properties_and_context_are_a_400_naming_them(
    http: AuthZenClient, where: str, value: Any, field: str, description: str
) -> None:
    entity = where.split(".")[0]
    body = edit(where, value if entity == "context" else {**GOOD[entity].get("properties", {}), **value})
    for endpoint, prefix, request in (
        (EVALUATION, "", body),
        (EVALUATIONS, "evaluations[2].", {"evaluations": [GOOD, GOOD, body]}),
    ):
        data = json.dumps(request).replace(json.dumps(RAW_1E400), "1e400").encode()
        reply = await http.send("POST", endpoint, data, {"Content-Type": "application/json"})
        assert reply.status == 400, (endpoint, reply.body)
        assert reply.body["error"]["reason"] == "GATEHOUSE_INVALID_ARGUMENT"
        (violation,) = reply.body["error"]["violations"]
        assert violation["description"] == description
        # JSON's spelling; too deep a value is named down to where it passed the bound
        assert violation["field"] == prefix + field or "deep" in field and violation["field"].startswith(prefix + field + "['a']")


async def test_limits_count_a_questions_three_maps_together(admin: Client, http: AuthZenClient, unique: str) -> None:
    tenant_id, revision = await conditional_library(admin, unique, OWNER_ONLY)
    header = tenant_header(tenant_id)
    # 256 values in all is the bound (the owner, 85 + 85 + 85 more): answered.
    thirds = {f"k{i}": i for i in range(85)}
    body = ask(doc("alice@example.com", **thirds), context={"min_revision": revision, **thirds})
    body["subject"] = {**ALICE, "properties": thirds}
    assert (await http.post(EVALUATION, body, header)).body["decision"] is True
    body["subject"]["properties"] = {**thirds, "one": "more"}
    over = await http.post(EVALUATION, body, header)
    assert over.status == 400
    assert [v["description"] for v in over.body["error"]["violations"]] == [
        "at most 256 values in attributes and context together"
    ]
    # A default's values count in each item that uses it, named once.
    batch = {"subject": body["subject"], "action": {"name": "doc.edit"}, "resource": body["resource"],
             "evaluations": [{"context": body["context"]}, {"context": body["context"]}]}
    reply = await http.post(EVALUATIONS, batch, header)
    assert reply.status == 400
    assert [v["field"] for v in reply.body["error"]["violations"]] == ["evaluations[0].context", "evaluations[1].context"]
    # The reserved keys and nulls are no values.
    del body["subject"]["properties"]["one"]
    body["subject"]["properties"].update({"gone": None, "also": None})
    assert (await http.post(EVALUATION, body, header)).body["decision"] is True


# --- Counted, shed with the hot class ---------------------------------------------------


async def test_requests_are_counted_by_endpoint_and_status(http: AuthZenClient, authzen_sidecar: Sidecar) -> None:
    def count(endpoint: str, status: int) -> float:
        return authzen_sidecar.stats.snapshot().get(f"authzen.requests{{endpoint={endpoint},status={status}}}", 0)

    before = (count("evaluation", 200), count("evaluations", 400), count("configuration", 200), count("other", 404))
    await http.post(EVALUATION, GOOD)
    await http.post(EVALUATIONS, {"evaluations": 1})
    await http.send("GET", METADATA)
    await http.send("GET", "/nowhere")
    after = (count("evaluation", 200), count("evaluations", 400), count("configuration", 200), count("other", 404))
    assert [b - a for a, b in zip(before, after)] == [1, 1, 1, 1]
    from gatehouse.server.metrics import SERIES, split_key

    assert {split_key(key)[0] for key in authzen_sidecar.stats.snapshot()} <= SERIES.keys()


async def test_at_the_hot_bound_evaluations_are_shed_with_429(http: AuthZenClient, authzen_sidecar: Sidecar) -> None:
    gate = authzen_sidecar.admission.gates["hot"]
    shed = gate.shed
    gate.in_flight += gate.limit  # the bound reached, as by that many calls in flight
    try:
        reply = await http.post(EVALUATION, GOOD, {"X-Request-ID": "busy"})
        metadata = await http.send("GET", METADATA)  # exempt, like health checks on gRPC
    finally:
        gate.in_flight -= gate.limit
    assert reply.status == 429 and reply.headers["Retry-After"] == "1" and reply.headers["X-Request-ID"] == "busy"
    assert reply.body["error"]["reason"] == "GATEHOUSE_OVERLOADED"
    assert gate.shed == shed + 1
    assert metadata.status == 200
    assert (await http.post(EVALUATION, GOOD)).status == 200


async def _send_head(url: str, headers: str, first_bytes: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose head and first body bytes are sent, the rest of its body never."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {EVALUATION} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n{headers}\r\n".encode() + first_bytes
    )
    await writer.drain()
    return reader, writer


async def test_a_body_still_arriving_holds_no_admission_and_no_caller_is_401_before_it(
    http: AuthZenClient, authzen_sidecar: Sidecar
) -> None:
    """The hot class's bound is shared with AccessService and ext_authz: a client that
    sends a body slowly (or never) must not hold a place in it, nor may anyone without a
    credential make the listener wait for a body at all."""
    gate = authzen_sidecar.admission.gates["hot"]
    left = 1
    gate.in_flight += gate.limit - left  # one place left
    opened: list[asyncio.StreamWriter] = []
    try:
        # No credential: refused on its head alone, while its body is still to come.
        reader, writer = await _send_head(http.url, "", b"{")
        opened.append(writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        assert head.startswith(b"HTTP/1.1 401 "), head
        # A caller whose body is still arriving holds no place: the one left is free.
        _, writer = await _send_head(http.url, f"Authorization: Bearer {http.key}\r\n", b'{"subject": ')
        opened.append(writer)
        for _ in range(3):
            reply = await http.post(EVALUATION, GOOD)
            assert reply.status == 200, reply.body
    finally:
        gate.in_flight -= gate.limit - left
        for writer in opened:
            writer.close()
