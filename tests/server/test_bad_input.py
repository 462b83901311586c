"""Bad input gets INVALID_ARGUMENT naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2

from tests.client import Client, user
from tests.server.status import details

BAD_IDS = {
    "empty": "",
    "over-long": "x" * 10_000,
    "non-ascii": "alicé",
    "control": "al\x00ice",
    "newline": "alice\n",
    "space": "al ice",
    "129 chars": "a" * 129,
}
BAD_SCOPES = {"empty segment": "a//b", "leading slash": "/a", "trailing slash": "a/", "space": "a/b c", "huge": "a/" * 5000 + "a"}
BAD_PERMISSIONS = {"empty": "", "upper": "Invoice.read", "dots": "invoice..read", "star": "invoice.*", "trailing": "invoice.", "long": "a." * 200 + "a"}
TENANT = "00000000-0000-0000-0000-000000000001"


def request(**overrides: Any) -> access_pb2.CheckAccessRequest:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "subject": common_pb2.Subject(type="user", id="alice"),
        "permission": "invoice.read",
        "resource": common_pb2.Resource(type="invoice", id="1", scope="emea/de"),
    }
    fields.update(overrides)
    return access_pb2.CheckAccessRequest(**fields)


async def invalid(call: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    error = failure.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    info, fields = details(error)
    assert info.reason == "GATEHOUSE_INVALID_ARGUMENT"
    assert fields == [field]
    assert field in error.details()


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_check_rejects_bad_ids(client: Client, bad: str) -> None:
    await invalid(client.access.CheckAccess(request(tenant_id=bad)), "tenant_id")
    await invalid(client.access.CheckAccess(request(subject=common_pb2.Subject(type="user", id=bad))), "subject.id")
    await invalid(client.access.CheckAccess(request(subject=common_pb2.Subject(type=bad, id="a"))), "subject.type")


@pytest.mark.parametrize("bad", BAD_SCOPES.values(), ids=BAD_SCOPES.keys())
async def test_check_rejects_bad_scopes(client: Client, bad: str) -> None:
    await invalid(client.access.CheckAccess(request(resource=common_pb2.Resource(scope=bad))), "resource.scope")


@pytest.mark.parametrize("bad", BAD_PERMISSIONS.values(), ids=BAD_PERMISSIONS.keys())
async def test_check_rejects_bad_permissions(client: Client, bad: str) -> None:
    await invalid(client.access.CheckAccess(request(permission=bad)), "permission")


async def test_check_rejects_negative_min_revision(client: Client) -> None:
    await invalid(client.access.CheckAccess(request(min_revision=-1)), "min_revision")


async def test_admin_bad_input_writes_nothing(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"bad-{unique}")
    auth = client.auth
    cases = [
        (client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug="Bad Slug", name="x"), metadata=auth), "slug"),
        (client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug="-x-", name="x"), metadata=auth), "slug"),
        (client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug=f"ok-{unique}-x", name=""), metadata=auth), "name"),
        (client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug=f"ok-{unique}-y", name="y", plan="no-such-plan"), metadata=auth), "plan"),
        (client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("x" * 10_000)), metadata=auth), "subject.id"),
        (client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=common_pb2.Subject(type="", id="a")), metadata=auth), "subject.type"),
        (client.admin.AssignRole(admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("a"), role="owner", scope="a//b"), metadata=auth), "scope"),
        (client.admin.AssignRole(admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("a"), role="owner", scope="/a"), metadata=auth), "scope"),
        (client.admin.CreateRole(admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="r", permissions=["Bad Perm"]), metadata=auth), "permissions[0]"),
        (client.admin.CreateRole(admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="r\u00e9", permissions=[]), metadata=auth), "name"),
        (client.admin.ListTenants(admin_pb2.ListTenantsRequest(status=99), metadata=auth), "status"),  # type: ignore[arg-type]
        (client.admin.SuspendTenant(admin_pb2.TenantTransitionRequest(tenant_id=""), metadata=auth), "tenant_id"),
        (client.admin.UpdateTenant(admin_pb2.UpdateTenantRequest(tenant_id=tenant.id, expected_revision=-5), metadata=auth), "expected_revision"),
    ]
    for call, field in cases:
        await invalid(call, field)
    after = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=auth)
    assert after.revision == tenant.revision
    listed = await client.admin.ListTenants(admin_pb2.ListTenantsRequest(page_size=1000), metadata=auth)
    assert not [t for t in listed.tenants if t.slug.startswith(f"ok-{unique}")]


async def violations(call: Any) -> list[tuple[str, str]]:
    """(field, description) of every BadRequest violation of a refused call."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                break
        else:
            await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    status = rpc_status.from_call(failure.value)  # type: ignore[arg-type]
    assert status is not None
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


async def test_every_bad_field_of_a_request_is_named(client: Client, unique: str) -> None:
    """Not just the first: an empty tenant_id and a bad scope are both reported."""
    found = await violations(client.access.CheckAccess(request(tenant_id="", resource=common_pb2.Resource(scope="a//b"))))
    assert [f for f, _ in found] == ["tenant_id", "resource.scope"]
    everything_wrong = access_pb2.CheckAccessRequest(
        tenant_id="T", subject=common_pb2.Subject(type="", id="a b"), permission="X",
        resource=common_pb2.Resource(type="é", id="\n", scope="/"), min_revision=-1,
    )
    found = await violations(client.access.CheckAccess(everything_wrong))
    assert [f for f, _ in found] == [
        "tenant_id", "subject.type", "subject.id", "permission", "resource.type", "resource.id", "resource.scope",
        "min_revision",
    ]
    batch = access_pb2.CheckAccessBatchRequest(checks=[request(), request(tenant_id=""), request(permission="")])
    found = await violations(client.access.CheckAccessBatch(batch))
    assert [f for f, _ in found] == ["checks[1].tenant_id", "checks[2].permission"]
    tenant = await client.tenant(f"many-{unique}")
    found = await violations(client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=common_pb2.Subject(), role="", scope="a/b"),
        metadata=client.auth,
    ))
    assert [f for f, _ in found] == ["subject.type", "subject.id", "role"]
    # What authorization is decided on (tenant_id; scope for Assign/RevokeRole) is checked
    # before the caller is authorized, and reported on its own.
    found = await violations(client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id="X", subject=common_pb2.Subject(), role="", scope="a/../b"),
        metadata=client.auth,
    ))
    assert [f for f, _ in found] == ["tenant_id", "scope"]
    found = await violations(client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="", permissions=["Bad"], description="\x07"),
        metadata=client.auth,
    ))
    assert [f for f, _ in found] == ["name", "permissions[0]", "description"]


async def test_hundreds_of_bad_fields_fit_in_the_trailers(client: Client) -> None:
    """The status travels in trailers (8 KiB by default): the first ten are named."""
    batch = access_pb2.CheckAccessBatchRequest(checks=[request(tenant_id="", permission="") for _ in range(500)])
    found = await violations(client.access.CheckAccessBatch(batch))
    assert len(found) == 10


async def test_one_rule_one_message_in_every_method(client: Client) -> None:
    """The same rule words its violation the same way whichever method applies it."""
    from gatehouse_client.v1 import config_pb2

    empty_tenant = [
        client.access.CheckAccess(request(tenant_id="")),
        client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[request(tenant_id="")])),
        client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id="")),
        client.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id="")),
        client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=""), metadata=client.auth),
        client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=""), metadata=client.auth),
    ]
    messages = {tuple(d for _, d in await violations(call))[0] for call in empty_tenant}
    assert messages == {"is required"}
    bad_tenant = [
        client.access.CheckAccess(request(tenant_id="acme")),
        client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id="acme")),
        client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant_id="acme"), metadata=client.auth),
        client.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(tenant_id="acme"), metadata=client.auth),
    ]
    assert len({(await violations(call))[0][1] for call in bad_tenant}) == 1
    bad_scope = [
        client.access.CheckAccess(request(resource=common_pb2.Resource(scope="a//b"))),
        client.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=TENANT, subject=user("a"), role="r", scope="a//b"), metadata=client.auth
        ),
        client.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant_id=TENANT, permissions=["*"], roles=[admin_pb2.RoleGrant(role="r", scope="a//b")]),
            metadata=client.auth,
        ),
    ]
    descriptions = set()
    for call in bad_scope:
        descriptions.update(d for f, d in await violations(call) if f.endswith("scope"))
    assert len(descriptions) == 1


async def test_audit_filters_are_exact_or_refused_never_cut_short(client: Client) -> None:
    """ListAuditEvents' actor and action filters compare whole: one longer than any name
    may be (200 printable characters) is INVALID_ARGUMENT naming it, not a filter on its
    first 200 characters (which would match another actor, and never the one asked)."""
    long = "x" * 201
    found = await violations(
        client.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(actor=long, action=long), metadata=client.auth)
    )
    assert [f for f, _ in found] == ["actor", "action"]
    found = await violations(
        client.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(actor="a\nb"), metadata=client.auth)
    )
    assert [f for f, _ in found] == ["actor"]
    exact = "y" * 200  # the longest accepted: no event has it, so none is listed
    listed = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(actor=exact, action=exact), metadata=client.auth
    )
    assert list(listed.events) == []
