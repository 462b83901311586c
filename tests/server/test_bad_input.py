"""Bad input gets INVALID_ARGUMENT naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from gatehouse.v1 import access_pb2, admin_pb2, common_pb2

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
