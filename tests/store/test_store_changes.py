"""The store publishes what it committed (`Subscribable`): every listener hears of each
write once it has committed, before the write returns; a rolled-back write is heard of
by nobody; a listener that fails does not fail the write."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from gatehouse.engine.model import Plan, SubjectRef, TenantRecord
from gatehouse.errors import AlreadyExists
from gatehouse.events import CONFIG_KINDS
from gatehouse.store.api import Actor, TenantChange
from gatehouse.store.postgres import PostgresStore
from tests.store.store_helpers import TenantFactory
from tests.store.test_store_writes import MUTATIONS, tenant  # noqa: F401 (`tenant` is a fixture)

DAVE = SubjectRef("user", "dave")


class Heard:
    """A listener that records each change with the revision another session sees then."""

    def __init__(self, superuser: asyncpg.Connection) -> None:
        self._superuser = superuser
        self.changes: list[TenantChange] = []
        self.committed: list[int | None] = []

    async def __call__(self, change: TenantChange) -> None:
        self.changes.append(change)
        self.committed.append(
            await self._superuser.fetchval("SELECT revision FROM tenants WHERE id = $1::uuid", change.tenant_id)
        )

    def of(self, tenant_id: str) -> list[TenantChange]:
        return [change for change in self.changes if change.tenant_id == tenant_id]


@pytest.fixture
async def heard(store: PostgresStore, superuser: asyncpg.Connection) -> AsyncIterator[Heard]:
    listener = Heard(superuser)
    unsubscribe = store.subscribe(listener)
    yield listener
    unsubscribe()


async def test_create_tenant_is_published_after_commit(heard: Heard, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    assert heard.of(created.id) == [TenantChange(created.id, 1, "tenant", "", config=True)]
    assert heard.committed == [1]  # another session already saw it: committed


@pytest.mark.parametrize("name", sorted(MUTATIONS))
async def test_each_mutation_is_published_once_after_commit(
    store: PostgresStore, actor: Actor, tenant: TenantRecord, heard: Heard, name: str  # noqa: F811
) -> None:
    mutation = MUTATIONS[name]
    revision = await mutation.run(store, actor, tenant.id)
    expected = TenantChange(
        tenant.id, revision, mutation.kind, mutation.subject or "", config=mutation.kind in CONFIG_KINDS
    )
    assert heard.changes == [expected]
    assert heard.committed == [revision]


async def test_api_keys_publish_for_their_tenant_and_operator_keys_for_none(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, heard: Heard
) -> None:
    created = await make_tenant()
    heard.changes.clear()
    key = uuid.uuid4().hex[:16]
    _, revision = await store.create_api_key(
        actor, created.id, key_id=key, secret_hash="h", name="", permissions=["*"], expires_at=None, roles=[]
    )
    revoked = await store.revoke_api_key(actor, created.id, key)
    subject = f"api_key/{key}"
    assert heard.changes == [
        TenantChange(created.id, revision, "key", subject, config=False),
        TenantChange(created.id, revoked, "key", subject, config=False),
    ]
    operator = uuid.uuid4().hex[:16]
    await store.create_api_key(
        actor, "", key_id=operator, secret_hash="h", name="", permissions=["*"], expires_at=None, roles=[]
    )
    await store.revoke_api_key(actor, "", operator)
    assert len(heard.changes) == 2  # an operator key belongs to no tenant: nothing tenant-wise


async def test_a_plan_change_is_published_for_every_tenant_on_it(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, heard: Heard, unique: str
) -> None:
    await store.upsert_plan(actor, Plan(name=f"plan-{unique}"))
    first, second = await make_tenant("a", plan=f"plan-{unique}"), await make_tenant("b", plan=f"plan-{unique}")
    heard.changes.clear()
    _, affected = await store.upsert_plan(actor, Plan(name=f"plan-{unique}", quotas={"seats": 5}))
    assert sorted(heard.changes, key=lambda c: c.tenant_id) == sorted(
        (TenantChange(tenant_id, revision, "plan", "", config=True) for tenant_id, revision in affected),
        key=lambda c: c.tenant_id,
    )
    assert {c.tenant_id for c in heard.changes} == {first.id, second.id}


async def test_a_rolled_back_write_is_published_to_nobody(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory, heard: Heard
) -> None:
    created = await make_tenant()
    await store.add_member(actor, created.id, DAVE)
    heard.changes.clear()
    with pytest.raises(AlreadyExists):
        await store.add_member(actor, created.id, DAVE)  # fails inside the transaction
    assert heard.changes == []
    assert (await store.get_tenant(created.id)).revision == 2


async def test_a_failing_listener_does_not_fail_the_write_or_silence_the_others(
    store: PostgresStore,
    actor: Actor,
    make_tenant: TenantFactory,
    heard: Heard,
    caplog: pytest.LogCaptureFixture,
) -> None:
    created = await make_tenant()
    heard.changes.clear()

    async def broken(change: TenantChange) -> None:
        raise RuntimeError("listener broke")

    unsubscribe: Callable[[], None] = store.subscribe(broken)
    after = Heard(heard._superuser)
    unsubscribe_after = store.subscribe(after)
    try:
        with caplog.at_level(logging.ERROR, logger="gatehouse.store.changes"):
            _, revision = await store.add_member(actor, created.id, DAVE)
    finally:
        unsubscribe()
        unsubscribe_after()
    assert revision == 2
    assert (await store.get_tenant(created.id)).revision == 2
    assert [c.revision for c in heard.changes] == [c.revision for c in after.changes] == [2]
    assert any("change listener failed" in r.getMessage() and r.exc_info for r in caplog.records)
