"""Issue 6 on a real sidecar: API keys, operator vs tenant-admin scope, the escalation and
owner guards, idempotency, and audit without secrets."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2

from tests.client import Client, user
from tests.server.status import details


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def key(
    client: Client, tenant_id: str, roles: list[tuple[str, str]], permissions: tuple[str, ...] = ("*",),
    *, auth: tuple[tuple[str, str], ...] | None = None, expires_in: float | None = None,
) -> admin_pb2.CreateApiKeyResponse:
    request = admin_pb2.CreateApiKeyRequest(
        tenant_id=tenant_id, name="k", permissions=list(permissions),
        roles=[admin_pb2.RoleGrant(role=r, scope=s) for r, s in roles],
    )
    if expires_in is not None:
        request.expires_at.FromNanoseconds(int((time.time() + expires_in) * 1e9))
    return await client.admin.CreateApiKey(request, metadata=auth or client.auth)


async def refused(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    info, _ = details(caught.value)
    assert info.reason == reason


def check(tenant_id: str, subject: common_pb2.Subject, permission: str, min_revision: int = 0) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=subject, permission=permission,
        resource=common_pb2.Resource(scope="emea/de"), min_revision=min_revision,
    )


async def test_the_secret_is_shaped_and_shown_once(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"ks-{unique}")
    created = await key(client, tenant.id, [("viewer", "")])
    prefix, key_id, secret = created.secret.split("_", 2)
    assert (prefix, key_id) == ("gh", created.key.id) and len(secret) == 43  # 256 random bits
    listed = await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant_id=tenant.id), metadata=client.auth)
    assert [k.id for k in listed.keys] == [created.key.id]
    assert secret not in str(listed) and "argon2" not in str(listed)
    assert [(g.role, g.scope) for g in listed.keys[0].roles] == [("viewer", "")]


async def test_a_tenant_key_acts_only_inside_its_tenant_and_only_as_its_roles_allow(client: Client, unique: str) -> None:
    mine, other = await client.tenant(f"own-{unique}"), await client.tenant(f"oth-{unique}")
    admin_key = bearer((await key(client, mine.id, [("admin", "")])).secret)
    viewer_key = bearer((await key(client, mine.id, [("viewer", "")])).secret)
    add = admin_pb2.AddMemberRequest(tenant_id=mine.id, subject=user("bob"))
    await client.admin.AddMember(add, metadata=admin_key)
    listed = await client.admin.ListMembers(admin_pb2.ListMembersRequest(tenant_id=mine.id), metadata=viewer_key)
    assert "bob" in {m.subject.id for m in listed.members}  # viewer: *.list
    await refused(client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=mine.id, subject=user("eve")),
                                         metadata=viewer_key), grpc.StatusCode.PERMISSION_DENIED,
                  "GATEHOUSE_PERMISSION_DENIED")
    await refused(client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=other.id, subject=user("bob")),
                                         metadata=admin_key), grpc.StatusCode.PERMISSION_DENIED, "GATEHOUSE_OTHER_TENANT")
    await refused(client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug=f"x-{unique}", name="x"),
                                            metadata=admin_key), grpc.StatusCode.PERMISSION_DENIED,
                  "GATEHOUSE_PLATFORM_ONLY")
    await refused(client.admin.SuspendTenant(admin_pb2.TenantTransitionRequest(tenant_id=mine.id), metadata=admin_key),
                  grpc.StatusCode.PERMISSION_DENIED, "GATEHOUSE_PLATFORM_ONLY")


async def test_bad_credentials_are_unauthenticated(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"bad-{unique}")
    good = (await key(client, tenant.id, [("viewer", "")])).secret
    request = admin_pb2.ListMembersRequest(tenant_id=tenant.id)
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = {
        "empty header": (("authorization", ""),),
        "wrong scheme": (("authorization", f"Basic {good}"),),
        "no header": (),
        "truncated": bearer(good[:-1]),
        "malformed": bearer("gh_nothex_xyz"),
        "wrong secret": bearer(wrong_secret),
        "unknown id": bearer("gh_0123456789abcdef_" + good.split("_", 2)[2]),
    }
    for name, metadata in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.admin.ListMembers(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert good not in (caught.value.details() or "")
    await client.admin.ListMembers(request, metadata=bearer(good))


async def test_a_revoked_key_stops_working_for_admin_calls_and_as_a_subject(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"rev-{unique}")
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"]),
        metadata=client.auth,
    )
    created = await key(client, tenant.id, [("accountant", "emea"), ("viewer", "")], ("invoice.read", "gatehouse.*"))
    me = common_pb2.Subject(type="api_key", id=created.key.id)
    allowed = await client.access.CheckAccess(check(tenant.id, me, "invoice.read", created.revision))
    assert allowed.allowed  # viewer (root) or accountant (emea) grants it; the key's limit lets it through
    limited = await client.access.CheckAccess(check(tenant.id, me, "invoice.create"))
    assert not limited.allowed and limited.reason == access_pb2.DECISION_REASON_NO_GRANT  # the key's own limit
    await client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=tenant.id), metadata=bearer(created.secret))
    revoked = await client.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=created.key.id), metadata=client.auth
    )
    after = await client.access.CheckAccess(check(tenant.id, me, "invoice.read", revoked.revision))
    assert not after.allowed and after.reason == access_pb2.DECISION_REASON_KEY_REVOKED
    await refused(client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=tenant.id), metadata=bearer(created.secret)),
                  grpc.StatusCode.UNAUTHENTICATED, "GATEHOUSE_KEY_REJECTED")
    await refused(client.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=created.key.id),
                                            metadata=client.auth),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_KEY_ALREADY_REVOKED")


async def test_an_expired_key_is_rejected(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"exp-{unique}")
    created = await key(client, tenant.id, [("viewer", "")], expires_in=1.0)
    request = admin_pb2.ListRolesRequest(tenant_id=tenant.id)
    await client.admin.ListRoles(request, metadata=bearer(created.secret))
    me = common_pb2.Subject(type="api_key", id=created.key.id)
    question = check(tenant.id, me, "invoice.read", created.revision)
    # Asked twice before expiry: the second answer is the remembered one...
    for _ in range(2):
        assert (await client.access.CheckAccess(question)).allowed
    await asyncio.sleep(1.2)
    await refused(client.admin.ListRoles(request, metadata=bearer(created.secret)),
                  grpc.StatusCode.UNAUTHENTICATED, "GATEHOUSE_KEY_REJECTED")
    # ...and it ends at the key's expiry, with no event to end it.
    answer = await client.access.CheckAccess(question)
    assert answer.reason == access_pb2.DECISION_REASON_KEY_REVOKED


async def test_escalation_guard_bounds_what_a_caller_hands_out_by_what_it_holds_there(
    client: Client, unique: str
) -> None:
    tenant = await client.tenant(f"esc-{unique}")
    for name, permissions in (("delegate", ["gatehouse.*", "invoice.*"]), ("accountant", ["invoice.read"]),
                              ("payroll", ["payroll.*"])):
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name=name, permissions=permissions), metadata=client.auth
        )
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("al")), metadata=client.auth)
    root = bearer((await key(client, tenant.id, [("delegate", "")])).secret)
    emea = bearer((await key(client, tenant.id, [("delegate", "emea"), ("viewer", "")])).secret)

    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="reader", permissions=["invoice.read"]), metadata=root
    )
    await refused(client.admin.CreateRole(admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="pay",
                                                                       permissions=["payroll.read"]), metadata=root),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_ESCALATION")
    await refused(client.admin.CreateRole(admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="all",
                                                                       permissions=["*"]), metadata=root),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_ESCALATION")
    assign = admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("al"), role="payroll", scope="emea")
    await refused(client.admin.AssignRole(assign, metadata=root), grpc.StatusCode.FAILED_PRECONDITION,
                  "GATEHOUSE_ESCALATION")
    await refused(client.admin.AssignRole(admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("al"),
                                                                      role="admin", scope=""), metadata=root),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_ESCALATION")
    # Scoped: holding `delegate` at emea lets it hand out accountant below emea, not elsewhere.
    await client.admin.AssignRole(admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("al"),
                                                              role="accountant", scope="emea/de"), metadata=emea)
    await refused(client.admin.AssignRole(admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("al"),
                                                                      role="accountant", scope="apac"), metadata=emea),
                  grpc.StatusCode.PERMISSION_DENIED, "GATEHOUSE_PERMISSION_DENIED")
    # A key cannot be minted with roles beyond the creator's either.
    await refused(key(client, tenant.id, [("payroll", "")], auth=root), grpc.StatusCode.FAILED_PRECONDITION,
                  "GATEHOUSE_ESCALATION")
    # Both refusals are audited as errors with their reason.
    audit = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id, action="role.create"), metadata=client.auth
    )
    assert {(e.outcome, e.reason) for e in audit.events} >= {("ok", ""), ("error", "GATEHOUSE_ESCALATION")}


async def test_only_owners_hand_out_owner_and_the_last_owner_stays(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"own2-{unique}")
    await client.grant(tenant.id, user("olga"), "owner", "")
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("ann")), metadata=client.auth)
    admin_key = bearer((await key(client, tenant.id, [("admin", "")])).secret)
    owner_key = bearer((await key(client, tenant.id, [("owner", "")])).secret)
    make_owner = admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("ann"), role="owner", scope="")
    await refused(client.admin.AssignRole(make_owner, metadata=admin_key), grpc.StatusCode.FAILED_PRECONDITION,
                  "GATEHOUSE_OWNER_REQUIRED")
    await refused(client.admin.RemoveMember(admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=user("olga")),
                                            metadata=admin_key),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_OWNER_REQUIRED")
    await client.admin.AssignRole(make_owner, metadata=owner_key)
    # Owner protection: with ann and the owner key as owners too, olga may go; then ann
    # and the key; the last owner never.
    revoke = admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("olga"), role="owner", scope="")
    await client.admin.RevokeRole(revoke, metadata=owner_key)


async def test_last_owner_cannot_be_removed_demoted_or_revoked(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"last-{unique}")
    await client.grant(tenant.id, user("olga"), "owner", "")
    for call in (
        client.admin.RevokeRole(admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("olga"), role="owner",
                                                            scope=""), metadata=client.auth),
        client.admin.RemoveMember(admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=user("olga")),
                                  metadata=client.auth),
    ):
        await refused(call, grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_LAST_OWNER")


async def test_idempotency_key_replays_one_write_even_concurrently(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"idem-{unique}")
    request = admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("ida"))
    metadata = (*client.auth, ("idempotency-key", f"add-ida-{unique}"))
    answers = await asyncio.gather(*(client.admin.AddMember(request, metadata=metadata) for _ in range(8)))
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    again = await client.admin.AddMember(request, metadata=metadata)
    assert again == answers[0]
    current = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=client.auth)
    assert current.revision == answers[0].revision  # one write, one revision bump
    other = admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("eve"))
    await refused(client.admin.AddMember(other, metadata=metadata), grpc.StatusCode.FAILED_PRECONDITION,
                  "GATEHOUSE_IDEMPOTENCY_KEY_REUSED")
    # A failed call releases its key: the same request may be retried and then succeed.
    retry = (*client.auth, ("idempotency-key", f"assign-{unique}"))
    assign = admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=user("ivy"), role="viewer", scope="")
    await refused(client.admin.AssignRole(assign, metadata=retry), grpc.StatusCode.FAILED_PRECONDITION,
                  "GATEHOUSE_NOT_A_MEMBER")
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("ivy")),
                                 metadata=client.auth)
    await client.admin.AssignRole(assign, metadata=retry)


async def test_the_bootstrap_key_only_mints_operator_keys(client: Client, sidecar: Sidecar, unique: str) -> None:
    bootstrap = bearer(sidecar.settings.operator_key)
    await refused(client.admin.CreateTenant(admin_pb2.CreateTenantRequest(slug=f"bs-{unique}", name="b"),
                                            metadata=bootstrap), grpc.StatusCode.PERMISSION_DENIED,
                  "GATEHOUSE_PERMISSION_DENIED")
    operator = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="first operator", permissions=["*"]), metadata=bootstrap
    )
    assert operator.key.tenant_id == ""
    tenant = await client.tenant(f"bs-{unique}")
    await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(operator.secret))
    await client.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=operator.key.id), metadata=bootstrap)
    await refused(client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id),
                                         metadata=bearer(operator.secret)),
                  grpc.StatusCode.UNAUTHENTICATED, "GATEHOUSE_KEY_REJECTED")


async def test_no_secret_reaches_the_audit_log_or_the_logs(
    client: Client, sidecar: Sidecar, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    tenant = await client.tenant(f"sec-{unique}")
    created = await key(client, tenant.id, [("viewer", "")])
    secret = created.secret
    await client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=tenant.id), metadata=bearer(secret))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("x")),
                                     metadata=bearer(secret))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.admin.ListRoles(admin_pb2.ListRolesRequest(tenant_id=tenant.id), metadata=bearer(secret[:-1]))
    await client.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=created.key.id),
                                    metadata=client.auth)
    rows = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id, page_size=1000), metadata=client.auth
    )
    by_key = [e for e in rows.events if e.actor == f"api_key/{created.key.id}"]
    assert {(e.action, e.outcome) for e in by_key} >= {("role.list", "ok"), ("member.add", "denied")}
    assert all(e.request_id for e in rows.events)
    secret_part = secret.split("_", 2)[2]
    assert secret_part not in str(rows)
    assert secret_part not in caplog.text
    assert sidecar.store is not None
    async with sidecar.store._reading("*") as conn:  # every audit row and the stored keys
        dump = str(await conn.fetch("SELECT * FROM audit_log")) + str(await conn.fetch("SELECT * FROM idempotency_keys"))
        dump += str(await conn.fetch("SELECT name, permissions, secret_hash FROM api_keys"))
    assert secret_part not in dump and secret not in dump


async def test_list_keys_shows_roles_and_scopes_containing_at_signs(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"at-{unique}")
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="ops@eu", permissions=["invoice.read"]),
        metadata=client.auth,
    )
    created = await key(client, tenant.id, [("ops@eu", "team@x/a"), ("viewer", "")])
    listed = await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant_id=tenant.id), metadata=client.auth)
    [only] = [k for k in listed.keys if k.id == created.key.id]
    assert [(g.role, g.scope) for g in only.roles] == [("ops@eu", "team@x/a"), ("viewer", "")]
