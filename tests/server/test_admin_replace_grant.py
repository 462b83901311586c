"""AssignRole's `on_existing` on a real sidecar: REPLACE gives a grant held already new
terms (condition, expiry) in one write that this sidecar answers by at once; REFUSE (and
the default) keeps ALREADY_EXISTS; the escalation, owner and last-owner guards refuse a
replace exactly as they refuse its parts, and a refused replace changes nothing."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, struct, user
from tests.server.status import details

REPLACE = admin_pb2.EXISTING_GRANT_POLICY_REPLACE
Reason = access_pb2.DecisionReason


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def at(unix_seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix_seconds * 1e9))
    return stamp


def assign(tenant_id: str, who: str, role: str, scope: str, **fields: Any) -> admin_pb2.AssignRoleRequest:
    return admin_pb2.AssignRoleRequest(tenant_id=tenant_id, subject=user(who), role=role, scope=scope, **fields)


def check(tenant_id: str, who: str, ok: bool, min_revision: int = 0) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user(who), permission="invoice.read",
        resource=common_pb2.Resource(type="invoice", id="i1", scope="emea/de"), context=struct({"ok": ok}),
        min_revision=min_revision,
    )  # fmt: skip


async def refused(call: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    info, _ = details(caught.value)
    assert info.reason == reason
    return caught.value


async def revision_of(client: Client, tenant_id: str) -> int:
    tenant = await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant_id), metadata=client.auth)
    return int(tenant.revision)


async def held(client: Client, tenant_id: str, who: str) -> dict[tuple[str, str], tuple[str, int | None]]:
    """(role, scope) -> (condition, expires_at in seconds or None) of `who`'s grants."""
    listed = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant_id, subject=user(who)), metadata=client.auth
    )
    return {
        (a.role, a.scope): (a.condition, a.expires_at.seconds if a.HasField("expires_at") else None)
        for a in listed.assignments
    }


async def accountant_tenant(client: Client, slug: str) -> admin_pb2.Tenant:
    """alice: accountant (invoice.*) at emea, only when `context.ok == true`."""
    tenant = await client.tenant(slug)
    await client.admin.CreateRole(
        admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"]),
        metadata=client.auth,
    )
    await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("alice")),
                                 metadata=client.auth)  # fmt: skip
    await client.admin.AssignRole(assign(tenant.id, "alice", "accountant", "emea", condition="context.ok == true"),
                                  metadata=client.auth)  # fmt: skip
    return tenant


async def test_replace_changes_the_terms_in_one_write_and_checks_answer_by_them_at_once(
    client: Client, unique: str
) -> None:
    tenant = await accountant_tenant(client, f"repl-{unique}")
    before = await revision_of(client, tenant.id)
    # Warm every cache tier and the remembered answers with the old terms.
    for _ in range(2):
        assert (await client.access.CheckAccess(check(tenant.id, "alice", True))).allowed
        assert not (await client.access.CheckAccess(check(tenant.id, "alice", False))).allowed

    replaced = await client.admin.AssignRole(
        assign(tenant.id, "alice", "accountant", "emea", condition="context.ok == false", on_existing=REPLACE),
        metadata=client.auth,
    )
    assert replaced.revision == before + 1  # one write
    assert (replaced.assignment.condition, replaced.assignment.HasField("expires_at")) == ("context.ok == false", False)
    assert await held(client, tenant.id, "alice") == {("accountant", "emea"): ("context.ok == false", None)}
    # At once, in this sidecar, with or without min_revision: the new terms decide.
    for min_revision in (0, replaced.revision):
        now_true = await client.access.CheckAccess(check(tenant.id, "alice", True, min_revision))
        now_false = await client.access.CheckAccess(check(tenant.id, "alice", False, min_revision))
        assert (now_true.allowed, now_false.allowed) == (False, True)
        assert now_false.revision == replaced.revision

    # An expiry, and the condition gone: no condition in the request means none.
    expires = int(time.time()) + 3600
    lasting = await client.admin.AssignRole(
        assign(tenant.id, "alice", "accountant", "emea", expires_at=at(expires), on_existing=REPLACE),
        metadata=client.auth,
    )
    assert lasting.revision == replaced.revision + 1
    assert await held(client, tenant.id, "alice") == {("accountant", "emea"): ("", expires)}
    for ok in (True, False):
        assert (await client.access.CheckAccess(check(tenant.id, "alice", ok))).allowed

    # One audit row per replace, each naming the terms it replaced.
    audit = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant.id, action="role.assign", page_size=100), metadata=client.auth
    )
    assert [e.outcome for e in audit.events] == ["ok", "ok", "ok"]


async def test_refuse_and_the_default_keep_already_exists_and_change_nothing(client: Client, unique: str) -> None:
    tenant = await accountant_tenant(client, f"refuse-{unique}")
    before, terms = await revision_of(client, tenant.id), await held(client, tenant.id, "alice")
    for policy in (admin_pb2.EXISTING_GRANT_POLICY_UNSPECIFIED, admin_pb2.EXISTING_GRANT_POLICY_REFUSE):
        await refused(
            client.admin.AssignRole(
                assign(tenant.id, "alice", "accountant", "emea", condition="context.ok == false", on_existing=policy),
                metadata=client.auth,
            ),
            grpc.StatusCode.ALREADY_EXISTS, "GATEHOUSE_ALREADY_EXISTS",
        )  # fmt: skip
    assert await revision_of(client, tenant.id) == before
    assert await held(client, tenant.id, "alice") == terms


async def test_replace_with_nothing_held_assigns(client: Client, unique: str) -> None:
    tenant = await accountant_tenant(client, f"fresh-{unique}")
    made = await client.admin.AssignRole(
        assign(tenant.id, "alice", "accountant", "apac", on_existing=REPLACE), metadata=client.auth
    )
    assert (await held(client, tenant.id, "alice"))[("accountant", "apac")] == ("", None)
    assert made.revision == await revision_of(client, tenant.id)


async def test_an_unknown_policy_is_invalid_argument_naming_it(client: Client, unique: str) -> None:
    tenant = await accountant_tenant(client, f"badpol-{unique}")
    error = await refused(
        client.admin.AssignRole(assign(tenant.id, "alice", "accountant", "emea", on_existing=7), metadata=client.auth),
        grpc.StatusCode.INVALID_ARGUMENT, "GATEHOUSE_INVALID_ARGUMENT",
    )  # fmt: skip
    assert details(error)[1] == ["on_existing"]


async def test_the_escalation_guard_refuses_a_replace_and_nothing_changes(client: Client, unique: str) -> None:
    """A key that may call AssignRole but not hand the role out (its own limit is
    `gatehouse.*`) cannot change the grant's terms: the grant keeps its old ones (no
    revoke happened first, as when apply made a change in two calls)."""
    tenant = await accountant_tenant(client, f"esc-{unique}")
    limited = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant.id, name="k", permissions=["gatehouse.*"], roles=[admin_pb2.RoleGrant(role="admin")]
        ),
        metadata=client.auth,
    )
    before, terms = await revision_of(client, tenant.id), await held(client, tenant.id, "alice")
    await refused(
        client.admin.AssignRole(
            assign(tenant.id, "alice", "accountant", "emea", condition="context.ok == false", on_existing=REPLACE),
            metadata=bearer(limited.secret),
        ),
        grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_ESCALATION",
    )  # fmt: skip
    assert await revision_of(client, tenant.id) == before
    assert await held(client, tenant.id, "alice") == terms
    assert (await client.access.CheckAccess(check(tenant.id, "alice", True))).allowed


async def test_owner_terms_follow_the_owner_rules(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"own-{unique}")
    await client.grant(tenant.id, user("olga"), "owner", "")
    before, terms = await revision_of(client, tenant.id), await held(client, tenant.id, "olga")
    # The only lasting owner given a condition or an expiry: refused as revoking it is.
    for fields in ({"condition": "context.ok == true"}, {"expires_at": at(time.time() + 3600)}):
        await refused(
            client.admin.AssignRole(assign(tenant.id, "olga", "owner", "", on_existing=REPLACE, **fields),
                                    metadata=client.auth),
            grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_LAST_OWNER",
        )  # fmt: skip
    await refused(
        client.admin.RevokeRole(admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("olga"), role="owner",
                                                            scope=""), metadata=client.auth),
        grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_LAST_OWNER",
    )  # fmt: skip
    assert await revision_of(client, tenant.id) == before
    assert await held(client, tenant.id, "olga") == terms

    # Only an owner changes an owner grant's terms: an admin key may not.
    admin_key = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="a", permissions=["*"],
                                      roles=[admin_pb2.RoleGrant(role="admin")]),
        metadata=client.auth,
    )  # fmt: skip
    await client.grant(tenant.id, user("oscar"), "owner", "")
    await refused(
        client.admin.AssignRole(assign(tenant.id, "olga", "owner", "", condition="context.ok", on_existing=REPLACE),
                                metadata=bearer(admin_key.secret)),
        grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_OWNER_REQUIRED",
    )  # fmt: skip
    # With oscar a lasting owner too, the operator may give olga a condition.
    await client.admin.AssignRole(assign(tenant.id, "olga", "owner", "", condition="context.ok", on_existing=REPLACE),
                                  metadata=client.auth)  # fmt: skip
    assert (await held(client, tenant.id, "olga"))[("owner", "")] == ("context.ok", None)


async def test_a_replace_under_an_idempotency_key_is_one_write(client: Client, unique: str) -> None:
    tenant = await accountant_tenant(client, f"idem-{unique}")
    request = assign(tenant.id, "alice", "accountant", "emea", condition="context.ok == false", on_existing=REPLACE)
    metadata = (*client.auth, ("idempotency-key", f"replace-{unique}"))
    first = await client.admin.AssignRole(request, metadata=metadata)
    again = await client.admin.AssignRole(request, metadata=metadata)
    assert again == first and await revision_of(client, tenant.id) == first.revision
    # A stale expected_revision is refused (ABORTED), nothing written.
    stale = assign(tenant.id, "alice", "accountant", "emea", on_existing=REPLACE, expected_revision=first.revision - 1)
    await refused(client.admin.AssignRole(stale, metadata=client.auth), grpc.StatusCode.ABORTED,
                  "GATEHOUSE_REVISION_CONFLICT")  # fmt: skip
    assert await held(client, tenant.id, "alice") == {("accountant", "emea"): ("context.ok == false", None)}
