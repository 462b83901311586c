"""CheckAccess and CheckAccessBatch against a real sidecar, Postgres and Redis."""

from __future__ import annotations

import grpc
import pytest

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2

from tests.client import Client, user

Reason = access_pb2.DecisionReason


def check(tenant_id: str, who: str, permission: str, scope: str = "", min_revision: int = 0) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id,
        subject=user(who),
        permission=permission,
        resource=common_pb2.Resource(type="invoice", id="inv-1", scope=scope),
        min_revision=min_revision,
    )


async def test_grant_at_scope_covers_descendants_not_siblings(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"acme-{unique}")
    revision = await client.grant(tenant.id, user("alice"), "billing", "emea/de", ["invoice.*"])

    allowed = await client.access.CheckAccess(check(tenant.id, "alice", "invoice.read", "emea/de/berlin", revision))
    assert allowed.allowed and allowed.reason == Reason.DECISION_REASON_ALLOWED
    assert (allowed.granted_by_role, allowed.granted_at_scope) == ("billing", "emea/de")
    assert allowed.revision >= revision

    sibling = await client.access.CheckAccess(check(tenant.id, "alice", "invoice.read", "emea/dex"))
    assert not sibling.allowed and sibling.reason == Reason.DECISION_REASON_NO_GRANT

    other_permission = await client.access.CheckAccess(check(tenant.id, "alice", "report.read", "emea/de"))
    assert other_permission.reason == Reason.DECISION_REASON_NO_GRANT

    stranger = await client.access.CheckAccess(check(tenant.id, "mallory", "invoice.read", "emea/de"))
    assert stranger.reason == Reason.DECISION_REASON_NOT_A_MEMBER


async def test_read_your_writes_with_min_revision(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ryw-{unique}")
    await client.grant(tenant.id, user("bob"), "reader", "", ["doc.read"])
    # Warm the cache with the current answer...
    before = await client.access.CheckAccess(check(tenant.id, "bob", "doc.write"))
    assert not before.allowed
    # ...then write, and ask at the new revision: never the cached, older answer.
    revision = await client.grant(tenant.id, user("bob"), "writer", "", ["doc.write"])
    after = await client.access.CheckAccess(check(tenant.id, "bob", "doc.write", min_revision=revision))
    assert after.allowed and after.revision >= revision


async def test_revocation_is_seen_by_the_sidecar_that_wrote_it(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"revoke-{unique}")
    await client.grant(tenant.id, user("carol"), "editor", "eu", ["doc.*"])
    assert (await client.access.CheckAccess(check(tenant.id, "carol", "doc.edit", "eu/fr"))).allowed
    await client.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("carol"), role="editor", scope="eu"),
        metadata=client.auth,
    )
    # No min_revision: the sidecar that took the write knows its revision.
    assert not (await client.access.CheckAccess(check(tenant.id, "carol", "doc.edit", "eu/fr"))).allowed


async def test_lifecycle_gates_decisions(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"life-{unique}", activate=False)
    draft = await client.access.CheckAccess(check(tenant.id, "dave", "doc.read"))
    assert draft.reason == Reason.DECISION_REASON_TENANT_INACTIVE
    await client.admin.ActivateTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    await client.grant(tenant.id, user("dave"), "owner", "")
    assert (await client.access.CheckAccess(check(tenant.id, "dave", "doc.write"))).allowed

    await client.admin.SuspendTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, reason="unpaid"), metadata=client.auth
    )
    for permission in ("doc.read", "doc.list", "doc.get"):
        assert (await client.access.CheckAccess(check(tenant.id, "dave", permission))).allowed
    write = await client.access.CheckAccess(check(tenant.id, "dave", "doc.write"))
    assert not write.allowed and write.reason == Reason.DECISION_REASON_TENANT_SUSPENDED

    await client.admin.ArchiveTenant(admin_pb2.TenantTransitionRequest(tenant_id=tenant.id), metadata=client.auth)
    archived = await client.access.CheckAccess(check(tenant.id, "dave", "doc.read"))
    assert archived.reason == Reason.DECISION_REASON_TENANT_INACTIVE


async def test_unknown_tenant(client: Client) -> None:
    response = await client.access.CheckAccess(check("00000000-0000-0000-0000-000000000000", "alice", "doc.read"))
    assert not response.allowed and response.reason == Reason.DECISION_REASON_TENANT_NOT_FOUND
    # "not-a-uuid" is no tenant id at all: INVALID_ARGUMENT (tests/server/test_identifiers.py).


async def test_same_ids_in_two_tenants_are_unrelated(client: Client, unique: str) -> None:
    first = await client.tenant(f"iso-a-{unique}")
    second = await client.tenant(f"iso-b-{unique}")
    await client.grant(first.id, user("eve"), "boss", "", ["*"])
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=second.id, name="boss", permissions=["nothing.here"]), metadata=client.auth
    )
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=second.id, subject=user("eve")), metadata=client.auth)
    assert (await client.access.CheckAccess(check(first.id, "eve", "doc.delete"))).allowed
    in_second = await client.access.CheckAccess(check(second.id, "eve", "doc.delete"))
    assert not in_second.allowed and in_second.reason == Reason.DECISION_REASON_NO_GRANT


async def test_feature_flags_gate_permissions(client: Client, unique: str) -> None:
    plan = f"pro-{unique}"
    await client.admin.UpsertPlan(
        admin_pb2.UpsertPlanRequest(
            plan=admin_pb2.Plan(
                name=plan,
                features={"reports": admin_pb2.PlanFeature(default_enabled=False, gates=["report.*"])},
                quotas={"seats": 10},
            )
        ),
        metadata=client.auth,
    )
    tenant = await client.tenant(f"flags-{unique}", plan=plan)
    await client.grant(tenant.id, user("fay"), "owner", "")
    off = await client.access.CheckAccess(check(tenant.id, "fay", "report.export"))
    assert off.reason == Reason.DECISION_REASON_FEATURE_DISABLED and off.feature == "reports"
    patched = await client.admin.PatchTenantConfig(
        admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, set_flag_overrides={"reports": True}),
        metadata=client.auth,
    )
    on = await client.access.CheckAccess(check(tenant.id, "fay", "report.export", min_revision=patched.revision))
    assert on.allowed


async def test_batch_answers_in_request_order(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"batch-{unique}")
    await client.grant(tenant.id, user("gus"), "reader", "a", ["doc.read"])
    checks = [
        check(tenant.id, "gus", "doc.read", "a/b"),
        check(tenant.id, "gus", "doc.write", "a/b"),
        check(tenant.id, "nobody", "doc.read", "a"),
        check("00000000-0000-0000-0000-000000000000", "gus", "doc.read"),
    ]
    response = await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=checks))
    assert [r.reason for r in response.results] == [
        Reason.DECISION_REASON_ALLOWED,
        Reason.DECISION_REASON_NO_GRANT,
        Reason.DECISION_REASON_NOT_A_MEMBER,
        Reason.DECISION_REASON_TENANT_NOT_FOUND,
    ]


async def test_batch_with_a_malformed_entry_names_it(client: Client) -> None:
    bad = check("t1", "alice", "Not A Permission")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[check("t1", "a", "x.read"), bad]))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "checks[1].permission" in failure.value.details()


async def test_batch_agrees_with_single_checks_over_shared_tenants_and_subjects(client: Client, unique: str) -> None:
    """The batch looks each (tenant, subject) up once and reuses answers: it must say
    exactly what one CheckAccess per entry says, in order."""
    a, b = await client.tenant(f"bag-a-{unique}"), await client.tenant(f"bag-b-{unique}")
    await client.grant(a.id, user("hal"), "editor", "eu", ["doc.*"])
    await client.grant(b.id, user("hal"), "viewer", "", None)
    await client.grant(a.id, user("ida"), "viewer", "eu/fr", None)
    checks = [
        check(tenant, who, permission, scope)
        for tenant in (a.id, b.id)
        for who in ("hal", "ida", "nobody")
        for permission in ("doc.read", "doc.write", "report.list")
        for scope in ("", "eu", "eu/fr/paris", "us")
    ]
    batch = await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=checks))
    singles = [await client.access.CheckAccess(c) for c in checks]
    assert list(batch.results) == singles
    assert any(r.allowed for r in singles) and any(not r.allowed for r in singles)
    bad = check(a.id, "hal", "doc.read", "eu//x")  # same fields as a valid entry but the scope
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.access.CheckAccessBatch(access_pb2.CheckAccessBatchRequest(checks=[check(a.id, "hal", "doc.read"), bad]))
    assert "checks[1].resource.scope" in (failure.value.details() or "")
