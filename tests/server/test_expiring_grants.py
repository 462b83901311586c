"""Expiring grants (issue 18): AssignRole's `expires_at`, against real sidecars, Postgres
and Redis. An expired assignment stops granting at its instant in every sidecar, with no
event and whatever the caches hold: the remembered answer, L1, and (in the second
sidecar) the entry read from L2."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, user
from tests.server.status import details

Reason = access_pb2.DecisionReason


def at(unix_seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix_seconds * 1e9))
    return stamp


def check(tenant_id: str, who: str, permission: str, scope: str = "", min_revision: int = 0) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id,
        subject=user(who),
        permission=permission,
        resource=common_pb2.Resource(type="doc", id="d1", scope=scope),
        min_revision=min_revision,
    )


async def _member_with_role(client: Client, tenant_id: str, who: str, role: str, permissions: list[str]) -> None:
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant_id, name=role, permissions=permissions), metadata=client.auth
    )
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant_id, subject=user(who)), metadata=client.auth)


async def test_an_expired_grant_stops_granting_at_its_instant_in_every_sidecar(
    client: Client, second: Client, unique: str
) -> None:
    tenant = await client.tenant(f"exp-{unique}")
    await _member_with_role(client, tenant.id, "alice", "editor", ["doc.*"])
    expires = time.time() + 2.0
    assigned = await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="editor", scope="eu", expires_at=at(expires)),
        metadata=client.auth,
    )
    assert abs(assigned.assignment.expires_at.ToNanoseconds() / 1e9 - expires) < 1e-3
    request = check(tenant.id, "alice", "doc.edit", "eu/fr", assigned.revision)
    # Asked twice in each sidecar: decided, then remembered (and in the second sidecar
    # the grants come from L2, where the first put them).
    for sidecar in (client, second, client, second):
        answer = await sidecar.access.CheckAccess(request)
        assert (answer.allowed, answer.granted_by_role) == (True, "editor")

    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    for sidecar in (client, second):
        answer = await sidecar.access.CheckAccess(request)
        assert (answer.allowed, answer.reason) == (False, Reason.DECISION_REASON_NO_GRANT)
        # Denied at the revision the grant was written at: nothing written, nothing evented
        # (unless a relay of this session's sidecars swept the row in the ~50 ms since, which
        # bumps the revision by one; the denial came first either way).
        assert answer.revision in (assigned.revision, assigned.revision + 1)
        batch = await sidecar.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[request, request]))
        assert [r.allowed for r in batch.results] == [False, False]


async def test_an_allow_from_an_expiring_grant_falls_back_to_a_lasting_one(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"exp-fall-{unique}")
    await _member_with_role(client, tenant.id, "bob", "reader", ["doc.read"])
    # The wider (root) grant expires; the narrower one lasts: once the first is gone the
    # answer names the second, so the remembered answer naming the first must end.
    await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("bob"), role="reader", scope="", expires_at=at(time.time() + 1.5)),
        metadata=client.auth,
    )
    revision = (
        await client.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("bob"), role="reader", scope="eu"),
            metadata=client.auth,
        )
    ).revision
    request = check(tenant.id, "bob", "doc.read", "eu", revision)
    for _ in range(2):
        assert (await client.access.CheckAccess(request)).granted_at_scope == ""
    await asyncio.sleep(1.6)
    answer = await client.access.CheckAccess(request)
    assert (answer.allowed, answer.granted_at_scope) == (True, "eu")


async def test_list_role_assignments_shows_expires_at(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"exp-list-{unique}")
    await _member_with_role(client, tenant.id, "carol", "viewer2", ["doc.read"])
    expires = time.time() + 3600
    await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("carol"), role="viewer2", scope="a", expires_at=at(expires)),
        metadata=client.auth,
    )
    await client.admin.AssignRole(
        admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("carol"), role="viewer2", scope="b"),
        metadata=client.auth,
    )
    listed = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant.id, subject=user("carol")), metadata=client.auth
    )
    by_scope = {a.scope: a for a in listed.assignments}
    assert abs(by_scope["a"].expires_at.ToNanoseconds() / 1e9 - expires) < 1e-3
    assert not by_scope["b"].HasField("expires_at")


@pytest.mark.parametrize("when", [-3600.0, 0.0])
async def test_an_expiry_not_in_the_future_is_invalid_argument_naming_it(client: Client, unique: str, when: float) -> None:
    tenant = await client.tenant(f"exp-bad-{unique}")
    await _member_with_role(client, tenant.id, "dave", "r", ["doc.read"])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.admin.AssignRole(
            admin_pb2.AssignRoleRequest(
                tenant_id=tenant.id, subject=user("dave"), role="r", scope="", expires_at=at(time.time() + when)
            ),
            metadata=client.auth,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == ["expires_at"]
    listed = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant.id, subject=user("dave")), metadata=client.auth
    )
    assert list(listed.assignments) == []
