"""AdminService: lifecycle, concurrency, roles, auth and audit, through real gRPC."""

from __future__ import annotations

import grpc
import pytest

from gatehouse_client.v1 import admin_pb2, common_pb2

from tests.client import Client, user
from tests.server.status import details


async def failure_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    return failure.value


async def test_lifecycle_records_who_when_why_and_rejects_illegal_steps(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"lc-{unique}", activate=False)
    assert tenant.status == common_pb2.TENANT_STATUS_DRAFT and tenant.revision == 1
    error = await failure_of(
        client.admin.SuspendTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0].reason == "GATEHOUSE_ILLEGAL_TRANSITION"

    active = await client.admin.ActivateTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="launch"), metadata=client.auth
    )
    assert active.status == common_pb2.TENANT_STATUS_ACTIVE and active.revision == 2
    assert active.status_reason == "launch" and active.status_changed_by.startswith("api_key/")
    assert active.status_changed_at.seconds > 0

    archived = await client.admin.ArchiveTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    unconfirmed = await failure_of(
        client.admin.DeleteTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    )
    assert details(unconfirmed)[0].reason == "GATEHOUSE_CONFIRMATION_REQUIRED"
    deleted = await client.admin.DeleteTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, confirm=True), metadata=client.auth
    )
    assert deleted.status == common_pb2.TENANT_STATUS_DELETED and deleted.revision == archived.revision + 1
    terminal = await failure_of(
        client.admin.RestoreTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    )
    assert terminal.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_duplicate_slug_already_exists(client: Client, unique: str) -> None:
    await client.tenant(f"dup-{unique}", activate=False)
    error = await failure_of(client.tenant(f"dup-{unique}", activate=False))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_stale_expected_revision_is_aborted_with_current(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"occ-{unique}")
    updated = await client.admin.UpdateTenant(
        admin_pb2.UpdateTenantRequest(tenant_id=tenant.id, expected_revision=tenant.revision, name="Renamed"),
        metadata=client.auth,
    )
    assert updated.name == "Renamed" and updated.revision == tenant.revision + 1
    error = await failure_of(
        client.admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(tenant_id=tenant.id, expected_revision=tenant.revision, name="Lost"),
            metadata=client.auth,
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    info, _ = details(error)
    assert info.reason == "GATEHOUSE_REVISION_CONFLICT"
    assert info.metadata["current_revision"] == str(updated.revision)



async def test_every_tenant_write_takes_an_expected_revision(client: Client, unique: str) -> None:
    """Role, member and grant writes check `expected_revision` like UpdateTenant does:
    a stale one is ABORTED and writes nothing; the current one writes (0 = don't check)."""
    tenant = await client.tenant(f"occ-all-{unique}")
    admin, auth, alice = client.admin, client.auth, user("alice")
    role = await admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="ops", permissions=["x.*"], expected_revision=tenant.revision),
        metadata=auth,
    )
    revision = role.revision
    writes = [
        (admin.AddMember, admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=alice)),
        (admin.AssignRole, admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=alice, role="ops", scope="eu")),
        (admin.RevokeRole, admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=alice, role="ops", scope="eu")),
        (admin.RemoveMember, admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=alice)),
        (admin.DeleteRole, admin_pb2.DeleteRoleRequest(tenant_id=tenant.id, name="ops")),
        (admin.CreateRole, admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="ops2", permissions=["x.*"])),
    ]
    for call, request in writes:
        request.expected_revision = revision - 1
        error = await failure_of(call(request, metadata=auth))
        assert error.code() == grpc.StatusCode.ABORTED, type(request).__name__
        assert details(error)[0].metadata["current_revision"] == str(revision)
        request.expected_revision = revision
        response = await call(request, metadata=auth)
        assert response.revision == revision + 1, type(request).__name__
        revision = response.revision

async def test_system_roles_are_seeded_and_fixed(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"sys-{unique}")
    roles = await client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=tenant.id), metadata=client.auth)
    assert {r.name for r in roles.roles if r.system} == {"owner", "admin", "member", "viewer"}
    error = await failure_of(
        client.admin.DeleteRole(admin_pb2.DeleteRoleRequest(tenant_id=tenant.id, name="owner"), metadata=client.auth)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0].reason == "GATEHOUSE_SYSTEM_ROLE"


async def test_roles_members_assignments_round_trip(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"rt-{unique}")
    await client.grant(tenant.id, user("ann"), "ops", "emea", ["deploy.*"])
    await client.grant(tenant.id, user("ben"), "viewer", "")
    members = await client.admin.ListMembers(admin_pb2.ListMembersRequest(tenant_id=tenant.id, page_size=1), metadata=client.auth)
    assert len(members.members) == 1 and members.next_page_token
    rest = await client.admin.ListMembers(
        admin_pb2.ListMembersRequest(tenant_id=tenant.id, page_size=1, page_token=members.next_page_token),
        metadata=client.auth,
    )
    assert {m.subject.id for m in (*members.members, *rest.members)} == {"ann", "ben"}
    assignments = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant.id, subject=user("ann")), metadata=client.auth
    )
    assert [(a.role, a.scope) for a in assignments.assignments] == [("ops", "emea")]
    in_use = await failure_of(
        client.admin.DeleteRole(admin_pb2.DeleteRoleRequest(tenant_id=tenant.id, name="ops"), metadata=client.auth)
    )
    assert details(in_use)[0].reason == "GATEHOUSE_ROLE_IN_USE"
    not_member = await failure_of(
        client.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("zed"), role="ops"), metadata=client.auth
        )
    )
    assert details(not_member)[0].reason == "GATEHOUSE_NOT_A_MEMBER"
    removed = await client.admin.RemoveMember(
        admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=user("ann")), metadata=client.auth
    )
    assert removed.revision > 0
    assignments = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant.id), metadata=client.auth
    )
    assert [a.subject.id for a in assignments.assignments] == ["ben"]


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer wrong"),), (("authorization", "Basic abc"),), (("authorization", "Bearer "),)],
    ids=["missing", "wrong key", "wrong scheme", "empty key"],
)
async def test_bad_credentials_are_unauthenticated_and_audited(
    client: Client, unique: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    request_id = f"req-{unique}-{len(metadata)}-{hash(metadata) & 0xFFFF}"
    error = await failure_of(
        client.admin.CreateTenant(
            admin_pb2.CreateTenantRequest(slug=f"unauth-{unique}", name="x"),
            metadata=(*metadata, ("x-request-id", request_id)),
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    events = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="tenant.create", page_size=1000), metadata=client.auth
    )
    mine = [e for e in events.events if e.request_id == request_id]
    assert len(mine) == 1 and mine[0].outcome == "denied" and mine[0].reason == "GATEHOUSE_UNAUTHENTICATED"
    assert "wrong" not in mine[0].actor and "wrong" not in mine[0].target


async def test_successful_mutations_are_audited_with_request_id(client: Client, unique: str) -> None:
    created = await client.admin.CreateTenant(
        admin_pb2.CreateTenantRequest(slug=f"aud-{unique}", name="Audited"),
        metadata=(*client.auth, ("x-request-id", f"create-{unique}")),
    )
    events = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=created.id), metadata=client.auth
    )
    assert [(e.action, e.outcome, e.request_id) for e in events.events if e.action == "tenant.create"] == [
        ("tenant.create", "ok", f"create-{unique}")
    ]
