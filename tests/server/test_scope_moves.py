"""MoveScope (issue 18 part 4) on real sidecars: a subtree moves with its grants, checks
at the new scopes answer as the old ones did and the old ones deny, in this sidecar and
in a second one sharing Postgres and Redis; every refusal writes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.engine.patterns import scope_covers

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2
from tests.client import Client, make_client, user
from tests.server.status import details
from tests.server.test_admin_security import bearer, key, refused

KEEP_EXISTING = admin_pb2.MOVE_CONFLICT_POLICY_KEEP_EXISTING
BOUND_SECONDS = 5.0  # how long a second sidecar may take to hear of the move (events)

# (subject, role, scope) before the move of org/eu/sales to org/emea/sales.
ASSIGNMENTS = [
    ("alice", "clerk", "org/eu/sales"),
    ("bob", "boss", "org/eu/sales/team1"),
    ("carol", "clerk", "org/eu/salesforce"),  # a sibling sharing a prefix: stays
    ("dave", "clerk", "org/eu"),  # above the source: stays, and still covers it
]
ROLES = {"clerk": ["invoice.read"], "boss": ["invoice.*"]}
PERMISSIONS = ("invoice.read", "invoice.approve")
OLD_SCOPES = ("org/eu/sales", "org/eu/sales/team1", "org/eu/sales/team1/x", "org/eu/salesforce", "org/eu", "")


def moved(scope: str) -> str:
    return "org/emea/sales" + scope[len("org/eu/sales"):] if scope.startswith("org/eu/sales/") or scope == "org/eu/sales" else scope


def ask(tenant_id: str, who: str, permission: str, scope: str, min_revision: int = 0) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user(who), permission=permission,
        resource=common_pb2.Resource(type="invoice", id="1", scope=scope), min_revision=min_revision,
    )


async def answers(client: Client, tenant_id: str, scopes: list[str], min_revision: int = 0) -> dict[tuple[str, str, str], tuple[bool, str, str]]:
    """(subject, permission, scope) -> (allowed, granting role, granting scope) for every subject."""
    found = {}
    for who in ("alice", "bob", "carol", "dave"):
        for permission in PERMISSIONS:
            for scope in scopes:
                a = await client.access.CheckAccess(ask(tenant_id, who, permission, scope, min_revision))
                found[(who, permission, scope)] = (a.allowed, a.granted_by_role, a.granted_at_scope)
    return found


async def org(client: Client, slug: str) -> str:
    tenant = await client.tenant(slug)
    for name, permissions in ROLES.items():
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name=name, permissions=permissions), metadata=client.auth
        )
    for who, role, scope in ASSIGNMENTS:
        await client.grant(tenant.id, user(who), role, scope)
    return tenant.id


async def revision_of(client: Client, tenant_id: str) -> int:
    return (await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant_id), metadata=client.auth)).revision


async def assignments(client: Client, tenant_id: str) -> set[tuple[str, str, str]]:
    page = await client.admin.ListRoleAssignments(
        admin_pb2.ListRoleAssignmentsRequest(tenant_id=tenant_id, page_size=1000), metadata=client.auth
    )
    return {(a.subject.id, a.role, a.scope) for a in page.assignments}


def move(tenant_id: str, source: str, target: str, **fields: object) -> admin_pb2.MoveScopeRequest:
    return admin_pb2.MoveScopeRequest(tenant_id=tenant_id, from_scope=source, to_scope=target, **fields)  # type: ignore[arg-type]


async def test_checks_follow_the_move_in_both_sidecars(client: Client, second: Client, unique: str) -> None:
    tenant_id = await org(client, f"move-{unique}")
    new_scopes = [moved(s) for s in OLD_SCOPES]
    before = await answers(client, tenant_id, list(OLD_SCOPES))
    # Both sidecars remember answers at the old and new scopes first: they must be told.
    for sidecar in (client, second):
        assert await answers(sidecar, tenant_id, list(OLD_SCOPES) + new_scopes) == {
            **before, **await answers(client, tenant_id, new_scopes)
        }
    start = await revision_of(client, tenant_id)

    done = await client.admin.MoveScope(move(tenant_id, "org/eu/sales", "org/emea/sales"), metadata=client.auth)

    assert (done.moved, done.merged, done.revision) == (2, 0, start + 1)
    assert await assignments(client, tenant_id) == {(w, r, moved(s)) for w, r, s in ASSIGNMENTS}
    # What the old subtree's own grants allowed, its new place allows, granted at the
    # moved scope (dave's grant above the source stays where it is and covers only the
    # old place); the old subtree answers as if nothing had been there.
    expected_new = {
        (w, p, moved(s)): (True, role, moved(at)) if allowed and moved(at) != at else (False, "", "")
        for (w, p, s), (allowed, role, at) in before.items()
        if s.startswith("org/eu/sales") and s != "org/eu/salesforce"
    }
    expected_old = {
        (w, p, s): (w == "dave" and p == "invoice.read", "clerk" if w == "dave" and p == "invoice.read" else "",
                    "org/eu" if w == "dave" and p == "invoice.read" else "")
        for (w, p, s) in before if s.startswith("org/eu/sales") and s != "org/eu/salesforce"
    }
    assert any(allowed for allowed, _, _ in expected_new.values())
    old_subtree = [s for s in OLD_SCOPES if s.startswith("org/eu/sales") and s != "org/eu/salesforce"]
    for sidecar in (client, second):
        now = await answers(sidecar, tenant_id, [moved(s) for s in old_subtree] + old_subtree, done.revision)
        assert {k: v for k, v in now.items() if k in expected_new} == expected_new
        assert {k: v for k, v in now.items() if k in expected_old} == expected_old
        untouched = await answers(sidecar, tenant_id, ["org/eu/salesforce", "org/eu", ""], done.revision)
        assert untouched == {k: v for k, v in before.items() if k[2] in ("org/eu/salesforce", "org/eu", "")}

    # Without min_revision too: the second sidecar's remembered answers go with the event.
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        bob_old = await second.access.CheckAccess(ask(tenant_id, "bob", "invoice.approve", "org/eu/sales/team1"))
        bob_new = await second.access.CheckAccess(ask(tenant_id, "bob", "invoice.approve", "org/emea/sales/team1"))
        if not bob_old.allowed and bob_new.allowed:
            break
        assert time.monotonic() < deadline, "the second sidecar still answers from before the move"
        await asyncio.sleep(0.02)

    audit = await client.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(tenant_id=tenant_id, action="scope.move"), metadata=client.auth
    )
    assert [(e.target, e.outcome) for e in audit.events] == [("scope/org/eu/sales to scope/org/emea/sales", "ok")]


async def test_refusals_name_a_stable_reason_and_write_nothing(client: Client, unique: str) -> None:
    tenant_id = await org(client, f"move-no-{unique}")
    start = await revision_of(client, tenant_id)
    bad = {
        ("org/eu", "org/eu"): ("GATEHOUSE_MOVE_INTO_ITSELF", "to_scope"),
        ("org/eu", "org/eu/sales/x"): ("GATEHOUSE_MOVE_INTO_ITSELF", "to_scope"),
        ("", "org/emea"): ("GATEHOUSE_MOVE_INTO_ITSELF", "to_scope"),
        ("org//eu", "org/emea"): ("GATEHOUSE_INVALID_ARGUMENT", "from_scope"),
        ("org/eu/../us", "org/emea"): ("GATEHOUSE_INVALID_ARGUMENT", "from_scope"),
        ("org/eu", "/org/emea"): ("GATEHOUSE_INVALID_ARGUMENT", "to_scope"),
        ("org/eu", "org/emea/"): ("GATEHOUSE_INVALID_ARGUMENT", "to_scope"),
    }
    for (source, target), (reason, field) in bad.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.admin.MoveScope(move(tenant_id, source, target), metadata=client.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (source, target)
        info, fields = details(caught.value)
        assert (info.reason, fields[0]) == (reason, field), (source, target)
    unknown_policy = await failure(client.admin.MoveScope(move(tenant_id, "org/eu", "org/us", on_conflict=7), metadata=client.auth))
    assert unknown_policy.code() == grpc.StatusCode.INVALID_ARGUMENT and details(unknown_policy)[1] == ["on_conflict"]
    # Nothing there (a typo, or moved already): NOT_FOUND, not a silent no-op.
    nothing = await failure(client.admin.MoveScope(move(tenant_id, "org/eu/sale", "org/us"), metadata=client.auth))
    assert nothing.code() == grpc.StatusCode.NOT_FOUND
    assert details(nothing)[0].reason == "GATEHOUSE_NOTHING_TO_MOVE"
    # A scope that would grow past 1,024 characters (org/eu/sales: 1,020 + 6).
    target = "/".join(["x" * 100] * 10 + ["y" * 10])
    too_long = await failure(client.admin.MoveScope(move(tenant_id, "org/eu", target), metadata=client.auth))
    assert too_long.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(too_long)[0].reason == "GATEHOUSE_MOVED_SCOPE_TOO_LONG"
    # Optimistic concurrency: a stale expected_revision is ABORTED.
    stale = await failure(client.admin.MoveScope(move(tenant_id, "org/eu", "org/us", expected_revision=start - 1), metadata=client.auth))
    assert stale.code() == grpc.StatusCode.ABORTED and details(stale)[0].metadata["current_revision"] == str(start)
    assert await revision_of(client, tenant_id) == start
    assert await assignments(client, tenant_id) == set(ASSIGNMENTS)
    done = await client.admin.MoveScope(move(tenant_id, "org/eu", "org/us", expected_revision=start), metadata=client.auth)
    assert (done.moved, done.revision) == (4, start + 1)


async def failure(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_a_collision_fails_naming_the_first_or_keeps_the_existing_grant(client: Client, unique: str) -> None:
    tenant_id = await org(client, f"move-merge-{unique}")
    await client.grant(tenant_id, user("alice"), "clerk", "org/emea/sales")  # where alice's grant would land
    await client.grant(tenant_id, user("bob"), "boss", "org/emea/sales/team1")
    start = await revision_of(client, tenant_id)
    for policy in (admin_pb2.MOVE_CONFLICT_POLICY_UNSPECIFIED, admin_pb2.MOVE_CONFLICT_POLICY_FAIL):
        error = await failure(client.admin.MoveScope(
            move(tenant_id, "org/eu/sales", "org/emea/sales", on_conflict=policy), metadata=client.auth))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = details(error)
        assert info.reason == "GATEHOUSE_MOVE_CONFLICT"
        assert dict(info.metadata) == {"subject": "user/alice", "role": "clerk", "scope": "org/eu/sales",
                                       "to_scope": "org/emea/sales", "conflicts": "2"}
    assert await revision_of(client, tenant_id) == start

    done = await client.admin.MoveScope(
        move(tenant_id, "org/eu/sales", "org/emea/sales", on_conflict=KEEP_EXISTING), metadata=client.auth)
    assert (done.moved, done.merged, done.revision) == (0, 2, start + 1)
    assert await assignments(client, tenant_id) == {
        ("alice", "clerk", "org/emea/sales"), ("bob", "boss", "org/emea/sales/team1"),
        ("carol", "clerk", "org/eu/salesforce"), ("dave", "clerk", "org/eu"),
    }


async def test_moving_up_over_its_own_rows(client: Client, unique: str) -> None:
    """a/b to a takes a/b/b/c to a/b/c, whose own row leaves for a/c: no conflict, and
    the primary key holds at every step (the rows are parked first)."""
    tenant = await client.tenant(f"move-up-{unique}")
    for scope in ("a/b", "a/b/b", "a/b/b/c", "a/b/c"):
        await client.grant(tenant.id, user("eve"), "viewer", scope)
    await client.grant(tenant.id, user("eve"), "admin", "a/b/c")
    done = await client.admin.MoveScope(move(tenant.id, "a/b", "a"), metadata=client.auth)
    assert (done.moved, done.merged) == (5, 0)
    assert await assignments(client, tenant.id) == {
        ("eve", "viewer", "a"), ("eve", "viewer", "a/b"), ("eve", "viewer", "a/b/c"), ("eve", "viewer", "a/c"),
        ("eve", "admin", "a/c"),
    }
    # Up to the root as well.
    done = await client.admin.MoveScope(move(tenant.id, "a", ""), metadata=client.auth)
    assert await assignments(client, tenant.id) == {
        ("eve", "viewer", ""), ("eve", "viewer", "b"), ("eve", "viewer", "b/c"), ("eve", "viewer", "c"),
        ("eve", "admin", "c"),
    }


async def test_the_escalation_guard_holds_at_both_places(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"move-esc-{unique}")
    for name, permissions in (("delegate", ["gatehouse.*", "invoice.*"]), ("accountant", ["invoice.read"]),
                              ("payroll", ["payroll.*"])):
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name=name, permissions=permissions), metadata=client.auth
        )
    await client.grant(tenant.id, user("al"), "accountant", "emea/de/berlin")
    await client.grant(tenant.id, user("al"), "accountant", "emea/fr")
    await client.grant(tenant.id, user("al"), "payroll", "emea/fr/paris")
    await client.grant(tenant.id, user("al"), "owner", "emea/uk")
    emea = bearer((await key(client, tenant.id, [("delegate", "emea"), ("viewer", "")])).secret)
    de = bearer((await key(client, tenant.id, [("delegate", "emea/de")])).secret)
    start = await revision_of(client, tenant.id)

    # Within what the caller holds at both places: allowed. An API key's role grants are
    # assignments like any other: the `de` key's delegate grant moves too.
    done = await client.admin.MoveScope(move(tenant.id, "emea/de", "emea/germany"), metadata=emea)
    assert done.moved == 2
    # gatehouse.scope.move is needed at the target too (the key holds nothing at apac)...
    await refused(client.admin.MoveScope(move(tenant.id, "emea/germany", "apac/de"), metadata=emea),
                  grpc.StatusCode.PERMISSION_DENIED, "GATEHOUSE_PERMISSION_DENIED")
    # ...and at the source (this key holds delegate at emea/germany only).
    await refused(client.admin.MoveScope(move(tenant.id, "emea/fr", "emea/de/fr"), metadata=de),
                  grpc.StatusCode.PERMISSION_DENIED, "GATEHOUSE_PERMISSION_DENIED")
    # A moved grant the caller does not hold itself (payroll.*): escalation, whole move refused.
    await refused(client.admin.MoveScope(move(tenant.id, "emea/fr", "emea/france"), metadata=emea),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_ESCALATION")
    # An owner grant moves only by an owner (or an operator).
    await refused(client.admin.MoveScope(move(tenant.id, "emea/uk", "emea/gb"), metadata=emea),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_OWNER_REQUIRED")
    assert await revision_of(client, tenant.id) == done.revision == start + 1
    assert await assignments(client, tenant.id) >= {("al", "accountant", "emea/germany/berlin"),
                                                    ("al", "payroll", "emea/fr/paris"), ("al", "owner", "emea/uk")}
    # The operator may move what it likes.
    await client.admin.MoveScope(move(tenant.id, "emea/fr", "emea/france"), metadata=client.auth)


async def test_concurrent_moves_by_a_tenant_key_all_complete(
    sidecar_settings: Settings, operator_token: str, unique: str
) -> None:
    """Moves queue on the tenant's lock, each holding a pool connection; the one holding
    the lock must not need another (its guard once read the caller's grants there, a
    cache miss after the previous move: every move but the first hung to its deadline)."""
    small = Sidecar(dataclasses.replace(sidecar_settings, db_pool_max=2))
    await small.start()
    client = make_client(small.addresses[0], operator_token)
    try:
        tenant = await client.tenant(f"move-pool-{unique}")
        await client.admin.CreateRole(admin_pb2.CreateRoleRequest(
            tenant_id=tenant.id, name="delegate", permissions=["gatehouse.*", "invoice.*"]), metadata=client.auth)
        for i in range(4):
            await client.grant(tenant.id, user(f"u{i}"), "clerk", f"org/u{i}", ["invoice.read"] if i == 0 else None)
        delegate = bearer((await key(client, tenant.id, [("delegate", "")])).secret)
        start = await revision_of(client, tenant.id)
        done = await asyncio.gather(*(
            client.admin.MoveScope(move(tenant.id, f"org/u{i}", f"new/u{i}"), metadata=delegate, timeout=20)
            for i in range(4)
        ))
        assert sorted(d.revision for d in done) == [start + 1, start + 2, start + 3, start + 4]
        assert {s for _, _, s in await assignments(client, tenant.id)} >= {f"new/u{i}" for i in range(4)}
    finally:
        await client.channel.close()
        await small.stop(grace=0)


async def test_the_idempotency_key_makes_one_move(client: Client, unique: str) -> None:
    tenant_id = await org(client, f"move-idem-{unique}")
    metadata = (*client.auth, ("idempotency-key", f"move-{unique}"))
    request = move(tenant_id, "org/eu/sales", "org/emea/sales")
    answers = await asyncio.gather(*(client.admin.MoveScope(request, metadata=metadata) for _ in range(4)))
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    assert answers[0].moved == 2 and await revision_of(client, tenant_id) == answers[0].revision
    # Without the key, the retry finds nothing left to move.
    again = await failure(client.admin.MoveScope(request, metadata=client.auth))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    await refused(client.admin.MoveScope(move(tenant_id, "org/eu", "org/us"), metadata=metadata),
                  grpc.StatusCode.FAILED_PRECONDITION, "GATEHOUSE_IDEMPOTENCY_KEY_REUSED")


# --- against a reference -------------------------------------------------------------

segment = st.sampled_from(["a", "b", "ab"])
scope_path = st.lists(segment, max_size=3).map("/".join)
grant_row = st.tuples(st.sampled_from(["ann", "ben"]), st.sampled_from(["viewer", "admin"]), scope_path)


def reference(rows: set[tuple[str, str, str]], source: str, target: str, keep: bool) -> tuple[str, object]:
    """What MoveScope must do, from the issue's words: ("refused", reason) or
    ("moved", (assignments after, moved, merged))."""
    if scope_covers(source, target):
        return "refused", "GATEHOUSE_MOVE_INTO_ITSELF"
    moving = sorted(r for r in rows if scope_covers(source, r[2]))
    if not moving:
        return "refused", "GATEHOUSE_NOTHING_TO_MOVE"
    stay = rows - set(moving)
    landing = {r: (r[0], r[1], target + r[2][len(source):] if target else r[2][len(source) + 1:]) for r in moving}
    conflicts = [r for r in moving if landing[r] in stay]
    if conflicts and not keep:
        return "refused", ("GATEHOUSE_MOVE_CONFLICT", conflicts[0], len(conflicts))
    after = stay | {landing[r] for r in moving if r not in conflicts}
    return "moved", (after, len(moving) - len(conflicts), len(conflicts))


@settings(max_examples=int(os.environ.get("GATEHOUSE_MOVE_EXAMPLES", "25")), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
@given(rows=st.sets(grant_row, min_size=1, max_size=6), source=scope_path, target=scope_path, keep=st.booleans())
async def test_moves_agree_with_the_reference(
    client: Client, rows: set[tuple[str, str, str]], source: str, target: str, keep: bool
) -> None:
    tenant = await client.tenant(f"mref-{secrets.token_hex(6)}")
    for who, role, scope in sorted(rows):
        await client.grant(tenant.id, user(who), role, scope)
    before = await revision_of(client, tenant.id)
    policy = KEEP_EXISTING if keep else admin_pb2.MOVE_CONFLICT_POLICY_FAIL
    outcome, expected = reference(rows, source, target, keep)
    try:
        done = await client.admin.MoveScope(move(tenant.id, source, target, on_conflict=policy), metadata=client.auth)
    except grpc.aio.AioRpcError as error:
        info, _ = details(error)
        assert outcome == "refused", (error.code(), info.reason, expected)
        if isinstance(expected, tuple):
            reason, (who, role, scope), count = expected
            assert (info.reason, info.metadata["subject"], info.metadata["role"], info.metadata["scope"],
                    info.metadata["conflicts"]) == (reason, f"user/{who}", role, scope, str(count))
        else:
            assert info.reason == expected
        assert await revision_of(client, tenant.id) == before
        assert await assignments(client, tenant.id) == rows
        return
    assert outcome == "moved", expected
    after, moved_count, merged = expected  # type: ignore[misc]
    assert (done.moved, done.merged, done.revision) == (moved_count, merged, before + 1)
    assert await assignments(client, tenant.id) == after
