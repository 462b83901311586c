"""LookupService against a real sidecar, Postgres and Redis.

The differential tests build random tenants (a seeded generator: roles, members, scoped
assignments, an API key with its own limit, a feature-gated plan, lifecycle states),
then hold every lookup answer to what CheckAccess answers for each candidate at the
revision the lookup names: LookupSubjects' set of subjects (every page of it) against a
CheckAccessBatch over every candidate, ListSubjectPermissions' decisions against
CheckAccess field by field. Writes between rounds prove a lookup never answers from an
older roster.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.server.callers import CHECK, LOOKUP
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, lookup_pb2
from tests.client import Client, make_client, user
from tests.server.status import details

Reason = access_pb2.DecisionReason

PATTERNS = ["invoice.*", "invoice.read", "*.read", "report.*", "doc.edit", "*", "doc.*"]
PERMISSIONS = ["invoice.read", "invoice.edit", "report.read", "report.export", "doc.edit", "doc.read"]
SCOPES = ["", "emea", "emea/de", "emea/de/berlin", "emea/dex", "apac"]
USERS = [f"u{i:02d}" for i in range(14)]


@dataclass
class World:
    """One random tenant as built: its id, the candidates to check, and the key subject."""

    tenant_id: str
    candidates: list[common_pb2.Subject] = field(default_factory=list)


async def build(client: Client, rng: random.Random, slug: str, plan: str) -> World:
    tenant = await client.tenant(slug, plan=plan)
    world = World(tenant.id, [user(u) for u in USERS])
    roles = [f"r{i}" for i in range(4)]
    for role in roles:
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name=role, permissions=rng.sample(PATTERNS, rng.randint(1, 3))),
            metadata=client.auth,
        )
    for name in USERS:
        if rng.random() < 0.75:
            await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user(name)), metadata=client.auth)
            for _ in range(rng.randint(0, 3)):
                try:
                    await client.admin.AssignRole(
                        admin_pb2.AssignRoleRequest(
                            tenant_id=tenant.id, subject=user(name), role=rng.choice([*roles, "viewer", "member"]),
                            scope=rng.choice(SCOPES),
                        ),
                        metadata=client.auth,
                    )
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    key = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            tenant_id=tenant.id, name="svc", permissions=rng.sample(PATTERNS, 2),
            roles=[admin_pb2.RoleGrant(role=rng.choice(roles), scope=rng.choice(SCOPES))],
        ),
        metadata=client.auth,
    )
    world.candidates.append(common_pb2.Subject(type="api_key", id=key.key.id))
    return world


async def mutate(client: Client, rng: random.Random, world: World, *, subjects_only: bool = False) -> None:
    """One random write: a grant, a revocation (as removal of a member), a flag flip, a role
    change; `subjects_only`: one of the first two (each changes one subject only, so a kept
    roster is brought forward rather than read again)."""
    tid, auth = world.tenant_id, client.auth
    choice = rng.randrange(2 if subjects_only else 4)
    name = rng.choice(USERS)
    if choice == 0:
        await client.grant(tid, user(name), rng.choice(["r0", "r1", "r2", "r3"]), rng.choice(SCOPES))
    elif choice == 1:
        try:
            await client.admin.RemoveMember(admin_pb2.RemoveMemberRequest(tenant_id=tid, subject=user(name)), metadata=auth)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
    elif choice == 2:
        await client.admin.PatchTenantConfig(
            admin_pb2.PatchTenantConfigRequest(tenant_id=tid, set_flag_overrides={"reports": rng.random() < 0.5}),
            metadata=auth,
        )
    else:
        await client.admin.UpdateRole(
            admin_pb2.UpdateRoleRequest(tenant_id=tid, name=rng.choice(["r0", "r1", "r2", "r3"]),
                                        permissions=rng.sample(PATTERNS, rng.randint(1, 3))),
            metadata=auth,
        )


async def lookup_all(client: Client, tenant_id: str, permission: str, scope: str, page_size: int) -> lookup_pb2.LookupSubjectsResponse:
    """Every page of one listing, joined; asserts each page names the first page's revision."""
    pages = [await client.lookup.LookupSubjects(
        lookup_pb2.LookupSubjectsRequest(tenant_id=tenant_id, permission=permission, scope=scope, page_size=page_size)
    )]
    while pages[-1].next_page_token:
        pages.append(await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
            tenant_id=tenant_id, permission=permission, scope=scope, page_size=page_size,
            page_token=pages[-1].next_page_token,
        )))
        assert pages[-1].revision == pages[0].revision
        assert len(pages) < 100
    joined = lookup_pb2.LookupSubjectsResponse()
    joined.CopyFrom(pages[0])
    for page in pages[1:]:
        joined.subjects.extend(page.subjects)
    joined.next_page_token = ""
    return joined


def checks(world: World, permission: str, scope: str, revision: int) -> access_pb2.CheckAccessBatchRequest:
    return access_pb2.CheckAccessBatchRequest(checks=[
        access_pb2.CheckAccessRequest(
            tenant_id=world.tenant_id, subject=candidate, permission=permission,
            resource=common_pb2.Resource(scope=scope), min_revision=revision,
        )
        for candidate in world.candidates
    ])


SEEN: Counter[str] = Counter()  # what the differential tests met: allowed subjects, denials for all


async def assert_lookups_agree(client: Client, world: World, rng: random.Random) -> int:
    """Every LookupSubjects and ListSubjectPermissions answer equals CheckAccess's; the count of checks compared."""
    compared = 0
    for permission in PERMISSIONS:
        for scope in SCOPES:
            listing = await lookup_all(client, world.tenant_id, permission, scope, page_size=rng.choice([1, 3, 100]))
            answers = (await client.access.CheckAccessBatch(checks(world, permission, scope, listing.revision))).results
            assert {a.revision for a in answers} <= {listing.revision}, "a write landed mid-test"
            looked_up = {(s.subject.type, s.subject.id): (s.granted_by_role, s.granted_at_scope) for s in listing.subjects}
            allowed = {
                (c.type, c.id): (a.granted_by_role, a.granted_at_scope)
                for c, a in zip(world.candidates, answers) if a.allowed
            }
            assert looked_up == allowed, (permission, scope)
            SEEN["allowed"] += len(allowed)
            SEEN[f"denied_for_all={listing.denied_for_all}"] += 1
            keys = [(s.subject.type, s.subject.id) for s in listing.subjects]
            assert keys == sorted(keys) and len(keys) == len(set(keys))
            if listing.denied_for_all:
                assert not looked_up
                reasons = {a.reason for a in answers}
                if listing.denied_for_all == Reason.DECISION_REASON_FEATURE_DISABLED:
                    # Step 5: members are told the feature; non-members (step 4) are not members.
                    assert listing.denied_for_all in reasons and reasons <= {
                        listing.denied_for_all, Reason.DECISION_REASON_NOT_A_MEMBER, Reason.DECISION_REASON_KEY_REVOKED,
                    }
                    assert {a.feature for a in answers if a.reason == listing.denied_for_all} == {listing.feature}
                else:
                    assert reasons == {listing.denied_for_all}
            compared += len(answers)
    for candidate in world.candidates:
        scope = rng.choice(SCOPES)
        listed = await client.lookup.ListSubjectPermissions(lookup_pb2.ListSubjectPermissionsRequest(
            tenant_id=world.tenant_id, subject=candidate, scope=scope, permissions=PERMISSIONS,
        ))
        answers = (await client.access.CheckAccessBatch(checks_for(world, candidate, scope, listed.revision))).results
        assert [d.permission for d in listed.decisions] == PERMISSIONS
        for decision, answer in zip(listed.decisions, answers):
            assert decision.decision == answer, (candidate, decision.permission, scope)
        # The grants listed are the ones covering the scope, and each allow names one of them.
        held = {(g.role, g.scope) for g in listed.grants}
        for decision in listed.decisions:
            if decision.decision.allowed:
                assert (decision.decision.granted_by_role, decision.decision.granted_at_scope) in held
        for grant in listed.grants:
            assert grant.scope == "" or scope == grant.scope or scope.startswith(grant.scope + "/")
            assert grant.condition == "" and not grant.HasField("expires_at")
        compared += len(answers)
    return compared


def checks_for(world: World, subject: common_pb2.Subject, scope: str, revision: int) -> access_pb2.CheckAccessBatchRequest:
    return access_pb2.CheckAccessBatchRequest(checks=[
        access_pb2.CheckAccessRequest(
            tenant_id=world.tenant_id, subject=subject, permission=permission,
            resource=common_pb2.Resource(scope=scope), min_revision=revision,
        )
        for permission in PERMISSIONS
    ])


@pytest.fixture
async def plan(client: Client, unique: str) -> str:
    name = f"lookup-{unique}"
    await client.admin.UpsertPlan(admin_pb2.UpsertPlanRequest(plan=admin_pb2.Plan(
        name=name, features={"reports": admin_pb2.PlanFeature(default_enabled=False, gates=["report.*"])},
    )), metadata=client.auth)
    return name


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lookups_equal_check_access_at_their_revision(
    client: Client, sidecar: Sidecar, unique: str, plan: str, seed: int
) -> None:
    assert sidecar.cache is not None
    advances = sidecar.cache.stats.roster_advances
    rng = random.Random(seed)
    # Two tenants with the same subject ids and role names: neither's answers may mention the other's.
    worlds = [await build(client, rng, f"lk{seed}{side}-{unique}", plan) for side in "ab"]
    compared = 0
    for round_ in range(4):
        for world in worlds:
            compared += await assert_lookups_agree(client, world, rng)
        for _ in range(3):
            await mutate(client, rng, rng.choice(worlds), subjects_only=round_ % 2 == 1)
    if seed == 3:  # the lifecycle decides for everyone: suspended (reads only), then archived
        for action in (client.admin.SuspendTenant, client.admin.ArchiveTenant):
            await action(admin_pb2.TenantTransitionRequest(tenant_id=worlds[0].tenant_id, reason="t"), metadata=client.auth)
            compared += await assert_lookups_agree(client, worlds[0], rng)
    assert compared > 1000
    assert sidecar.cache.stats.roster_advances > advances, "no roster was brought forward: that path went untested"
    print(f"seed {seed}: {compared} checks compared")
    # Not a test that cannot fail: allows and tenant-wide denials were both met.
    assert SEEN["allowed"] > 50 and SEEN[f"denied_for_all={Reason.DECISION_REASON_FEATURE_DISABLED}"] > 0


async def test_pages_are_served_from_one_roster_and_a_write_expires_their_token(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    tenant = await client.tenant(f"pages-{unique}")
    for i in range(7):
        revision = await client.grant(tenant.id, user(f"p{i}"), "reader", "", ["doc.read"] if i == 0 else None)
    request = lookup_pb2.LookupSubjectsRequest(tenant_id=tenant.id, permission="doc.read", page_size=3, min_revision=revision)
    first = await client.lookup.LookupSubjects(request)
    assert cache_loads(sidecar) >= 1
    loads = cache_loads(sidecar)
    second = await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
        tenant_id=tenant.id, permission="doc.read", page_size=3, page_token=first.next_page_token,
    ))
    third = await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
        tenant_id=tenant.id, permission="doc.read", page_size=3, page_token=second.next_page_token,
    ))
    assert cache_loads(sidecar) == loads, "later pages read the roster again"
    ids = [s.subject.id for page in (first, second, third) for s in page.subjects]
    assert ids == [f"p{i}" for i in range(7)] and not third.next_page_token
    assert first.revision == second.revision == third.revision == revision

    # A write: the token's revision is no longer served.
    await client.grant(tenant.id, user("late"), "reader", "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
            tenant_id=tenant.id, permission="doc.read", page_size=3, page_token=first.next_page_token,
        ))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(raised.value)
    assert info.reason == "GATEHOUSE_PAGE_TOKEN_EXPIRED"
    assert info.metadata["token_revision"] == str(revision) and int(info.metadata["current_revision"]) > revision

    # A token of another listing is no token of this one.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(
            tenant_id=tenant.id, permission="doc.write", page_size=3, page_token=first.next_page_token,
        ))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(raised.value)[1] == ["page_token"]


def cache_loads(sidecar: Sidecar) -> int:
    assert sidecar.cache is not None
    return sidecar.cache.stats.roster_loads


async def test_min_revision_and_unknown_tenants(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"lkmin-{unique}")
    revision = await client.grant(tenant.id, user("a"), "reader", "", ["doc.read"])
    for call, request in (
        (client.lookup.LookupSubjects,
         lookup_pb2.LookupSubjectsRequest(tenant_id=tenant.id, permission="doc.read", min_revision=revision + 5)),
        (client.lookup.ListSubjectPermissions,
         lookup_pb2.ListSubjectPermissionsRequest(tenant_id=tenant.id, subject=user("a"), min_revision=revision + 5)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details(raised.value)[0].reason == "GATEHOUSE_REVISION_NOT_REACHED"
    missing = "00000000-0000-4000-8000-00000000beef"
    none = await client.lookup.LookupSubjects(lookup_pb2.LookupSubjectsRequest(tenant_id=missing, permission="doc.read"))
    assert none.denied_for_all == Reason.DECISION_REASON_TENANT_NOT_FOUND and not none.subjects and none.revision == 0
    listed = await client.lookup.ListSubjectPermissions(lookup_pb2.ListSubjectPermissionsRequest(
        tenant_id=missing, subject=user("a"), permissions=["doc.read"],
    ))
    assert not listed.member and not listed.grants and listed.revision == 0
    assert listed.decisions[0].decision.reason == Reason.DECISION_REASON_TENANT_NOT_FOUND


async def test_list_subject_permissions_lists_grants_and_the_key_limit(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"lkperm-{unique}")
    await client.grant(tenant.id, user("al"), "billing", "emea/de", ["invoice.*"])
    revision = await client.grant(tenant.id, user("al"), "viewer", "")
    everything = await client.lookup.ListSubjectPermissions(
        lookup_pb2.ListSubjectPermissionsRequest(tenant_id=tenant.id, subject=user("al"), min_revision=revision)
    )
    assert everything.member and everything.revision == revision
    assert [(g.role, g.scope, list(g.permissions)) for g in everything.grants] == [
        ("viewer", "", ["*.get", "*.list", "*.read"]), ("billing", "emea/de", ["invoice.*"]),
    ]
    apac = await client.lookup.ListSubjectPermissions(lookup_pb2.ListSubjectPermissionsRequest(
        tenant_id=tenant.id, subject=user("al"), scope="apac", permissions=["invoice.edit", "invoice.read"],
    ))
    assert [g.role for g in apac.grants] == ["viewer"]
    assert [d.decision.allowed for d in apac.decisions] == [False, True]

    key = await client.admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(
        tenant_id=tenant.id, name="k", permissions=["invoice.read"], roles=[admin_pb2.RoleGrant(role="billing")],
    ), metadata=client.auth)
    listed = await client.lookup.ListSubjectPermissions(lookup_pb2.ListSubjectPermissionsRequest(
        tenant_id=tenant.id, subject=common_pb2.Subject(type="api_key", id=key.key.id),
        permissions=["invoice.read", "invoice.edit"],
    ))
    assert listed.member and list(listed.limited_to) == ["invoice.read"]
    assert [d.decision.allowed for d in listed.decisions] == [True, False]


async def test_bad_input_names_the_field(client: Client) -> None:
    bad = [
        (client.lookup.LookupSubjects, lookup_pb2.LookupSubjectsRequest(tenant_id="nope", permission="Bad!"),
         ["tenant_id", "permission"]),
        (client.lookup.LookupSubjects,
         lookup_pb2.LookupSubjectsRequest(tenant_id="00000000-0000-4000-8000-000000000001", permission="a.b",
                                          scope="a//b", page_size=-1),
         ["scope", "page_size"]),
        (client.lookup.ListSubjectPermissions,
         lookup_pb2.ListSubjectPermissionsRequest(tenant_id="00000000-0000-4000-8000-000000000001",
                                                  subject=user(""), scope="..", permissions=["ok.read", "x y"]),
         ["subject.id", "scope", "permissions[1]"]),
    ]
    for call, request, fields in bad:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(raised.value)[1] == fields


async def test_list_tenants_for_subject_is_for_operators_and_the_subject_itself(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    a = await client.tenant(f"lkta-{unique}")
    b = await client.tenant(f"lktb-{unique}")
    who = user(f"roamer-{unique}")
    await client.grant(a.id, who, "viewer", "")
    await client.grant(b.id, who, "viewer", "")
    listed = await client.lookup.ListTenantsForSubject(
        lookup_pb2.ListTenantsForSubjectRequest(subject=who), metadata=client.auth
    )
    assert [(m.tenant_id, m.tenant_slug) for m in listed.memberships] == [(a.id, a.slug), (b.id, b.slug)]
    assert all(m.revision > 0 and m.tenant_status == 2 for m in listed.memberships)

    # No credential: refused whatever GATEHOUSE_CALLER_CREDENTIALS says.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.lookup.ListTenantsForSubject(lookup_pb2.ListTenantsForSubjectRequest(subject=who))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A tenant key may list its own memberships, and nobody else's.
    key = await client.tenant_key(a.id, "doc.read")
    own = make_client(sidecar.addresses[0], key.secret)
    try:
        mine = await own.lookup.ListTenantsForSubject(lookup_pb2.ListTenantsForSubjectRequest(
            subject=common_pb2.Subject(type="api_key", id=key.key.id)), metadata=own.auth)
        assert [m.tenant_id for m in mine.memberships] == [a.id]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await own.lookup.ListTenantsForSubject(lookup_pb2.ListTenantsForSubjectRequest(subject=who), metadata=own.auth)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await own.channel.close()


async def test_a_subject_write_advances_the_roster_and_a_tenant_write_reads_it_again(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    assert sidecar.cache is not None
    stats = sidecar.cache.stats
    tenant = await client.tenant(f"advance-{unique}")
    for name in ("a", "b", "c"):
        revision = await client.grant(tenant.id, user(name), "reader", "", ["doc.read"] if name == "a" else None)

    async def listed(min_revision: int) -> list[str]:
        answer = await client.lookup.LookupSubjects(
            lookup_pb2.LookupSubjectsRequest(tenant_id=tenant.id, permission="doc.read", min_revision=min_revision)
        )
        assert answer.revision == min_revision
        return [s.subject.id for s in answer.subjects]

    assert await listed(revision) == ["a", "b", "c"]
    loads, advances = stats.roster_loads, stats.roster_advances
    # Subject writes only (a member added and granted, one removed): the roster is brought
    # forward from just those subjects, its listing patched.
    await client.grant(tenant.id, user("d"), "reader", "")
    revision = (await client.admin.RemoveMember(
        admin_pb2.RemoveMemberRequest(tenant_id=tenant.id, subject=user("b")), metadata=client.auth
    )).revision
    assert await listed(revision) == ["a", "c", "d"]
    assert (stats.roster_loads, stats.roster_advances) == (loads, advances + 1)
    # A tenant-wide write (the role's permissions): read whole again.
    revision = (await client.admin.UpdateRole(admin_pb2.UpdateRoleRequest(
        tenant_id=tenant.id, name="reader", permissions=["doc.write"]), metadata=client.auth)).revision
    assert await listed(revision) == []
    assert (stats.roster_loads, stats.roster_advances) == (loads + 1, advances + 1)


@pytest.fixture
async def guarded(sidecar_settings: Settings, operator_token: str) -> AsyncIterator[Client]:
    """A second sidecar on the same database and Redis prefix that requires callers."""
    other = Sidecar(dataclasses.replace(sidecar_settings, caller_credentials="required"))
    await other.start()
    client = make_client(other.addresses[0], operator_token)
    yield client
    await client.channel.close()
    await other.stop(grace=0)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_callers_need_check_for_permissions_and_lookup_for_subjects(
    client: Client, guarded: Client, unique: str
) -> None:
    mine = await client.tenant(f"lkcall-{unique}")
    other = await client.tenant(f"lkcallo-{unique}")
    for tenant in (mine, other):
        await client.grant(tenant.id, user("al"), "viewer", "")

    def permissions(tenant_id: str) -> lookup_pb2.ListSubjectPermissionsRequest:
        return lookup_pb2.ListSubjectPermissionsRequest(tenant_id=tenant_id, subject=user("al"), permissions=["x.read"])

    def subjects(tenant_id: str) -> lookup_pb2.LookupSubjectsRequest:
        return lookup_pb2.LookupSubjectsRequest(tenant_id=tenant_id, permission="x.read")

    tenants = lookup_pb2.ListTenantsForSubjectRequest(subject=user("al"))
    keys = {}
    for name, patterns in (("check", [CHECK]), ("lookup", [LOOKUP])):
        created = await client.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(name=f"{name}-{unique}", permissions=patterns), metadata=client.auth
        )
        keys[name] = (("authorization", f"Bearer {created.secret}"),)
    none: tuple[tuple[str, str], ...] = ()
    expected = [
        (guarded.lookup.ListSubjectPermissions(permissions(mine.id), metadata=none), grpc.StatusCode.UNAUTHENTICATED),
        (guarded.lookup.LookupSubjects(subjects(mine.id), metadata=none), grpc.StatusCode.UNAUTHENTICATED),
        (guarded.lookup.ListSubjectPermissions(permissions(mine.id), metadata=keys["check"]), grpc.StatusCode.OK),
        (guarded.lookup.LookupSubjects(subjects(mine.id), metadata=keys["check"]), grpc.StatusCode.PERMISSION_DENIED),
        (guarded.lookup.ListTenantsForSubject(tenants, metadata=keys["check"]), grpc.StatusCode.PERMISSION_DENIED),
        (guarded.lookup.LookupSubjects(subjects(mine.id), metadata=keys["lookup"]), grpc.StatusCode.OK),
        (guarded.lookup.ListTenantsForSubject(tenants, metadata=keys["lookup"]), grpc.StatusCode.OK),
        (guarded.lookup.ListSubjectPermissions(permissions(mine.id), metadata=keys["lookup"]),
         grpc.StatusCode.PERMISSION_DENIED),
    ]
    for index, (call, code) in enumerate(expected):
        assert await code_of(call) == code, index
    # A tenant key holding gatehouse.access.lookup through a role: its own tenant only.
    created = await client.tenant_key(mine.id, LOOKUP)
    key = (("authorization", f"Bearer {created.secret}"),)
    assert [s.subject.id for s in (await guarded.lookup.LookupSubjects(subjects(mine.id), metadata=key)).subjects] == ["al"]
    assert await code_of(guarded.lookup.LookupSubjects(subjects(other.id), metadata=key)) == grpc.StatusCode.PERMISSION_DENIED
