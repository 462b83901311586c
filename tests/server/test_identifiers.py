"""One identity, one spelling: every identifier field of every method, walked through
every other spelling the store would accept for it, is refused with INVALID_ARGUMENT
naming the field, and changes nothing.

Why refuse rather than canonicalise: caches and remembered answers are keyed by the
request's text, tenant events name the canonical spelling, so a second spelling was a
second cache entry no event ever evicted (a revoked grant answered ALLOWED for a minute
through `T.upper()`). The same holds for scopes with `.` or `..` segments (one org unit,
two texts) and for page tokens.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2
from tests.client import Client, user
from tests.server.status import details
from tests.spellings import uuid_spellings

SERVICES = [
    access_pb2.DESCRIPTOR.services_by_name["AccessService"],
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
]


DOT_SCOPES = {
    "dot": ".",
    "dot-dot": "..",
    "parent of a grant": "emea/de/../fr",
    "leading dot-dot": "../emea",
    "trailing dot-dot": "emea/..",
    "dot inside": "emea/./de",
    "trailing dot": "emea/de/.",
}


def field_paths(descriptor: Descriptor, names: set[str], prefix: str = "", depth: int = 0) -> Iterator[str]:
    """Paths (as the server names them: `checks[0].resource.scope`) to every string field
    called one of `names`, in `descriptor` and the messages inside it."""
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING and field.name in names and not field.is_repeated:
            yield path
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.message_type.GetOptions().map_entry
            and field.message_type.full_name.startswith("gatehouse.")
            and depth < 3
        ):
            inner = f"{path}[0]." if field.is_repeated else f"{path}."
            yield from field_paths(field.message_type, names, inner, depth + 1)


def set_path(message: Any, path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        if part.endswith("[0]"):
            items = getattr(message, part[:-3])
            message = items[0] if len(items) else items.add()
        else:
            message = getattr(message, part)
    setattr(message, leaf, value)


def every_field(names: set[str]) -> list[tuple[str, str, bool, Any, str]]:
    """(service, method, server-streaming, request class, path) for every field named so."""
    found = []
    for service in SERVICES:
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            for path in field_paths(method.input_type, names):
                found.append((service.full_name, method.name, method.server_streaming, request_class, path))
    return found


async def call(client: Client, service: str, method: str, streaming: bool, request: Any) -> grpc.aio.AioRpcError:
    """Make the call with the operator's credentials; return the error it must fail with."""
    path = f"/{service}/{method}"
    try:
        if streaming:
            stream = client.channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString())(
                request, metadata=client.auth, timeout=10
            )
            async for _ in stream:
                break
        else:
            await client.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString())(
                request, metadata=client.auth, timeout=10
            )
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"{method} accepted {request}")


async def assert_refused(client: Client, service: str, method: str, streaming: bool, request: Any, path: str) -> None:
    error = await call(client, service, method, streaming, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, path, error.code(), error.details())
    _, fields = details(error)
    assert path in fields, (method, path, fields)


TENANT_FIELDS = every_field({"tenant_id"})


def test_the_walk_covers_every_method_with_a_tenant_id() -> None:
    walked = {(method, path) for _, method, _, _, path in TENANT_FIELDS}
    assert ("CheckAccess", "tenant_id") in walked
    assert ("CheckAccessBatch", "checks[0].tenant_id") in walked
    assert ("GetTenantConfig", "tenant_id") in walked
    assert ("WatchTenantConfig", "tenant_id") in walked
    admin_methods = {method for _, method, _, _, _ in TENANT_FIELDS if method not in {"CheckAccess", "CheckAccessBatch"}}
    assert len(admin_methods) >= 25, sorted(admin_methods)


async def test_every_tenant_id_field_refuses_every_other_spelling(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ids-{unique}")
    await client.grant(tenant.id, user("alice"), "acct", "emea", ["invoice.*"])
    before = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=client.auth)
    for spelling_name, spelling in uuid_spellings(tenant.id).items():
        for service, method, streaming, request_class, path in TENANT_FIELDS:
            request = request_class()
            set_path(request, path, spelling)
            await assert_refused(client, service, method, streaming, request, path)
    after = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=client.auth)
    assert after.revision == before.revision  # nothing was written


async def test_a_revocation_reaches_every_spelling(client: Client, unique: str) -> None:
    """The issue's case: checked through `T.upper()`, then revoked. Before, the upper-case
    request kept answering ALLOWED from its own cache entry for the L1 lifetime."""
    tenant = await client.tenant(f"ids-rv-{unique}")
    await client.grant(tenant.id, user("alice"), "acct", "emea", ["invoice.*"])

    def check(tenant_id: str) -> access_pb2.CheckAccessRequest:
        return access_pb2.CheckAccessRequest(
            tenant_id=tenant_id, subject=user("alice"), permission="invoice.read",
            resource=common_pb2.Resource(type="invoice", id="1", scope="emea/de"),
        )

    assert (await client.access.CheckAccess(check(tenant.id))).allowed
    for spelling in uuid_spellings(tenant.id).values():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.access.CheckAccess(check(spelling))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=spelling))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    revoked = await client.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="acct", scope="emea"),
        metadata=client.auth,
    )
    answer = await client.access.CheckAccess(check(tenant.id))
    assert not answer.allowed and answer.revision >= revoked.revision


async def test_responses_carry_the_canonical_tenant_id(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ids-out-{unique}")
    assert tenant.id == tenant.id.lower() and len(tenant.id) == 36
    config = await client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=tenant.id))
    assert config.id == tenant.id


SCOPE_FIELDS = every_field({"scope"})


def test_the_walk_covers_every_scope_field() -> None:
    walked = {(method, path) for _, method, _, _, path in SCOPE_FIELDS}
    assert {
        ("CheckAccess", "resource.scope"),
        ("CheckAccessBatch", "checks[0].resource.scope"),
        ("AssignRole", "scope"),
        ("RevokeRole", "scope"),
        ("CreateApiKey", "roles[0].scope"),
    } <= walked


@pytest.mark.parametrize("scope", DOT_SCOPES.values(), ids=DOT_SCOPES.keys())
async def test_every_scope_field_refuses_dot_segments(client: Client, unique: str, scope: str) -> None:
    tenant = await client.tenant(f"dots-{unique}-{len(scope)}-{scope.count('.')}")
    await client.grant(tenant.id, user("alice"), "acct", "emea/de", ["invoice.*"])
    for service, method, streaming, request_class, path in SCOPE_FIELDS:
        request = request_class()
        tenant_path = path.rsplit(".", 2)[0] + ".tenant_id" if path.startswith("checks[0]") else "tenant_id"
        if tenant_path in {p for p in field_paths(request.DESCRIPTOR, {"tenant_id"})}:
            set_path(request, tenant_path, tenant.id)
        set_path(request, path, scope)
        await assert_refused(client, service, method, streaming, request, path)
    answer = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant.id), metadata=client.auth
    )
    assert [a.scope for a in answer.assignments] == ["emea/de"]  # nothing was written


async def test_key_ids_have_one_spelling(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ids-key-{unique}")
    key = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="k", permissions=["*"]), metadata=client.auth
    )
    for spelling in (key.key.id.upper(), f" {key.key.id}", key.key.id + "\n", "0x" + key.key.id):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.admin.RevokeApiKey(
                admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=spelling), metadata=client.auth
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(refused.value)[1] == ["key_id"]
    listed = await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant_id=tenant.id), metadata=client.auth)
    assert [k.revoked_at.seconds for k in listed.keys] == [0]  # still live


def other_spellings_of_token(token: str) -> dict[str, str]:
    """Texts the old decoder read as the same page token."""
    key = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    spaced = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
    return {
        "padded": token + "=" * (-len(token) % 4 or 4),
        "stray character": token[:2] + "!" + token[2:],
        "newline": token + "\n",
        "json spacing": spaced,
    }


async def test_page_tokens_have_one_spelling(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ids-page-{unique}")
    for name in ("a", "b", "c"):
        await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user(name)), metadata=client.auth)
    first = await client.admin.ListMembers(
        admin_pb2.ListMembersRequest(tenant_id=tenant.id, page_size=1), metadata=client.auth
    )
    token = first.next_page_token
    assert token
    second = await client.admin.ListMembers(
        admin_pb2.ListMembersRequest(tenant_id=tenant.id, page_size=1, page_token=token), metadata=client.auth
    )
    assert second.members[0].subject.id == "b"
    spellings = other_spellings_of_token(token)
    assert spellings["json spacing"] != token
    for spelling in spellings.values():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.admin.ListMembers(
                admin_pb2.ListMembersRequest(tenant_id=tenant.id, page_size=1, page_token=spelling), metadata=client.auth
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, spelling
        assert details(refused.value)[1] == ["page_token"]
