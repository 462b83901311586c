"""Expiring role assignments in the store (issue 18): what AssignRole writes, what the
hot-path load carries, and the sweeper that deletes expired rows later — each subject's
with its own revision bump, audit row and outbox event, in one transaction.

Time is moved by writing `expires_at` into the past as the superuser: the rows are then
exactly what a grant that has expired looks like, without waiting for one."""

from __future__ import annotations

import time

import asyncpg
import pytest

from gatehouse.engine.model import SubjectRef, TenantRecord
from gatehouse.errors import AlreadyExists, FailedPrecondition
from gatehouse.store.api import Actor
from gatehouse.store.assignments import SWEEPER, sweep_expired_assignments
from gatehouse.store.postgres import PostgresStore
from gatehouse.store.transactions import init_connection
from tests.store.store_helpers import TenantFactory, written

BOB = SubjectRef("user", "bob")
CAROL = SubjectRef("user", "carol")


@pytest.fixture
async def tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory) -> TenantRecord:
    created = await make_tenant("exp")
    await store.create_role(actor, created.id, name="editor", permissions=("doc.*",), description="")
    for subject in (BOB, CAROL):
        await store.add_member(actor, created.id, subject)
    return await store.get_tenant(created.id)


async def expire(superuser: asyncpg.Connection, tenant_id: str, subject: SubjectRef, *scopes: str) -> None:
    """Make assignments' expiry a second ago, all in one statement: the relays of this
    session's sidecars sweep too, and must find them expired together or not at all."""
    status = await superuser.execute(
        "UPDATE role_assignments SET expires_at = now() - interval '1 second'"
        " WHERE tenant_id = $1::uuid AND subject_type = $2 AND subject_id = $3 AND scope = ANY($4::text[])",
        tenant_id, subject.type, subject.id, list(scopes),
    )
    assert status == f"UPDATE {len(scopes)}"


async def test_an_assignment_carries_its_expiry_to_the_record_the_list_and_the_load(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    expires = round(time.time() + 3600, 3)
    record, revision = await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", expires_at=expires)
    assert record.expires_at == expires
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="us")
    listed = {a.scope: a.expires_at for a in (await store.list_role_assignments(
        tenant.id, subject=BOB, page_size=10, page_token=""
    )).items}
    assert listed == {"eu": pytest.approx(expires), "us": None}
    snapshot = await store.load_subject(tenant.id, BOB)
    assert snapshot is not None
    assert {a.scope: a.expires_at for a in snapshot.assignments} == {"eu": pytest.approx(expires), "us": None}
    # The audit row and event of the write say until when it was granted.
    seen = await written(superuser, tenant.id)
    assert seen.audit[-2]["details"]["expires_at"] == pytest.approx(expires)

    # Expired but not yet swept: the load leaves it out (the engine would not use it).
    await expire(superuser, tenant.id, BOB, "eu")
    snapshot = await store.load_subject(tenant.id, BOB)
    assert snapshot is not None and [a.scope for a in snapshot.assignments] == ["us"]


async def test_an_expired_grant_may_be_granted_again_a_live_one_may_not(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", expires_at=time.time() + 60)
    with pytest.raises(AlreadyExists):
        await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu")
    await expire(superuser, tenant.id, BOB, "eu")
    record, _ = await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu")
    assert record.expires_at is None
    snapshot = await store.load_subject(tenant.id, BOB)
    assert snapshot is not None and [(a.scope, a.expires_at) for a in snapshot.assignments] == [("eu", None)]


async def test_an_expiring_owner_does_not_count_as_another_owner(
    store: PostgresStore, actor: Actor, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="owner", scope="")
    await store.assign_role(actor, tenant.id, CAROL, role="owner", scope="", expires_at=time.time() + 3600)
    # Bob is the only owner for good: removing or demoting him would leave none at expiry.
    with pytest.raises(FailedPrecondition):
        await store.revoke_role(actor, tenant.id, BOB, role="owner", scope="")
    with pytest.raises(FailedPrecondition):
        await store.remove_member(actor, tenant.id, BOB)


async def test_the_sweeper_deletes_expired_rows_with_one_revision_audit_row_and_event_per_subject(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, runtime: asyncpg.Connection, tenant: TenantRecord
) -> None:
    soon = time.time() + 3600
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", expires_at=soon)
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="us", expires_at=soon)
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="asia", expires_at=soon)
    await store.assign_role(actor, tenant.id, CAROL, role="editor", scope="eu", expires_at=soon)
    before = await written(superuser, tenant.id)
    await superuser.execute(
        "UPDATE role_assignments SET expires_at = now() - interval '1 second'"
        " WHERE tenant_id = $1::uuid AND (subject_id, scope) IN (('bob', 'eu'), ('bob', 'us'), ('carol', 'eu'))",
        tenant.id,
    )

    # As the runtime role (what the relay connects as): row-level security applies. (A
    # relay of this session's sidecars may sweep them first: the outcome is the same.)
    await init_connection(runtime)
    await sweep_expired_assignments(runtime)

    after = await written(superuser, tenant.id)
    assert after.revision == before.revision + 2  # one write per subject
    audit = after.audit[len(before.audit):]
    events = after.outbox[len(before.outbox):]
    assert sorted((row["action"], row["actor"], row["target"]) for row in audit) == [
        ("role.expire", SWEEPER.id, "member/user/bob"),
        ("role.expire", SWEEPER.id, "member/user/carol"),
    ]
    bob_audit = next(row for row in audit if row["target"] == "member/user/bob")
    assert sorted(e["scope"] for e in bob_audit["details"]["expired"]) == ["eu", "us"]
    assert sorted((e["kind"], e["subject"]) for e in events) == [
        ("assignment", "user/bob"), ("assignment", "user/carol")
    ]
    assert sorted(e["revision"] for e in events) == [before.revision + 1, before.revision + 2]
    remaining = await superuser.fetch(
        "SELECT subject_id, scope FROM role_assignments WHERE tenant_id = $1::uuid ORDER BY 1, 2", tenant.id
    )
    assert [tuple(row) for row in remaining] == [("bob", "asia")]

    # Nothing left to sweep in this tenant: a second pass writes nothing here.
    await sweep_expired_assignments(runtime)
    assert (await written(superuser, tenant.id)).revision == after.revision


async def test_the_sweeper_leaves_a_deleted_tenant_alone(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, runtime: asyncpg.Connection, tenant: TenantRecord
) -> None:
    await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", expires_at=time.time() + 3600)
    async with superuser.transaction():  # deleted before any relay can see the row expired
        await superuser.execute("UPDATE tenants SET status = 'deleted' WHERE id = $1::uuid", tenant.id)
        await expire(superuser, tenant.id, BOB, "eu")
    before = await written(superuser, tenant.id)
    await init_connection(runtime)
    await sweep_expired_assignments(runtime)
    assert await written(superuser, tenant.id) == before


async def test_a_condition_is_stored_listed_and_loaded(
    store: PostgresStore, actor: Actor, superuser: asyncpg.Connection, tenant: TenantRecord
) -> None:
    condition = "resource.attributes.owner == subject.id"
    record, _ = await store.assign_role(actor, tenant.id, BOB, role="editor", scope="eu", condition=condition)
    assert record.condition == condition
    (listed,) = (await store.list_role_assignments(tenant.id, subject=BOB, page_size=10, page_token="")).items
    assert listed.condition == condition
    snapshot = await store.load_subject(tenant.id, BOB)
    assert snapshot is not None and [a.condition for a in snapshot.assignments] == [condition]
    assert (await written(superuser, tenant.id)).audit[-1]["details"]["condition"] == condition
    # The database bounds it too: a row written around the server cannot be huge.
    with pytest.raises(asyncpg.CheckViolationError):
        await superuser.execute(
            "UPDATE role_assignments SET condition = repeat('x', 1025) WHERE tenant_id = $1::uuid", tenant.id
        )
