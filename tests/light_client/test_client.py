"""The light client (clients/python) against a real `gatehouse serve`: both flavours,
every AdminService helper, the credential, error details, idempotency, unix socket."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gatehouse_client import ADMIN_METHODS, AsyncClient, Client, Decision, GatehouseError
from gatehouse_client.v1 import admin_pb2, common_pb2
from tests.served import Served


async def test_every_admin_service_method_has_a_helper_in_both_flavours() -> None:
    methods = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods
    assert len(ADMIN_METHODS) == len(methods) == 28
    assert {m.name for m in ADMIN_METHODS.values()} == {m.name for m in methods}
    # Nothing is dialled until a call is made.
    with Client("127.0.0.1:9") as blocking:
        async with AsyncClient("127.0.0.1:9") as asynchronous:
            for name, method in ADMIN_METHODS.items():
                for admin in (blocking.admin, asynchronous.admin):
                    assert getattr(admin, name).__name__ == name
                assert method.mutation == (not method.name.startswith(("Get", "List"))), name


def test_a_tenant_from_creation_to_a_decision(served: Served, unique: str) -> None:
    with Client(served.address, key=served.key) as gh:
        tenant = gh.admin.create_tenant(slug=f"acme-{unique}", name="Acme")
        assert tenant.status == common_pb2.TENANT_STATUS_DRAFT
        gh.admin.activate_tenant(tenant_id=tenant.id, reason="launch")
        gh.admin.create_role(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"])
        gh.admin.add_member(tenant_id=tenant.id, subject="user:alice")
        assigned = gh.admin.assign_role(tenant_id=tenant.id, subject=("user", "alice"), role="accountant", scope="emea")

        decision = gh.check(tenant.id, "user:alice", "invoice.read", scope="emea/de", resource_type="invoice")
        assert decision == Decision(True, "ALLOWED", assigned.revision, "accountant", "emea", "")
        assert decision
        denied = gh.check(tenant.id, "user:alice", "invoice.read", scope="apac")
        assert not denied and denied.reason == "NO_GRANT"
        many = gh.check_many([
            {"tenant_id": tenant.id, "subject": "user:alice", "permission": "invoice.write", "scope": "emea"},
            (tenant.id, "user:bob", "invoice.read"),
        ])
        assert [(d.allowed, d.reason) for d in many] == [(True, "ALLOWED"), (False, "NOT_A_MEMBER")]

        config = gh.config(tenant.id)
        assert (config.slug, config.revision) == (f"acme-{unique}", assigned.revision)
        roles = gh.admin.list_roles(tenant_id=tenant.id)
        assert "accountant" in [role.name for role in roles.roles]
        assert gh.admin.resolve_tenant(f"acme-{unique}").id == tenant.id
        assert gh.admin.resolve_tenant(tenant.id).slug == f"acme-{unique}"

        # An org-unit move; the client's next check reads at least the revision it made.
        moved = gh.admin.move_scope(tenant_id=tenant.id, from_scope="emea", to_scope="europe")
        assert (moved.moved, moved.merged, moved.revision) == (1, 0, assigned.revision + 1)
        assert gh.check(tenant.id, "user:alice", "invoice.read", scope="europe/de").revision == moved.revision
        assert not gh.check(tenant.id, "user:alice", "invoice.read", scope="emea/de")

        # New terms for a held grant, in one write; the next check answers by them.
        replaced = gh.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="accountant", scope="europe",
                                        condition="context.ok == true", on_existing="EXISTING_GRANT_POLICY_REPLACE")
        assert replaced.revision == moved.revision + 1
        assert not gh.check(tenant.id, "user:alice", "invoice.read", scope="europe/de", context={"ok": False})
        assert gh.check(tenant.id, "user:alice", "invoice.read", scope="europe/de", context={"ok": True})


def test_errors_carry_code_reason_and_field(served: Served, unique: str) -> None:
    with Client(served.address, key=served.key) as gh:
        with pytest.raises(GatehouseError) as bad:
            gh.admin.create_tenant(slug="A!", name="x")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.field == "slug" and bad.value.reason.startswith("GATEHOUSE_")
        gh.admin.create_tenant(slug=f"twice-{unique}", name="Twice")
        with pytest.raises(GatehouseError) as taken:
            gh.admin.create_tenant(slug=f"twice-{unique}", name="Twice")
        assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS and taken.value.reason.startswith("GATEHOUSE_")
        assert "ALREADY_EXISTS" in str(taken.value)
        with pytest.raises(GatehouseError) as missing:
            gh.admin.resolve_tenant(f"no-such-{unique}")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_the_key_comes_from_the_environment_unless_given(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEHOUSE_KEY", served.key)
    with Client(served.address) as gh:
        gh.admin.list_plans()
    monkeypatch.delenv("GATEHOUSE_KEY")
    with Client(served.address) as gh, pytest.raises(GatehouseError) as anonymous:
        gh.admin.list_plans()
    assert anonymous.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(served.address, key="gh_0123456789abcdef_wrong") as gh, pytest.raises(GatehouseError) as wrong:
        gh.admin.list_plans()
    assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_mutation_gets_an_idempotency_key_of_its_own_unless_given(served: Served, unique: str) -> None:
    with Client(served.address, key=served.key) as gh:
        first = gh.admin.create_tenant(slug=f"idem-{unique}", name="Idem", idempotency_key=f"k-{unique}")
        replay = gh.admin.create_tenant(slug=f"idem-{unique}", name="Idem", idempotency_key=f"k-{unique}")
        assert replay.id == first.id
        with pytest.raises(GatehouseError) as again:  # a fresh key: a second create
            gh.admin.create_tenant(slug=f"idem-{unique}", name="Idem")
        assert again.value.code == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(GatehouseError) as reused:
            gh.admin.create_tenant(slug=f"other-{unique}", name="Other", idempotency_key=f"k-{unique}")
        assert reused.value.reason == "GATEHOUSE_IDEMPOTENCY_KEY_REUSED"


def test_a_unix_socket(served: Served, unique: str) -> None:
    with Client(served.unix, key=served.key) as gh:
        tenant = gh.admin.create_tenant(slug=f"unix-{unique}", name="Unix")
        assert gh.check(tenant.id, "user:alice", "x.read").reason == "TENANT_INACTIVE"


def test_a_request_message_or_fields_not_both(served: Served) -> None:
    with Client(served.address, key=served.key) as gh:
        assert gh.admin.list_plans(admin_pb2.ListPlansRequest()).plans is not None
        with pytest.raises(TypeError):
            gh.admin.list_plans(admin_pb2.ListPlansRequest(), page_size=3)
        with pytest.raises(TypeError):
            gh.admin.list_plans(admin_pb2.ListTenantsRequest())
        with pytest.raises(ValueError, match="TYPE:ID"):
            gh.check("t", "alice", "x.read")


async def test_the_async_client(served: Served, unique: str) -> None:
    async with AsyncClient(served.address, key=served.key) as gh:
        tenant = await gh.admin.create_tenant(slug=f"async-{unique}", name="Async")
        await gh.admin.activate_tenant(tenant_id=tenant.id, reason="launch")
        await gh.admin.add_member(tenant_id=tenant.id, subject="user:alice")
        assigned = await gh.admin.assign_role(tenant_id=tenant.id, subject="user:alice", role="viewer", scope="")
        decision = await gh.check(tenant.id, "user:alice", "tenant.read")
        assert decision.revision == assigned.revision and gh.policy.revision(tenant.id) == assigned.revision
        many = await gh.check_many([(tenant.id, "user:alice", "tenant.read"), (tenant.id, "user:eve", "tenant.read")])
        assert [d.reason for d in many] == [decision.reason, "NOT_A_MEMBER"]
        assert (await gh.config(tenant.id)).revision == assigned.revision
        assert (await gh.admin.resolve_tenant(f"async-{unique}")).id == tenant.id
        with pytest.raises(GatehouseError) as bad:
            await gh.admin.add_member(tenant_id=tenant.id, subject=("user", ""))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and bad.value.field.startswith("subject")

        seen = []
        async for config in gh.watch_config(tenant.id):
            seen.append(config.revision)
            if len(seen) == 1:
                await gh.admin.patch_tenant_config(tenant_id=tenant.id, settings_patch={"theme": "dark"})
            else:
                break
        assert seen[1] > seen[0]


def test_tenants_for_subject_follows_every_page(served: Served, unique: str) -> None:
    who = f"user:pager-{unique}"
    slugs = [f"pages-{unique}-{letter}" for letter in "abc"]
    with Client(served.address, key=served.key) as gh:
        for slug in slugs:
            tenant = gh.admin.create_tenant(slug=slug, name="Pages")
            gh.admin.add_member(tenant_id=tenant.id, subject=who)
        assert [m.tenant_slug for m in gh.tenants_for_subject(who, page_size=1)] == slugs
        assert [m.tenant_slug for m in gh.tenants_for_subject(who, page_size=2)] == slugs

    async def asynchronous() -> list[str]:
        async with AsyncClient(served.address, key=served.key) as agh:
            return [m.tenant_slug for m in await agh.tenants_for_subject(who, page_size=2)]

    assert asyncio.run(asynchronous()) == slugs


def test_lookups_in_both_flavours(served: Served, unique: str) -> None:
    with Client(served.address, key=served.key) as gh:
        tenant = gh.admin.create_tenant(slug=f"lookup-{unique}", name="Lookup")
        gh.admin.activate_tenant(tenant_id=tenant.id, reason="launch")
        gh.admin.create_role(tenant_id=tenant.id, name="accountant", permissions=["invoice.*"])
        for name in ("alice", "bob", "carol"):
            gh.admin.add_member(tenant_id=tenant.id, subject=f"user:{name}")
            written = gh.admin.assign_role(tenant_id=tenant.id, subject=f"user:{name}", role="accountant", scope="emea")
        # Read-your-writes: the client's own last write is the floor, so all three are there.
        everyone = gh.lookup_subjects(tenant.id, "invoice.read", scope="emea/de", page_size=1)
        assert [s.subject.id for s in everyone.subjects] == ["alice", "bob", "carol"]
        assert everyone.revision == written.revision and not everyone.next_page_token
        assert not gh.lookup_subjects(tenant.id, "invoice.read", scope="apac").subjects
        mine = gh.permissions(tenant.id, "user:alice", scope="emea/de", permissions=["invoice.read", "report.read"])
        assert [g.role for g in mine.grants] == ["accountant"]
        assert [d.decision.allowed for d in mine.decisions] == [True, False]
        assert tenant.id in [m.tenant_id for m in gh.tenants_for_subject("user:alice")]  # other tests' alices too
        # Conditions: a conditional grant lists dave as conditional, allowed once the owner is given.
        gh.admin.add_member(tenant_id=tenant.id, subject="user:dave")
        gh.admin.assign_role(tenant_id=tenant.id, subject="user:dave", role="accountant", scope="apac",
                             condition="resource.attributes.owner == subject.id")
        apac = gh.lookup_subjects(tenant.id, "invoice.read", scope="apac")
        assert [(s.subject.id, s.conditional, list(s.missing_attributes)) for s in apac.conditional_subjects] == [
            ("dave", True, ["resource.attributes.owner"])]
        owned = gh.lookup_subjects(tenant.id, "invoice.read", scope="apac", resource_attributes={"owner": "dave"})
        assert [(s.subject.id, s.conditional, s.granted_by_role) for s in owned.subjects] == [("dave", False, "accountant")]
        theirs = gh.permissions(tenant.id, "user:dave", scope="apac", permissions=["invoice.read"],
                                resource_attributes={"owner": "dave"})
        assert theirs.grants[0].condition and theirs.decisions[0].decision.allowed

    async def asynchronous() -> None:
        async with AsyncClient(served.address, key=served.key) as agh:
            listed = await agh.lookup_subjects(tenant.id, "invoice.edit", scope="emea", page_size=2)
            assert [s.subject.id for s in listed.subjects] == ["alice", "bob", "carol"]
            mine = await agh.permissions(tenant.id, ("user", "bob"), permissions=["invoice.read"])
            assert mine.member and not mine.decisions[0].decision.allowed  # at the root, outside emea
            assert f"lookup-{unique}" in [m.tenant_slug for m in await agh.tenants_for_subject("user:bob")]
            conditional = await agh.lookup_subjects(tenant.id, "invoice.read", scope="apac", context={"x": 1})
            assert [s.conditional for s in conditional.conditional_subjects] == [True] and not conditional.subjects
            dave = await agh.permissions(tenant.id, "user:dave", scope="apac", permissions=["invoice.read"],
                                         subject_attributes={"level": 1})
            assert dave.decisions[0].decision.reason == 9  # CONDITIONAL: the owner is not given

    asyncio.run(asynchronous())


def test_a_listing_starts_again_when_its_page_token_expires_and_only_then() -> None:
    from gatehouse_client.calls import LISTING_RESTARTS, Listing
    from gatehouse_client.v1 import lookup_pb2

    first = lookup_pb2.LookupSubjectsRequest(tenant_id="t", permission="a.read", page_size=1)
    listing = Listing(first)
    listing.add(lookup_pb2.LookupSubjectsResponse(
        subjects=[lookup_pb2.LookedUpSubject(subject=common_pb2.Subject(type="user", id="a"))],
        revision=4, next_page_token="tok",
    ))
    assert listing.request is not None and listing.request.page_token == "tok"
    expired = GatehouseError(grpc.StatusCode.FAILED_PRECONDITION, "moved on", reason="GATEHOUSE_PAGE_TOKEN_EXPIRED")
    listing.restart(expired)
    assert listing.request == first and not listing.answer.subjects
    with pytest.raises(GatehouseError):
        listing.restart(GatehouseError(grpc.StatusCode.UNAVAILABLE, "down"))
    for _ in range(LISTING_RESTARTS - 1):
        listing.restart(expired)
    with pytest.raises(GatehouseError):
        listing.restart(expired)
    listing.add(lookup_pb2.LookupSubjectsResponse(revision=5))
    assert listing.request is None
