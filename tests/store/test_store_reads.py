"""The read path the cache loads on a miss: one tenant's snapshot, one subject's grants,
never anything from another tenant."""

from __future__ import annotations

import pytest

from gatehouse.engine.model import AssignmentRow, SubjectRef, TenantStatus
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory

ALICE = SubjectRef("user", "alice")
MISSING = ["00000000-0000-0000-0000-000000000000", "acme", "", "1' OR '1'='1"]


async def test_load_tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory) -> None:
    tenant = await make_tenant()
    snapshot = await store.load_tenant(tenant.id)
    assert snapshot is not None
    assert snapshot.tenant == tenant
    assert snapshot.plan.name == tenant.plan
    assert snapshot.revision == 1
    assert snapshot.tenant.status is TenantStatus.DRAFT


@pytest.mark.parametrize("missing", MISSING)
async def test_unknown_or_malformed_tenant_ids_are_a_miss(store: PostgresStore, missing: str) -> None:
    assert await store.load_tenant(missing) is None
    assert await store.load_subject(missing, ALICE) is None


async def test_load_subject_returns_its_grants_at_the_current_revision(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    snapshot = await store.load_subject(tenant.id, ALICE)
    assert snapshot is not None
    assert (snapshot.is_member, snapshot.assignments, snapshot.revision) == (False, (), 1)

    await store.create_role(actor, tenant.id, name="editor", permissions=("doc.read", "doc.edit"), description="")
    await store.add_member(actor, tenant.id, ALICE)
    snapshot = await store.load_subject(tenant.id, ALICE)
    assert snapshot is not None and (snapshot.is_member, snapshot.assignments) == (True, ())

    await store.assign_role(actor, tenant.id, ALICE, role="editor", scope="emea/de")
    _, revision = await store.assign_role(actor, tenant.id, ALICE, role="viewer", scope="")
    snapshot = await store.load_subject(tenant.id, ALICE)
    assert snapshot is not None
    assert snapshot.revision == revision
    assert snapshot.tenant_id == tenant.id and snapshot.subject == ALICE
    assert snapshot.assignments == (
        AssignmentRow("editor", "emea/de", ("doc.read", "doc.edit")),
        AssignmentRow("viewer", "", ("*.read", "*.list", "*.get")),
    )

    # A role's new permissions show up in every grant of it.
    _, revision = await store.update_role(
        actor, tenant.id, name="editor", permissions=("doc.*",), description="", expected_revision=0
    )
    snapshot = await store.load_subject(tenant.id, ALICE)
    assert snapshot is not None and snapshot.revision == revision
    assert snapshot.assignments[0] == AssignmentRow("editor", "emea/de", ("doc.*",))


async def test_colliding_subjects_and_role_names_stay_in_their_tenant(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> None:
    a, b = await make_tenant("a"), await make_tenant("b")
    # Same role name, same subject id, different meaning in each tenant.
    await store.create_role(actor, a.id, name="editor", permissions=("doc.read",), description="")
    await store.create_role(actor, b.id, name="editor", permissions=("*",), description="")
    await store.add_member(actor, a.id, ALICE)
    await store.add_member(actor, b.id, ALICE)
    await store.assign_role(actor, a.id, ALICE, role="editor", scope="emea")
    await store.assign_role(actor, b.id, ALICE, role="editor", scope="")
    await store.assign_role(actor, b.id, ALICE, role="admin", scope="")
    # Bob is a member of B only.
    bob = SubjectRef("user", "bob")
    await store.add_member(actor, b.id, bob)
    # A service account that shares alice's id is another subject.
    await store.add_member(actor, a.id, SubjectRef("service", "alice"))

    in_a = await store.load_subject(a.id, ALICE)
    assert in_a is not None
    assert in_a.assignments == (AssignmentRow("editor", "emea", ("doc.read",)),)
    in_b = await store.load_subject(b.id, ALICE)
    assert in_b is not None
    assert in_b.assignments == (AssignmentRow("admin", "", ("*",)), AssignmentRow("editor", "", ("*",)))
    bob_in_a = await store.load_subject(a.id, bob)
    assert bob_in_a is not None and not bob_in_a.is_member
    service_in_a = await store.load_subject(a.id, SubjectRef("service", "alice"))
    assert service_in_a is not None and service_in_a.is_member and service_in_a.assignments == ()

    # And the admin listings of A show nothing of B.
    roles, _ = await store.list_roles(a.id)
    assert {r.tenant_id for r in roles} == {a.id}
    assert [r.permissions for r in roles if r.name == "editor"] == [("doc.read",)]
    members = await store.list_members(a.id, page_size=100, page_token="")
    assert {m.subject.key for m in members.items} == {"user/alice", "service/alice"}
