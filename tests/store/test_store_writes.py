"""The write contract: every mutation bumps the tenant revision by exactly one and writes
exactly one audit row and one outbox event carrying that revision, in one transaction;
and the rules each mutation enforces under the tenant lock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import pytest

from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import SubjectRef, TenantRecord
from gatehouse.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotAMember,
    NotFound,
    RevisionConflict,
    RoleInUse,
    SystemRoleImmutable,
    TenantNotFound,
    TenantNotWritable,
)
from gatehouse.store.api import SYSTEM_ROLES, Actor, ConfigPatch, MovedGrant, ScopeMove
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory, written

BOB = SubjectRef("user", "bob")
CAROL = SubjectRef("user", "carol")


@dataclass(frozen=True)
class Mutation:
    """One store mutation, and the audit action / outbox kind and subject it must write."""

    run: Callable[[PostgresStore, Actor, str], Awaitable[int]]
    action: str
    kind: str
    subject: str | None = None


async def _revision_of(record: Awaitable[TenantRecord]) -> int:
    return (await record).revision


async def _second(pair: Awaitable[tuple[object, int]]) -> int:
    return (await pair)[1]


async def _revision_of_move(move: Awaitable[ScopeMove]) -> int:
    return (await move).revision


async def _allow(grants: Sequence[MovedGrant]) -> None:
    return None


MUTATIONS: dict[str, Mutation] = {
    "update_tenant": Mutation(
        lambda s, a, t: _revision_of(
            s.update_tenant(a, t, expected_revision=0, name="Renamed", plan=None, region=None)
        ),
        "tenant.update",
        "tenant",
    ),
    "transition_tenant": Mutation(
        lambda s, a, t: _revision_of(
            s.transition_tenant(a, t, Action.ACTIVATE, reason="launch", expected_revision=0, confirm=False)
        ),
        "tenant.activate",
        "tenant",
    ),
    "patch_tenant_config": Mutation(
        lambda s, a, t: _revision_of(
            s.patch_tenant_config(a, t, ConfigPatch(settings_patch={"theme": "dark"}), expected_revision=0)
        ),
        "tenant.config.patch",
        "config",
    ),
    "create_role": Mutation(
        lambda s, a, t: _second(s.create_role(a, t, name="auditor", permissions=("audit.read",), description="")),
        "role.create",
        "role",
    ),
    "update_role": Mutation(
        lambda s, a, t: _second(
            s.update_role(a, t, name="editor", permissions=("doc.*",), description="edits", expected_revision=0)
        ),
        "role.update",
        "role",
    ),
    "delete_role": Mutation(lambda s, a, t: s.delete_role(a, t, name="spare"), "role.delete", "role"),
    "add_member": Mutation(
        lambda s, a, t: _second(s.add_member(a, t, CAROL)), "member.add", "membership", "user/carol"
    ),
    "remove_member": Mutation(lambda s, a, t: s.remove_member(a, t, BOB), "member.remove", "membership", "user/bob"),
    "assign_role": Mutation(
        lambda s, a, t: _second(s.assign_role(a, t, BOB, role="viewer", scope="emea")),
        "role.assign",
        "assignment",
        "user/bob",
    ),
    # A grant held already (bob's editor at the root) given new terms: one write too.
    "assign_role_replacing": Mutation(
        lambda s, a, t: _second(
            s.assign_role(a, t, BOB, role="editor", scope="", condition="context.ok == true", replace=True)
        ),
        "role.assign",
        "assignment",
        "user/bob",
    ),
    "revoke_role": Mutation(
        lambda s, a, t: s.revoke_role(a, t, BOB, role="editor", scope=""), "role.revoke", "assignment", "user/bob"
    ),
    # Tenant-wide: every subject holding a moved grant is concerned.
    "move_scope": Mutation(
        lambda s, a, t: _revision_of_move(
            s.move_scope(a, t, from_scope="emea", to_scope="apac", keep_existing=False, guard=_allow)
        ),
        "scope.move",
        "assignment",
    ),
}


@pytest.fixture
async def tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory) -> TenantRecord:
    """A tenant with custom roles `editor` (held by bob at the root) and `spare` (unused);
    bob is a viewer at emea/de."""
    created = await make_tenant()
    await store.create_role(actor, created.id, name="editor", permissions=("doc.edit",), description="")
    await store.create_role(actor, created.id, name="spare", permissions=(), description="")
    await store.add_member(actor, created.id, BOB)
    await store.assign_role(actor, created.id, BOB, role="editor", scope="")
    await store.assign_role(actor, created.id, BOB, role="viewer", scope="emea/de")
    return await store.get_tenant(created.id)


async def test_create_tenant_writes_revision_one_with_its_events(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, make_tenant: TenantFactory
) -> None:
    created = await make_tenant()
    assert created.revision == 1
    seen = await written(superuser, created.id)
    assert [(row["action"], row["actor"], row["request_id"]) for row in seen.audit] == [
        ("tenant.create", actor.id, actor.request_id)
    ]
    assert [(row["revision"], row["kind"], row["subject"]) for row in seen.outbox] == [(1, "tenant", None)]
    roles, revision = await store.list_roles(created.id)
    assert revision == 1
    assert {(role.name, role.permissions, role.system) for role in roles} == {
        (name, permissions, True) for name, permissions in SYSTEM_ROLES.items()
    }


@pytest.mark.parametrize("name", sorted(MUTATIONS))
async def test_each_mutation_bumps_once_and_writes_one_audit_row_and_one_event(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord, name: str
) -> None:
    mutation = MUTATIONS[name]
    before = await written(superuser, tenant.id)

    revision = await mutation.run(store, actor, tenant.id)

    after = await written(superuser, tenant.id)
    assert revision == after.revision == tenant.revision + 1
    new_audit = after.audit[len(before.audit) :]
    new_events = after.outbox[len(before.outbox) :]
    assert [(r["action"], r["actor"], r["request_id"], r["outcome"]) for r in new_audit] == [
        (mutation.action, actor.id, actor.request_id, "ok")
    ]
    assert [(r["revision"], r["kind"], r["subject"]) for r in new_events] == [
        (revision, mutation.kind, mutation.subject)
    ]
    assert new_events[0]["payload"]["action"] == mutation.action


async def test_a_mutation_notifies_the_outbox_channel(
    store: PostgresStore, actor: Actor, database_url: str, tenant: TenantRecord
) -> None:
    listener = await asyncpg.connect(database_url)
    received: list[str] = []
    try:
        await listener.add_listener("gatehouse_outbox", lambda *args: received.append(args[3]))
        await store.add_member(actor, tenant.id, CAROL)
        await listener.execute("SELECT 1")  # a round trip, so the notification is read
    finally:
        await listener.close()
    assert received == [tenant.id]


async def test_expected_revision_applies_to_every_call_that_takes_it(
    store: PostgresStore, actor: Actor, tenant: TenantRecord
) -> None:
    def attempts(expected: int) -> list[Callable[[], Awaitable[object]]]:
        return [
            lambda: store.update_tenant(actor, tenant.id, expected_revision=expected, name="x", plan=None, region=None),
            lambda: store.transition_tenant(
                actor, tenant.id, Action.ACTIVATE, reason="", expected_revision=expected, confirm=False
            ),
            lambda: store.patch_tenant_config(
                actor, tenant.id, ConfigPatch(set_flags={"x": True}), expected_revision=expected
            ),
            lambda: store.update_role(
                actor, tenant.id, name="editor", permissions=(), description="", expected_revision=expected
            ),
        ]

    for attempt in attempts(tenant.revision - 1):
        with pytest.raises(RevisionConflict) as raised:
            await attempt()
        assert raised.value.current == tenant.revision
    assert (await store.get_tenant(tenant.id)).revision == tenant.revision

    # With the current revision each one goes through and moves the revision on by one.
    revision = tenant.revision
    for index in range(len(attempts(0))):
        await attempts(revision)[index]()
        revision += 1
    assert (await store.get_tenant(tenant.id)).revision == revision


@pytest.mark.parametrize("name", sorted(MUTATIONS))
async def test_mutations_of_a_missing_tenant_are_not_found(store: PostgresStore, actor: Actor, name: str) -> None:
    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid", ""):
        with pytest.raises(TenantNotFound):
            await MUTATIONS[name].run(store, actor, missing)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
async def test_a_deleted_tenant_is_not_writable(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord, name: str
) -> None:
    deleted = await store.transition_tenant(
        actor, tenant.id, Action.DELETE, reason="gone", expected_revision=0, confirm=True
    )
    with pytest.raises(TenantNotWritable):
        await MUTATIONS[name].run(store, actor, tenant.id)
    assert (await written(superuser, tenant.id)).revision == deleted.revision


# --- roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", sorted(SYSTEM_ROLES))
async def test_system_roles_are_immutable(store: PostgresStore, actor: Actor, tenant: TenantRecord, role: str) -> None:
    with pytest.raises(SystemRoleImmutable):
        await store.update_role(actor, tenant.id, name=role, permissions=("*",), description="", expected_revision=0)
    with pytest.raises(SystemRoleImmutable):
        await store.delete_role(actor, tenant.id, name=role)
    with pytest.raises(AlreadyExists):
        await store.create_role(actor, tenant.id, name=role, permissions=(), description="")


async def test_role_rules(store: PostgresStore, actor: Actor, tenant: TenantRecord) -> None:
    with pytest.raises(AlreadyExists):
        await store.create_role(actor, tenant.id, name="editor", permissions=(), description="")
    with pytest.raises(NotFound):
        await store.update_role(actor, tenant.id, name="ghost", permissions=(), description="", expected_revision=0)
    with pytest.raises(NotFound):
        await store.delete_role(actor, tenant.id, name="ghost")
    with pytest.raises(RoleInUse):
        await store.delete_role(actor, tenant.id, name="editor")
    role, _ = await store.update_role(
        actor,
        tenant.id,
        name="editor",
        permissions=("doc.read", "doc.edit"),
        description="Edits docs",
        expected_revision=0,
    )
    assert (role.permissions, role.description, role.system) == (("doc.read", "doc.edit"), "Edits docs", False)
    await store.revoke_role(actor, tenant.id, BOB, role="editor", scope="")
    await store.delete_role(actor, tenant.id, name="editor")
    roles, _ = await store.list_roles(tenant.id)
    assert "editor" not in {r.name for r in roles}
    assert (await store.get_tenant(tenant.id)).revision == tenant.revision + 3  # the failures wrote nothing


# --- members and assignments ---------------------------------------------------------------------


async def test_membership_and_assignment_rules(store: PostgresStore, actor: Actor, tenant: TenantRecord) -> None:
    with pytest.raises(AlreadyExists):
        await store.add_member(actor, tenant.id, BOB)
    with pytest.raises(NotAMember):
        await store.assign_role(actor, tenant.id, CAROL, role="editor", scope="")
    with pytest.raises(NotFound):
        await store.assign_role(actor, tenant.id, BOB, role="ghost", scope="")
    with pytest.raises(AlreadyExists):
        await store.assign_role(actor, tenant.id, BOB, role="editor", scope="")
    with pytest.raises(NotFound):
        await store.revoke_role(actor, tenant.id, BOB, role="editor", scope="emea")
    with pytest.raises(NotFound):
        await store.remove_member(actor, tenant.id, CAROL)
    assert (await store.get_tenant(tenant.id)).revision == tenant.revision

    # The same role at another scope is another grant.
    assignment, _ = await store.assign_role(actor, tenant.id, BOB, role="editor", scope="emea/de")
    assert (assignment.subject, assignment.role, assignment.scope) == (BOB, "editor", "emea/de")
    assert assignment.created_at is not None


async def test_removing_a_member_removes_its_assignments(
    store: PostgresStore, actor: Actor, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="viewer", scope="emea")
    await store.remove_member(actor, tenant.id, BOB)
    page = await store.list_role_assignments(tenant.id, subject=BOB, page_size=10, page_token="")
    assert page.items == []
    # Re-adding starts from nothing.
    await store.add_member(actor, tenant.id, BOB)
    snapshot = await store.load_subject(tenant.id, BOB)
    assert snapshot is not None and snapshot.is_member and snapshot.assignments == ()


async def test_the_last_owner_cannot_be_removed_or_demoted(
    store: PostgresStore, actor: Actor, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="")
    with pytest.raises(FailedPrecondition):
        await store.revoke_role(actor, tenant.id, BOB, role="owner", scope="")
    with pytest.raises(FailedPrecondition):
        await store.remove_member(actor, tenant.id, BOB)

    # With a second owner, either may go.
    await store.add_member(actor, tenant.id, CAROL)
    await store.assign_role(actor, tenant.id, CAROL, role="owner", scope="")
    await store.revoke_role(actor, tenant.id, BOB, role="owner", scope="")
    with pytest.raises(FailedPrecondition):
        await store.remove_member(actor, tenant.id, CAROL)
    # An owner grant below the root is not tenant ownership.
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="emea")
    await store.revoke_role(actor, tenant.id, BOB, role="owner", scope="emea")
