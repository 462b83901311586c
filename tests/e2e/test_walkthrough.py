"""The whole story, against the real `gatehouse serve` process over gRPC.

create tenant (DRAFT) → activate → role → member → assign at `emea/de` → allowed at
`emea/de/berlin`, denied at `emea/dex` → suspend → read allowed, write denied → the same
subject id in a second tenant gets nothing from the first. Then health, reflection, and
SIGTERM draining to exit 0.
"""

from __future__ import annotations

import signal
from typing import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2

from tests.client import Client, make_client, user
from tests.processes import ServerProcess, sidecar_env, start_server

Reason = access_pb2.DecisionReason


@pytest.fixture(scope="module")
async def server(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[ServerProcess]:
    process = await start_server(sidecar_env(database_url, redis_url, redis_prefix, "e2e-operator-key"))
    yield process
    process.kill()


@pytest.fixture(scope="module")
async def remote(server: ServerProcess, operator_token: str) -> AsyncIterator[Client]:
    client = make_client(server.address, operator_token)
    yield client
    await client.channel.close()


def check(tenant_id: str, who: str, permission: str, scope: str) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user(who), permission=permission, resource=common_pb2.Resource(scope=scope)
    )


async def test_health_and_reflection(remote: Client) -> None:
    health = health_pb2_grpc.HealthStub(remote.channel)
    for service in ("", "gatehouse.v1.AccessService", "gatehouse.v1.ConfigService", "gatehouse.v1.AdminService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    stub = reflection_pb2_grpc.ServerReflectionStub(remote.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"gatehouse.v1.AccessService", "gatehouse.v1.ConfigService", "gatehouse.v1.AdminService"} <= names


async def test_walkthrough(remote: Client, unique: str) -> None:
    auth = remote.auth
    tenant = await remote.admin.CreateTenant(
        admin_pb2.CreateTenantRequest(slug=f"walk-{unique}", name="Walk"), metadata=auth
    )
    assert tenant.status == common_pb2.TENANT_STATUS_DRAFT
    await remote.admin.ActivateTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="go"), metadata=auth)
    await remote.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"]), metadata=auth
    )
    await remote.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("alice")), metadata=auth)
    assigned = await remote.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="accountant", scope="emea/de"),
        metadata=auth,
    )

    berlin = await remote.access.CheckAccess(check(tenant.id, "alice", "invoice.read", "emea/de/berlin"))
    assert berlin.allowed and berlin.revision == assigned.revision
    dex = await remote.access.CheckAccess(check(tenant.id, "alice", "invoice.read", "emea/dex"))
    assert not dex.allowed and dex.reason == Reason.DECISION_REASON_NO_GRANT

    config = await remote.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=tenant.id))
    assert config.slug == f"walk-{unique}" and config.status == common_pb2.TENANT_STATUS_ACTIVE

    await remote.admin.SuspendTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="unpaid"), metadata=auth
    )
    read = await remote.access.CheckAccess(check(tenant.id, "alice", "invoice.read", "emea/de/berlin"))
    assert read.allowed
    write = await remote.access.CheckAccess(check(tenant.id, "alice", "invoice.edit", "emea/de/berlin"))
    assert not write.allowed and write.reason == Reason.DECISION_REASON_TENANT_SUSPENDED

    other = await remote.admin.CreateTenant(
        admin_pb2.CreateTenantRequest(slug=f"walk2-{unique}", name="Other"), metadata=auth
    )
    await remote.admin.ActivateTenant(admin_pb2.TenantTransitionRequest(tenant_id=other.id), metadata=auth)
    await remote.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=other.id, subject=user("alice")), metadata=auth)
    elsewhere = await remote.access.CheckAccess(check(other.id, "alice", "invoice.read", "emea/de/berlin"))
    assert not elsewhere.allowed and elsewhere.reason == Reason.DECISION_REASON_NO_GRANT


async def test_sigterm_drains_and_exits_zero(server: ServerProcess, remote: Client) -> None:
    # Runs last in this module (pytest keeps file order): the server goes away here.
    assert await server.stop(signal.SIGTERM) == 0
