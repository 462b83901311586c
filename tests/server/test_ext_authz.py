"""Envoy's ext_authz Check, served by a real sidecar (this process, real Postgres and
Redis), asked the way Envoy asks: a CheckRequest describing an HTTP request. Envoy
itself in front of `gatehouse serve`: tests/e2e/test_envoy.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from gatehouse.envoy_api.envoy.config.core.v3 import base_pb2
from gatehouse.envoy_api.envoy.service.auth.v3 import external_auth_pb2
from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse_client.v1 import admin_pb2
from tests.certs import Pki, issue_leaf
from tests.client import Client, make_client, user

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
ROUTES = ROOT / "deploy" / "envoy" / "gatehouse-routes.yaml"
CHECK = "/envoy.service.auth.v3.Authorization/Check"
Check = Callable[..., Awaitable[external_auth_pb2.CheckResponse]]


@dataclasses.dataclass
class ExtAuthz:
    client: Client  # admin writes through the same sidecar, so its cache sees them at once
    check: Check
    sidecar: Sidecar


@contextlib.asynccontextmanager
async def serving(settings: Settings, routes: str, operator_token: str) -> AsyncIterator[ExtAuthz]:
    """A sidecar of its own whose ext_authz mapping is the file `routes`."""
    running = Sidecar(dataclasses.replace(settings, ext_authz_config=routes))
    await running.start()
    client = make_client(running.addresses[0], operator_token)
    call = client.channel.unary_unary(
        CHECK,
        request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )

    async def check(
        method: str, path: str, headers: dict[str, str] | None = None, claims: dict[str, object] | None = None
    ) -> external_auth_pb2.CheckResponse:
        response: external_auth_pb2.CheckResponse = await call(check_request(method, path, headers, claims), timeout=10)
        return response

    try:
        yield ExtAuthz(client, check, running)
    finally:
        await client.channel.close()
        await running.stop(grace=0)


@pytest.fixture(scope="module")
async def ext_authz(sidecar_settings: Settings, operator_token: str) -> AsyncIterator[ExtAuthz]:
    async with serving(sidecar_settings, str(ROUTES), operator_token) as ext:
        yield ext


def check_request(
    method: str, path: str, headers: dict[str, str] | None = None, claims: dict[str, object] | None = None
) -> external_auth_pb2.CheckRequest:
    """What Envoy sends: the HTTP request, and jwt_authn's verified claims when given."""
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = method, path
    http.headers.update(headers or {})
    if claims is not None:
        jwt = struct_pb2.Struct()
        jwt.update({"jwt_payload": claims})
        request.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].CopyFrom(jwt)
    return request


def added(response: external_auth_pb2.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


def body(response: external_auth_pb2.CheckResponse) -> dict[str, object]:
    assert response.denied_response.headers[0].header.value == "application/json"
    decoded: dict[str, object] = json.loads(response.denied_response.body)
    return decoded


async def tenant_with_clerk(ext: ExtAuthz, slug: str) -> tuple[str, int]:
    tenant = await ext.client.tenant(slug)
    revision = await ext.client.grant(tenant.id, user("alice"), "clerk", "emea", ["invoice.read", "invoice.list"])
    return tenant.id, revision


async def test_allowed_adds_what_granted_it_and_takes_off_the_credential(ext_authz: ExtAuthz, unique: str) -> None:
    tenant_id, revision = await tenant_with_clerk(ext_authz, f"xa-ok-{unique}")
    response = await ext_authz.check(
        "GET", "/v1/invoices/42?expand=lines",
        {"authorization": "Bearer token", "x-resource-scope": "emea/de", "x-gatehouse-role": "owner",
         "x-gatehouse-admin": "1"},
        {"sub": "alice", "tenant_id": tenant_id},
    )
    assert response.status.code == code_pb2.OK and response.HasField("ok_response")
    assert added(response) == {"x-gatehouse-revision": str(revision), "x-gatehouse-role": "clerk",
                               "x-gatehouse-scope": "emea"}
    # The client's own x-gatehouse-role is overwritten (OVERWRITE_IF_EXISTS_OR_ADD), any other removed.
    assert {h.append_action for h in response.ok_response.headers} == {base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}
    assert list(response.ok_response.headers_to_remove) == ["authorization", "x-gatehouse-admin"]
    metadata = dict(response.dynamic_metadata)
    assert metadata == {"decision": "allowed", "reason": "ALLOWED", "route": "GET|HEAD /v1/invoices/{id}",
                        "tenant_id": tenant_id, "permission": "invoice.read", "revision": float(revision)}


async def test_denied_is_403_with_the_decision_reason(ext_authz: ExtAuthz, unique: str) -> None:
    tenant_id, revision = await tenant_with_clerk(ext_authz, f"xa-no-{unique}")
    claims = {"sub": "alice", "tenant_id": tenant_id}
    write = await ext_authz.check("POST", "/v1/invoices", {}, claims)
    assert write.status.code == code_pb2.PERMISSION_DENIED and write.denied_response.status.code == 403
    assert body(write) == {"allowed": False, "reason": "NO_GRANT", "message": "invoice.create denied: NO_GRANT",
                           "revision": revision}
    assert dict(write.dynamic_metadata)["reason"] == "NO_GRANT"
    elsewhere = await ext_authz.check("GET", "/v1/invoices/1", {"x-resource-scope": "apac"}, claims)
    assert body(elsewhere)["reason"] == "NO_GRANT"
    stranger = await ext_authz.check("GET", "/v1/invoices/1", {}, {"sub": "mallory", "tenant_id": tenant_id})
    assert body(stranger)["reason"] == "NOT_A_MEMBER"


async def test_no_subject_is_401_and_no_tenant_403(ext_authz: ExtAuthz, unique: str) -> None:
    tenant_id, _ = await tenant_with_clerk(ext_authz, f"xa-who-{unique}")
    anonymous = await ext_authz.check("GET", "/v1/invoices/1", {"x-tenant-id": tenant_id})
    assert anonymous.status.code == code_pb2.UNAUTHENTICATED and anonymous.denied_response.status.code == 401
    assert body(anonymous)["reason"] == "NO_SUBJECT"
    nowhere = await ext_authz.check("GET", "/v1/invoices/1", {}, {"sub": "alice"})
    assert nowhere.denied_response.status.code == 403 and body(nowhere)["reason"] == "NO_TENANT"


@pytest.mark.parametrize(
    ("headers", "claims", "field"),
    [
        ({"x-tenant-id": "0B7C9A4E-3F6D-4C1E-9A2B-5D8E7F6A1B2C"}, {"sub": "alice"},
         "tenant (claim tenant_id or header x-tenant-id)"),
        ({"x-tenant-id": "acme"}, {"sub": "alice"}, "tenant (claim tenant_id or header x-tenant-id)"),
        ({"x-tenant-id": "0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c"}, {"sub": "al ice"}, "subject.id (claim sub)"),
        ({"x-tenant-id": "0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c", "x-resource-scope": "emea//de"}, {"sub": "alice"},
         "scope (header x-resource-scope)"),
    ],
)
async def test_a_malformed_value_is_a_400_naming_it(
    ext_authz: ExtAuthz, headers: dict[str, str], claims: dict[str, object], field: str
) -> None:
    response = await ext_authz.check("GET", "/v1/invoices/1", headers, claims)
    assert response.status.code == code_pb2.INVALID_ARGUMENT and response.denied_response.status.code == 400
    decoded = body(response)
    assert decoded["reason"] == "INVALID_ARGUMENT"
    assert [f["field"] for f in decoded["fields"]] == [field]  # type: ignore[attr-defined]


@pytest.mark.parametrize("claim", ["", ["0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c"], True, {"id": "x"}, None, 1.5])
async def test_a_tenant_claim_in_an_unusable_shape_is_400_not_the_clients_header(
    ext_authz: ExtAuthz, unique: str, claim: object
) -> None:
    """The identity provider put a tenant_id claim in the token that names no tenant: the
    request is refused, never decided for the tenant of the x-tenant-id header the client
    set (the mapping's next source), where alice is a member."""
    tenant_id, _ = await tenant_with_clerk(ext_authz, f"xa-claim-{unique}")
    response = await ext_authz.check(
        "GET", "/v1/invoices/1", {"x-tenant-id": tenant_id}, {"sub": "alice", "tenant_id": claim}
    )
    assert response.status.code == code_pb2.INVALID_ARGUMENT and response.denied_response.status.code == 400
    assert [f["field"] for f in body(response)["fields"]] == ["claim tenant_id"]  # type: ignore[attr-defined]
    # Without the claim at all, the header is the mapping's next source, as documented.
    absent = await ext_authz.check(
        "GET", "/v1/invoices/1", {"x-tenant-id": tenant_id, "x-resource-scope": "emea"}, {"sub": "alice"}
    )
    assert absent.status.code == code_pb2.OK


async def test_route_actions_and_unmatched_requests(ext_authz: ExtAuthz) -> None:
    skip = await ext_authz.check("GET", "/healthz", {"authorization": "Bearer t", "x-gatehouse-role": "owner"})
    assert skip.status.code == code_pb2.OK
    assert list(skip.ok_response.headers_to_remove) == ["x-gatehouse-role"]  # the credential stays
    public = await ext_authz.check("GET", "/public/logo.png", {"authorization": "Bearer t"})
    assert public.status.code == code_pb2.OK and list(public.ok_response.headers_to_remove) == ["authorization"]
    assert dict(public.dynamic_metadata)["reason"] == "ALLOWED_BY_ROUTE"
    internal = await ext_authz.check("GET", "/internal/metrics")
    assert internal.denied_response.status.code == 403 and body(internal)["reason"] == "ROUTE_DENIED"
    unknown = await ext_authz.check("GET", "/v2/anything")
    assert unknown.denied_response.status.code == 403 and body(unknown)["reason"] == "NO_ROUTE"
    counted = ext_authz.sidecar.stats.snapshot()
    assert counted["ext_authz.checks{outcome=NO_ROUTE}"] >= 1 and counted["ext_authz.checks{outcome=SKIPPED}"] >= 1


@pytest.mark.parametrize(
    "path",
    [
        "/public/../internal/metrics",  # an allow route's prefix, then up to a denied one
        "/public/./logo.png",
        "/public/%2e%2e/internal/metrics",  # the same dots, percent-encoded, any case
        "/public/%2E./internal/metrics",
        "/public/..%2Finternal/metrics",  # a slash that a decoding server reads as one
        "/public/..%5cinternal/metrics",
        "/public/..\\internal\\metrics",  # a backslash, which some servers read as /
        "/public//../internal/metrics",
        "/healthz/..",
        "//internal/metrics",  # an empty segment, which a server merging slashes drops
        "/v1/invoices//42",
        "/v1/tenants/0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c/reports/../../6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f/reports/q",
    ],
)
async def test_a_path_not_in_normal_form_is_refused_whatever_it_matches(ext_authz: ExtAuthz, path: str) -> None:
    """The service behind Envoy may resolve dot segments, decoded or back slashes and
    empty segments: the request it serves is then not the one a route decided on
    (/public/../internal/metrics is /internal/metrics to it). Such a path is refused,
    never matched as written."""
    claims = {"sub": "alice", "tenant_id": "0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c"}
    response = await ext_authz.check("GET", path, {}, claims)
    assert response.status.code == code_pb2.INVALID_ARGUMENT and not response.HasField("ok_response"), path
    assert response.denied_response.status.code == 400
    assert body(response)["reason"] == "PATH_NOT_NORMALIZED"
    assert dict(response.dynamic_metadata)["decision"] == "denied"


async def test_dots_and_slashes_that_resolve_to_nothing_else_are_matched(ext_authz: ExtAuthz) -> None:
    for path in ("/public/logo.v2..png", "/public/...", "/public/", "/public/a%2Fb", "/public/x?next=/../internal/",
                 "/public/%252e%252e/x"):
        response = await ext_authz.check("GET", path)
        assert response.status.code == code_pb2.OK, path


async def test_suspended_tenant_reads_but_does_not_write(ext_authz: ExtAuthz, unique: str) -> None:
    tenant_id, _ = await tenant_with_clerk(ext_authz, f"xa-susp-{unique}")
    await ext_authz.client.grant(tenant_id, user("alice"), "writer", "", ["invoice.create"])
    claims = {"sub": "alice", "tenant_id": tenant_id}
    assert (await ext_authz.check("POST", "/v1/invoices", {}, claims)).status.code == code_pb2.OK
    await ext_authz.client.admin.SuspendTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant_id, reason="test"), metadata=ext_authz.client.auth
    )
    write = await ext_authz.check("POST", "/v1/invoices", {}, claims)
    assert body(write)["reason"] == "TENANT_SUSPENDED"
    read = await ext_authz.check("GET", "/v1/invoices/1", {"x-resource-scope": "emea"}, claims)
    assert read.status.code == code_pb2.OK


async def test_bytes_that_are_no_check_request_are_invalid_argument(ext_authz: ExtAuthz) -> None:
    call = ext_authz.client.channel.unary_unary(CHECK)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(b"\xff\xff\xff", timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_not_served_without_a_mapping(sidecar_settings: Settings) -> None:
    running = Sidecar(dataclasses.replace(sidecar_settings, ext_authz_config=""))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.addresses[0]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await channel.unary_unary(CHECK)(b"", timeout=5)
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await running.stop(grace=0)


async def test_served_on_the_unix_socket_too(
    sidecar_settings: Settings, tmp_path: pathlib.Path, ext_authz: ExtAuthz, unique: str
) -> None:
    tenant_id, _ = await tenant_with_clerk(ext_authz, f"xa-unix-{unique}")
    socket_path = tmp_path / "gh.sock"
    running = Sidecar(dataclasses.replace(
        sidecar_settings, listen="", unix_socket=str(socket_path), ext_authz_config=str(ROUTES)
    ))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
            call = channel.unary_unary(
                CHECK, request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                response_deserializer=external_auth_pb2.CheckResponse.FromString,
            )
            request = check_request("GET", "/v1/invoices", {"x-tenant-id": tenant_id, "x-resource-scope": "emea"},
                                    {"sub": "alice"})
            response = await call(request, timeout=10)
            assert response.status.code == code_pb2.OK and added(response)["x-gatehouse-role"] == "clerk"
    finally:
        await running.stop(grace=0)


async def test_a_store_that_cannot_answer_is_a_grpc_error_envoy_fails_closed_on(
    sidecar_settings: Settings, unique: str
) -> None:
    """Nothing cached and Postgres unreachable: no CheckResponse at all but UNAVAILABLE
    (what Envoy with failure_mode_allow: false turns into its status_on_error)."""
    running = Sidecar(dataclasses.replace(
        sidecar_settings, database_url="postgresql://gatehouse_app@127.0.0.1:1/gatehouse",
        redis_prefix=f"{sidecar_settings.redis_prefix}down{unique}", ext_authz_config=str(ROUTES),
    ))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.addresses[0]) as channel:
            call = channel.unary_unary(CHECK, request_serializer=external_auth_pb2.CheckRequest.SerializeToString)
            request = check_request("GET", "/v1/invoices", {"x-tenant-id": "0b7c9a4e-3f6d-4c1e-9a2b-5d8e7f6a1b2c"},
                                    {"sub": "alice"})
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(request, timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(grace=0)


async def test_with_callers_required_envoy_must_be_a_caller_of_the_tenant(
    sidecar_settings: Settings, ext_authz: ExtAuthz, operator_key: str, unique: str
) -> None:
    """The credential is Envoy's own gRPC metadata, never the described request's headers;
    a tenant key asks only about its own tenant."""
    client = ext_authz.client
    mine, _ = await tenant_with_clerk(ext_authz, f"xa-callers-{unique}")
    other, _ = await tenant_with_clerk(ext_authz, f"xa-callers-other-{unique}")
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=mine, name="checker", permissions=["gatehouse.access.check"]),
        metadata=client.auth,
    )
    tenant_key = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=mine, name="envoy", permissions=["gatehouse.access.check"],
                                      roles=[admin_pb2.RoleGrant(role="checker")]),
        metadata=client.auth,
    )
    running = Sidecar(dataclasses.replace(sidecar_settings, caller_credentials="required", ext_authz_config=str(ROUTES)))
    await running.start()
    try:
        async with grpc.aio.insecure_channel(running.addresses[0]) as channel:
            call = channel.unary_unary(
                CHECK, request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                response_deserializer=external_auth_pb2.CheckResponse.FromString,
            )

            def ask(tenant_id: str) -> external_auth_pb2.CheckRequest:
                # The described request carries a bearer token too: it is not Envoy's.
                return check_request("GET", "/v1/invoices", {"authorization": f"Bearer {tenant_key.secret}",
                                                              "x-resource-scope": "emea"},
                                     {"sub": "alice", "tenant_id": tenant_id})

            envoy = (("authorization", f"Bearer {tenant_key.secret}"),)
            for metadata, tenant_id, code in [
                ((), mine, grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer gh_0123456789abcdef_" + "A" * 43),), mine, grpc.StatusCode.UNAUTHENTICATED),
                (envoy, other, grpc.StatusCode.PERMISSION_DENIED),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await call(ask(tenant_id), metadata=metadata, timeout=10)
                assert error.value.code() == code, (metadata, tenant_id)
            with pytest.raises(grpc.aio.AioRpcError) as error:  # no route to a tenant: still only for callers
                await call(check_request("GET", "/healthz"), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # A caller that may not ask at all (a key for config only, the bootstrap key) gets
            # no answer either, even where no tenant is named: its OK would let requests through.
            config_only = await client.admin.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(name=f"config-{unique}", permissions=["gatehouse.config.read"]),
                metadata=client.auth,
            )
            for secret in (config_only.secret, operator_key):
                for request in (check_request("GET", "/public/logo.png"), check_request("GET", "/healthz"),
                                check_request("GET", "/v2/nowhere"), ask(mine)):
                    with pytest.raises(grpc.aio.AioRpcError) as error:
                        await call(request, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
                    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, request.attributes.request.http.path
            answer = await call(ask(mine), metadata=envoy, timeout=10)
            assert answer.status.code == code_pb2.OK and added(answer)["x-gatehouse-role"] == "clerk"
    finally:
        await running.stop(grace=0)


async def test_served_over_mutual_tls_to_a_listed_identity(
    sidecar_settings: Settings, ext_authz: ExtAuthz, pki: Pki, tmp_path: pathlib.Path, unique: str
) -> None:
    """Envoy's mTLS certificate as its credential: its SPIFFE id in
    GATEHOUSE_CALLER_IDENTITIES_FILE, callers required, on a TLS listener."""
    tenant_id, _ = await tenant_with_clerk(ext_authz, f"xa-mtls-{unique}")
    identities = tmp_path / "callers.yaml"
    identities.write_text(
        "callers:\n  - identity: spiffe://cluster.local/ns/mesh/sa/envoy\n    permissions: [gatehouse.access.check]\n"
    )
    running = Sidecar(dataclasses.replace(
        sidecar_settings, listen="localhost:0", tls_cert_file=str(pki.server_cert_file),
        tls_key_file=str(pki.server_key_file), tls_client_ca_file=str(pki.ca_file), caller_credentials="required",
        caller_identities_file=str(identities), ext_authz_config=str(ROUTES),
    ))
    await running.start()
    target = "localhost:" + running.addresses[0].rsplit(":", 1)[1]
    request = check_request("GET", "/v1/invoices", {"x-resource-scope": "emea"}, {"sub": "alice", "tenant_id": tenant_id})
    try:
        for present, expected in (
            (issue_leaf(pki.ca, uri="spiffe://cluster.local/ns/mesh/sa/envoy"), None),
            (issue_leaf(pki.ca, uri="spiffe://cluster.local/ns/mesh/sa/other"), grpc.StatusCode.UNAUTHENTICATED),
        ):
            async with grpc.aio.secure_channel(target, pki.credentials(present=present)) as channel:
                call = channel.unary_unary(
                    CHECK, request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                    response_deserializer=external_auth_pb2.CheckResponse.FromString,
                )
                if expected is None:
                    answer = await call(request, timeout=10)
                    assert answer.status.code == code_pb2.OK and added(answer)["x-gatehouse-role"] == "clerk"
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as error:
                        await call(request, timeout=10)
                    assert error.value.code() == expected
    finally:
        await running.stop(grace=0)


# --- Attributes read by the mapping feed conditions ------------------------------------

ATTRIBUTE_ROUTES = """defaults:
  tenant: {claim: tenant_id}
  subject: {type: user, id: {claim: sub}}
  attributes:
    subject: {dept: {claim: dept}}
routes:
  - template: /docs/{id}
    permission: doc.edit
    attributes:
      resource: {owner: {header: x-owner}, id: {param: id}}
      context: {client: {header: x-client}}
  - template: /ledger/{id}
    permission: ledger.read
"""


@pytest.fixture(scope="module")
async def attributed(
    sidecar_settings: Settings, operator_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ExtAuthz]:
    path = tmp_path_factory.mktemp("routes") / "routes.yaml"
    path.write_text(ATTRIBUTE_ROUTES)
    async with serving(sidecar_settings, str(path), operator_token) as ext:
        yield ext


async def conditional(ext: ExtAuthz, tenant_id: str, role: str, permissions: list[str], condition: str) -> int:
    client = ext.client
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=permissions), metadata=client.auth
    )
    try:
        await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=user("alice")), metadata=client.auth)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    reply = await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant_id, subject=user("alice"), role=role, condition=condition),
        metadata=client.auth,
    )
    return reply.revision


async def test_attributes_from_headers_params_and_claims_decide_conditions(attributed: ExtAuthz, unique: str) -> None:
    tenant = await attributed.client.tenant(f"xa-attr-{unique}")
    await conditional(
        attributed, tenant.id, "editor", ["doc.*"],
        'resource.attributes.owner == subject.id && resource.attributes.id.startsWith("d") && context.client == "web"',
    )
    revision = await conditional(attributed, tenant.id, "finance", ["ledger.*"], 'subject.attributes.dept == "finance"')
    claims: dict[str, object] = {"sub": "alice", "tenant_id": tenant.id}
    mine = await attributed.check("PUT", "/docs/d1", {"x-owner": "alice", "x-client": "web"}, claims)
    assert mine.status.code == code_pb2.OK, mine
    assert added(mine)["x-gatehouse-role"] == "editor"
    theirs = await attributed.check("PUT", "/docs/d1", {"x-owner": "bob", "x-client": "web"}, claims)
    assert body(theirs) == {"allowed": False, "reason": "NO_GRANT", "message": "doc.edit denied: NO_GRANT",
                            "revision": revision}
    other_id = await attributed.check("PUT", "/docs/x1", {"x-owner": "alice", "x-client": "web"}, claims)
    assert body(other_id)["reason"] == "NO_GRANT"
    # Not in the request: CONDITIONAL, a denial naming what the condition needed.
    unknown = await attributed.check("PUT", "/docs/d1", {"x-client": "web", "x-owner": ""}, claims)
    assert unknown.status.code == code_pb2.PERMISSION_DENIED and unknown.denied_response.status.code == 403
    assert body(unknown) == {
        "allowed": False, "reason": "CONDITIONAL", "revision": revision,
        "message": "doc.edit denied: CONDITIONAL (missing resource.attributes.owner)",
        "missing_attributes": ["resource.attributes.owner"],
    }
    # The defaults' attributes (a claim), where the route names none of its own.
    assert (await attributed.check("GET", "/ledger/1", {}, {**claims, "dept": "finance"})).status.code == code_pb2.OK
    assert body(await attributed.check("GET", "/ledger/1", {}, {**claims, "dept": "sales"}))["reason"] == "NO_GRANT"
    assert body(await attributed.check("GET", "/ledger/1", {}, claims))["missing_attributes"] == ["subject.attributes.dept"]
    # A route's own attributes replace the defaults': /docs reads no dept.
    assert body(await attributed.check("PUT", "/docs/d1", {}, {**claims, "dept": "finance"}))["reason"] == "CONDITIONAL"


async def test_attributes_meet_check_access_rules(attributed: ExtAuthz, unique: str) -> None:
    tenant = await attributed.client.tenant(f"xa-attr-bad-{unique}")
    await conditional(attributed, tenant.id, "editor", ["doc.*"], "resource.attributes.owner == subject.id")
    claims: dict[str, object] = {"sub": "alice", "tenant_id": tenant.id}
    huge = await attributed.check("PUT", "/docs/d1", {"x-owner": "a" * 17_000}, claims)
    assert huge.status.code == code_pb2.INVALID_ARGUMENT and huge.denied_response.status.code == 400
    assert body(huge)["fields"] == [
        {"field": "resource.attributes", "description": "at most 16384 bytes (encoded) in attributes and context together"}
    ]
    nul = await attributed.check("GET", "/ledger/1", {}, {**claims, "dept": "a\x00b"})
    assert body(nul)["fields"] == [
        {"field": "subject.attributes.dept (claim dept)", "description": "must not contain NUL (U+0000)"}
    ]
    shape = await attributed.check("GET", "/ledger/1", {}, {**claims, "dept": ["a"]})
    assert body(shape)["fields"][0]["field"] == "claim dept"
