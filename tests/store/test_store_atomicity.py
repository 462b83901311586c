"""A mutation is all or nothing: when its outbox row cannot be written, its domain rows,
revision bump and audit row are not written either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import Plan, PlanFeature, SubjectRef, TenantRecord
from gatehouse.errors import Internal
from gatehouse.store.api import Actor, ConfigPatch
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory, row_counts

BOB = SubjectRef("user", "bob")

Attempt = Callable[[PostgresStore, Actor, TenantRecord, str], Awaitable[object]]

ATTEMPTS: dict[str, Attempt] = {
    "create_tenant": lambda s, a, t, u: s.create_tenant(
        a, slug=f"doomed-{u}", name="D", plan="", region="", settings={}
    ),
    "update_tenant": lambda s, a, t, u: s.update_tenant(a, t.id, expected_revision=0, name="N", plan=None, region=None),
    "transition_tenant": lambda s, a, t, u: s.transition_tenant(
        a, t.id, Action.ACTIVATE, reason="", expected_revision=0, confirm=False
    ),
    "patch_tenant_config": lambda s, a, t, u: s.patch_tenant_config(
        a, t.id, ConfigPatch(settings_patch={"k": 1}, set_flags={"f": True}), expected_revision=0
    ),
    "create_role": lambda s, a, t, u: s.create_role(a, t.id, name="auditor", permissions=(), description=""),
    "update_role": lambda s, a, t, u: s.update_role(
        a, t.id, name="editor", permissions=("*",), description="", expected_revision=0
    ),
    "delete_role": lambda s, a, t, u: s.delete_role(a, t.id, name="spare"),
    "add_member": lambda s, a, t, u: s.add_member(a, t.id, SubjectRef("user", "carol")),
    "remove_member": lambda s, a, t, u: s.remove_member(a, t.id, BOB),
    "assign_role": lambda s, a, t, u: s.assign_role(a, t.id, BOB, role="viewer", scope=""),
    "revoke_role": lambda s, a, t, u: s.revoke_role(a, t.id, BOB, role="editor", scope=""),
    "upsert_plan": lambda s, a, t, u: s.upsert_plan(a, Plan(name=t.plan, features={"x": PlanFeature(True)})),
}


@pytest.fixture
async def tenant(store: PostgresStore, actor: Actor, make_tenant: TenantFactory, unique: str) -> TenantRecord:
    await store.upsert_plan(actor, Plan(name=f"plan-{unique}"))
    created = await make_tenant(plan=f"plan-{unique}")
    await store.create_role(actor, created.id, name="editor", permissions=("doc.edit",), description="")
    await store.create_role(actor, created.id, name="spare", permissions=(), description="")
    await store.add_member(actor, created.id, BOB)
    await store.assign_role(actor, created.id, BOB, role="editor", scope="")
    return await store.get_tenant(created.id)


@asynccontextmanager
async def failing_outbox(superuser: asyncpg.Connection, unique: str) -> AsyncIterator[None]:
    """Every outbox insert raises while inside (the tests of one session run one at a
    time, so no other test meets the trigger)."""
    function = f"fail_outbox_{unique}"
    await superuser.execute(
        f"""
        CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'outbox is broken (test)'; END $$;
        CREATE TRIGGER {function} BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION {function}();
        """
    )
    try:
        yield
    finally:
        await superuser.execute(f"DROP TRIGGER {function} ON outbox; DROP FUNCTION {function}();")


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
async def test_a_failed_outbox_insert_rolls_back_everything(
    store: PostgresStore,
    actor: Actor,
    superuser: asyncpg.Connection,
    tenant: TenantRecord,
    unique: str,
    name: str,
) -> None:
    before = await row_counts(superuser)
    tenant_row = dict(await superuser.fetchrow("SELECT * FROM tenants WHERE id = $1::uuid", tenant.id))
    plan_row = dict(await superuser.fetchrow("SELECT * FROM plans WHERE name = $1", tenant.plan))
    roles = await superuser.fetch("SELECT * FROM roles WHERE tenant_id = $1::uuid ORDER BY name", tenant.id)

    async with failing_outbox(superuser, unique):
        with pytest.raises(Internal):
            await ATTEMPTS[name](store, actor, tenant, unique)

    assert await row_counts(superuser) == before  # no domain row, audit row or outbox row
    assert dict(await superuser.fetchrow("SELECT * FROM tenants WHERE id = $1::uuid", tenant.id)) == tenant_row
    assert dict(await superuser.fetchrow("SELECT * FROM plans WHERE name = $1", tenant.plan)) == plan_row
    assert await superuser.fetch("SELECT * FROM roles WHERE tenant_id = $1::uuid ORDER BY name", tenant.id) == roles
    # And the store is fine afterwards: the same call now succeeds.
    await ATTEMPTS[name](store, actor, tenant, unique)
