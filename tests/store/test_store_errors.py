"""Nothing asyncpg-typed ever leaves the store: every driver and network failure becomes a
Gatehouse error, and an unreachable or hung database is StoreUnavailable."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from asyncpg import exceptions as pg

from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import Plan, SubjectRef
from gatehouse.errors import (
    AlreadyExists,
    GatehouseError,
    Internal,
    InvalidArgument,
    NotAMember,
    SchemaMismatch,
    StoreUnavailable,
)
from gatehouse.store.api import Actor, ConfigPatch, Store
from gatehouse.store.driver_errors import translate, translated
from gatehouse.store.migrate import current_version
from gatehouse.store.postgres import PostgresStore, connect
from tests.store.store_helpers import TenantFactory, superuser_dsn

DEAD_DSN = "postgresql://gatehouse@127.0.0.1:1/nowhere"
SOME_ID = "00000000-0000-0000-0000-000000000001"
ALICE = SubjectRef("user", "alice")
ACTOR = Actor("operator")


def _pg(sqlstate: str, constraint: str = "") -> Exception:
    fields = {"C": sqlstate, "M": "message from the server", "n": constraint}
    error: Exception = pg.PostgresError.new(fields)
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_pg("23505", "tenants_slug_key"), AlreadyExists),
        (_pg("23505", "some_other_key"), AlreadyExists),
        (_pg("23503", "tenants_plan_fkey"), InvalidArgument),
        (_pg("23503", "role_assignments_member_fkey"), NotAMember),
        (_pg("23503", "unknown_fkey"), Internal),
        (_pg("23514", "tenants_slug_format"), InvalidArgument),
        (_pg("23514", "tenants_status_check"), Internal),
        (ConnectionRefusedError(111, "refused"), StoreUnavailable),
        (ConnectionResetError(), StoreUnavailable),
        (TimeoutError(), StoreUnavailable),
        (TimeoutError(), StoreUnavailable),
        (pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), StoreUnavailable),
        (_pg("08006"), StoreUnavailable),
        (_pg("57P01"), StoreUnavailable),  # admin shutdown
        (_pg("57P03"), StoreUnavailable),  # cannot connect now
        (_pg("57014"), StoreUnavailable),  # statement timeout
        (_pg("53300"), StoreUnavailable),  # too many connections
        (_pg("40001"), StoreUnavailable),  # serialization failure
        (_pg("40P01"), StoreUnavailable),  # deadlock
        (_pg("3D000"), StoreUnavailable),  # database does not exist
        (_pg("28000"), StoreUnavailable),  # role may not log in
        (asyncpg.InterfaceError("pool is closing"), StoreUnavailable),
        (asyncpg.InterfaceError("cannot perform operation: connection is closed"), StoreUnavailable),
        (_pg("42P01"), SchemaMismatch),  # undefined table
        (_pg("42703"), SchemaMismatch),  # undefined column
        (_pg("P0001"), Internal),  # raised by a trigger
        (_pg("22P02"), Internal),  # invalid text representation
        (_pg("XX000"), Internal),
        (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), Internal),
        (pg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"), StoreUnavailable),
        (asyncpg.DataError("invalid input for query argument"), Internal),
    ],
    ids=lambda value: type(value).__name__,
)
def test_every_driver_error_is_translated(error: Exception, expected: type[GatehouseError]) -> None:
    assert type(translate(error)) is expected
    with pytest.raises(expected) as raised, translated():
        raise error
    assert raised.value.__cause__ is error


def test_gatehouse_errors_pass_through() -> None:
    original = InvalidArgument("slug", "bad")
    with pytest.raises(InvalidArgument) as raised, translated():
        raise original
    assert raised.value is original


async def test_connecting_to_a_dead_port_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as raised:
        await connect(DEAD_DSN, connect_timeout=2)
    assert isinstance(raised.value.__cause__, OSError)


Call = Callable[[PostgresStore], Awaitable[object]]

async def _no_guard(grants: object) -> None:
    return None


EVERY_CALL: dict[str, Call] = {
    "ping": lambda s: s.ping(),
    "schema_version": lambda s: s.schema_version(),
    "schema_fit": lambda s: s.schema_fit(1),
    "load_tenant": lambda s: s.load_tenant(SOME_ID),
    "load_subject": lambda s: s.load_subject(SOME_ID, ALICE),
    "load_subjects": lambda s: s.load_subjects(SOME_ID, [ALICE]),
    "load_roster": lambda s: s.load_roster(SOME_ID),
    "list_subject_tenants": lambda s: s.list_subject_tenants(ALICE, page_size=10, page_token=""),
    "create_tenant": lambda s: s.create_tenant(ACTOR, slug="abc", name="A", plan="", region="", settings={}),
    "get_tenant": lambda s: s.get_tenant(SOME_ID),
    "list_tenants": lambda s: s.list_tenants(page_size=1, page_token="", status=None, plan="", region=""),
    "update_tenant": lambda s: s.update_tenant(ACTOR, SOME_ID, expected_revision=0, name="n", plan=None, region=None),
    "transition_tenant": lambda s: s.transition_tenant(
        ACTOR, SOME_ID, Action.ACTIVATE, reason="", expected_revision=0, confirm=False
    ),
    "patch_tenant_config": lambda s: s.patch_tenant_config(ACTOR, SOME_ID, ConfigPatch(), expected_revision=0),
    "upsert_plan": lambda s: s.upsert_plan(ACTOR, Plan(name="p")),
    "list_plans": lambda s: s.list_plans(),
    "create_role": lambda s: s.create_role(ACTOR, SOME_ID, name="r", permissions=(), description=""),
    "update_role": lambda s: s.update_role(
        ACTOR, SOME_ID, name="r", permissions=(), description="", expected_revision=0
    ),
    "delete_role": lambda s: s.delete_role(ACTOR, SOME_ID, name="r"),
    "list_roles": lambda s: s.list_roles(SOME_ID),
    "add_member": lambda s: s.add_member(ACTOR, SOME_ID, ALICE),
    "remove_member": lambda s: s.remove_member(ACTOR, SOME_ID, ALICE),
    "list_members": lambda s: s.list_members(SOME_ID, page_size=1, page_token=""),
    "assign_role": lambda s: s.assign_role(ACTOR, SOME_ID, ALICE, role="r", scope=""),
    "revoke_role": lambda s: s.revoke_role(ACTOR, SOME_ID, ALICE, role="r", scope=""),
    "list_role_assignments": lambda s: s.list_role_assignments(SOME_ID, subject=None, page_size=1, page_token=""),
    "move_scope": lambda s: s.move_scope(ACTOR, SOME_ID, from_scope="a", to_scope="b", keep_existing=False,
                                         guard=_no_guard),
    "create_api_key": lambda s: s.create_api_key(
        ACTOR, SOME_ID, key_id="0123456789abcdef", secret_hash="h", name="", permissions=["*"], expires_at=None, roles=[]
    ),
    "revoke_api_key": lambda s: s.revoke_api_key(ACTOR, SOME_ID, "0123456789abcdef"),
    "list_api_keys": lambda s: s.list_api_keys(SOME_ID, page_size=1, page_token=""),
    "find_api_key": lambda s: s.find_api_key("0123456789abcdef"),
    "record_audit": lambda s: s.record_audit(
        ACTOR, tenant_id=SOME_ID, action="a", target="t", outcome="denied", reason=""
    ),
    "list_audit_events": lambda s: s.list_audit_events(
        tenant_id="", actor="", action="", since=None, until=None, page_size=1, page_token=""
    ),
}


def test_postgres_store_implements_the_protocol_exactly() -> None:
    methods = {  # Store's own and those of the protocols it combines
        name: member
        for protocol in Store.__mro__
        if protocol is not object
        for name, member in vars(protocol).items()
        if inspect.iscoroutinefunction(member)
    }
    for name, method in methods.items():
        assert inspect.signature(getattr(PostgresStore, name)) == inspect.signature(method), name
    # ...and the dead-database test below covers every one of them.
    assert set(EVERY_CALL) == set(methods) - {"close"}


@pytest.mark.parametrize("name", sorted(EVERY_CALL))
async def test_every_call_on_a_dead_database_is_unavailable(name: str) -> None:
    store = await connect(DEAD_DSN, min_size=0, connect_timeout=2)  # lazy: connects on first use
    try:
        with pytest.raises(StoreUnavailable):
            await EVERY_CALL[name](store)
    finally:
        await store.close()


@pytest.mark.parametrize("name", ["ping", "load_tenant", "create_tenant"])
async def test_a_closed_store_is_unavailable(database_url: str, name: str) -> None:
    store = await connect(database_url, min_size=1, max_size=1)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await EVERY_CALL[name](store)


async def test_a_hung_database_times_out_as_unavailable(
    database_url: str, superuser: asyncpg.Connection, make_tenant: TenantFactory
) -> None:
    tenant = await make_tenant()
    store = await connect(database_url, min_size=1, max_size=1, command_timeout=0.3)
    try:
        # Someone else holds the tenant row: the mutation waits on the lock past its timeout.
        async with superuser.transaction():
            await superuser.execute("SELECT 1 FROM tenants WHERE id = $1::uuid FOR UPDATE", tenant.id)
            with pytest.raises(StoreUnavailable):
                await store.add_member(ACTOR, tenant.id, ALICE)
        # The pool recovers once the lock is gone.
        member, revision = await store.add_member(ACTOR, tenant.id, ALICE)
        assert (member.subject, revision) == (ALICE, tenant.revision + 1)
    finally:
        await store.close()


async def _terminate(superuser: asyncpg.Connection, application: str) -> int:
    """Kill every backend of `application`, as an operator (or a failover) would."""
    killed: int = await superuser.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", application
    )
    return killed


async def test_dead_pooled_connections_are_replaced_transparently(
    database_url: str, superuser: asyncpg.Connection, make_tenant: TenantFactory, unique: str
) -> None:
    tenant = await make_tenant()
    application = f"gh-killed-{unique}"
    store = await connect(f"{database_url}?application_name={application}", min_size=3, max_size=3)
    try:
        for call in (
            lambda: store.ping(),
            lambda: store.load_subject(tenant.id, ALICE),
            lambda: store.add_member(ACTOR, tenant.id, ALICE),
        ):
            await store.ping()
            assert await _terminate(superuser, application) >= 1  # every connection it has open
            # Every pooled connection is dead and does not know it yet: the call still works.
            await call()
        snapshot = await store.load_subject(tenant.id, ALICE)
        assert snapshot is not None and snapshot.is_member
    finally:
        await store.close()


async def test_a_connection_killed_mid_transaction_is_unavailable_and_writes_nothing(
    database_url: str, superuser: asyncpg.Connection, make_tenant: TenantFactory, unique: str
) -> None:
    tenant = await make_tenant()
    application = f"gh-midway-{unique}"
    store = await connect(f"{database_url}?application_name={application}", min_size=1, max_size=1)
    try:
        async with superuser.transaction():
            # Hold the tenant row so the store's write is parked inside its transaction...
            await superuser.execute("SELECT 1 FROM tenants WHERE id = $1::uuid FOR UPDATE", tenant.id)
            write = asyncio.create_task(store.add_member(ACTOR, tenant.id, ALICE))
            while not await superuser.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                application,
            ):
                await asyncio.sleep(0.01)
            # ...and kill it there.
            assert await _terminate(superuser, application) == 1
            with pytest.raises(StoreUnavailable):
                await write
        assert (await store.get_tenant(tenant.id)).revision == tenant.revision
        assert (await store.load_subject(tenant.id, ALICE)) is not None
        snapshot = await store.load_subject(tenant.id, ALICE)
        assert snapshot is not None and not snapshot.is_member
    finally:
        await store.close()


async def test_a_database_without_the_schema_is_a_schema_mismatch(empty_db: str) -> None:
    assert await current_version(empty_db) == 0
    store = await connect(empty_db, min_size=1, max_size=1)
    try:
        assert await store.schema_version() == 0
        with pytest.raises(SchemaMismatch):
            await store.load_tenant(SOME_ID)
    finally:
        await store.close()


async def test_the_app_role_is_not_a_superuser(database_url: str) -> None:
    # Superusers and BYPASSRLS roles skip row-level security; the tests must not run as one.
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()
    assert (row["rolsuper"], row["rolbypassrls"]) == (False, False)
    assert superuser_dsn(database_url).startswith("postgresql://postgres@")
