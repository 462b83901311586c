"""Migrations: up, down and up again leave exactly the schema they claim, concurrent
migrators apply each step once, and every `up` leaves the runtime role with exactly its
DML privileges on whatever the schema holds (future tables included)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gatehouse.store.grants import RuntimeRoleError
from gatehouse.store.migrate import LATEST_VERSION, MIGRATIONS, current_version, migrate_down, migrate_up
from tests.conftest import PG_OWNER_ROLE, PG_RUNTIME_ROLE

TABLES = ("plans", "tenants", "roles", "memberships", "role_assignments", "audit_log", "outbox")
TENANT_SCOPED = ("tenants", "roles", "memberships", "role_assignments", "audit_log", "outbox")


async def _public_objects(dsn: str) -> list[str]:
    """Every relation and function in the public schema."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public'
            UNION ALL
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public'
            ORDER BY 1
            """
        )
    finally:
        await conn.close()
    return [row["name"] for row in rows]


def test_migrations_are_numbered_from_one() -> None:
    assert LATEST_VERSION >= 1
    assert sorted(MIGRATIONS) == list(range(1, LATEST_VERSION + 1))


async def test_up_down_up(empty_db: str) -> None:
    assert await _public_objects(empty_db) == []

    assert await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE) == LATEST_VERSION
    assert await current_version(empty_db) == LATEST_VERSION
    objects = await _public_objects(empty_db)
    assert {*TABLES, "schema_migrations"} <= set(objects)
    granted = await _runtime_privileges(empty_db)

    assert await migrate_down(empty_db) == 0
    assert await current_version(empty_db) == 0
    # Down undoes up completely: no table, index, sequence or function is left behind
    # (and their grants went with them).
    assert await _public_objects(empty_db) == []

    assert await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE) == LATEST_VERSION
    assert await _public_objects(empty_db) == objects
    assert await _runtime_privileges(empty_db) == granted


async def test_migrating_again_is_a_no_op(empty_db: str) -> None:
    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await migrate_down(empty_db, LATEST_VERSION) == LATEST_VERSION


async def test_concurrent_migrators_apply_each_step_once(empty_db: str) -> None:
    results = await asyncio.gather(*(migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE) for _ in range(4)))
    assert results == [LATEST_VERSION] * 4
    conn = await asyncpg.connect(empty_db)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [row["version"] for row in versions] == list(range(1, LATEST_VERSION + 1))


async def _runtime_privileges(dsn: str) -> dict[str, set[str]]:
    """What the runtime role may do to each table and sequence of the public schema."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname, p.privilege
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            CROSS JOIN unnest(CASE WHEN c.relkind = 'S' THEN ARRAY['USAGE', 'SELECT', 'UPDATE']
                                   ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                              'REFERENCES', 'TRIGGER'] END) AS p (privilege)
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')
              AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege($1, c.oid, p.privilege)
                       ELSE has_table_privilege($1, c.oid, p.privilege) END
            """,
            PG_RUNTIME_ROLE,
        )
    finally:
        await conn.close()
    privileges: dict[str, set[str]] = {}
    for row in rows:
        privileges.setdefault(row["relname"], set()).add(row["privilege"])
    return privileges


async def test_up_grants_the_runtime_role_dml_and_nothing_more(empty_db: str) -> None:
    await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE)
    privileges = await _runtime_privileges(empty_db)
    dml = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert {table: privileges.get(table) for table in TABLES} == {table: dml for table in TABLES}
    # The bookkeeping is read (the server checks the schema version), never written.
    assert privileges["schema_migrations"] == {"SELECT"}
    sequences = {name: granted for name, granted in privileges.items() if name.endswith("_seq")}
    assert sequences and set(map(frozenset, sequences.values())) == {frozenset({"USAGE", "SELECT"})}


async def test_up_grants_on_tables_a_later_migration_adds_and_undoes_hand_grants(empty_db: str) -> None:
    await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE)
    conn = await asyncpg.connect(empty_db)
    try:
        # What a future migration might add, and a grant someone made by hand.
        await conn.execute("CREATE TABLE later_things (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL)")
        await conn.execute(f'GRANT TRUNCATE, TRIGGER ON tenants TO "{PG_RUNTIME_ROLE}"')
        assert "later_things" not in await _runtime_privileges(empty_db)

        await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE)
        privileges = await _runtime_privileges(empty_db)
        assert privileges["later_things"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert privileges["later_things_id_seq"] == {"USAGE", "SELECT"}
        assert privileges["tenants"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    finally:
        await conn.execute("DROP TABLE later_things")
        await conn.close()


async def test_up_without_a_runtime_role_grants_nothing(empty_db: str) -> None:
    await migrate_up(empty_db)
    assert await _runtime_privileges(empty_db) == {}


@pytest.mark.parametrize(
    ("role", "problem"),
    [
        (PG_OWNER_ROLE, "is the role running the migrations"),
        ("postgres", "is a superuser"),
        ("gh_no_such_role", "does not exist"),
    ],
)
async def test_up_refuses_a_runtime_role_rls_would_not_bind(empty_db: str, role: str, problem: str) -> None:
    with pytest.raises(RuntimeRoleError, match=problem):
        await migrate_up(empty_db, runtime_role=role)
    # The check runs after the steps, in their last transaction's place: the schema is
    # there, and running again with the right role completes the job.
    assert await migrate_up(empty_db, runtime_role=PG_RUNTIME_ROLE) == LATEST_VERSION
    assert (await _runtime_privileges(empty_db))["tenants"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}


async def test_target_out_of_range_is_rejected(empty_db: str) -> None:
    with pytest.raises(ValueError):
        await migrate_up(empty_db, LATEST_VERSION + 1)
    with pytest.raises(ValueError):
        await migrate_down(empty_db, -1)
    assert await current_version(empty_db) == 0


async def test_every_tenant_table_forces_row_level_security(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
            list(TENANT_SCOPED),
        )
    finally:
        await conn.close()
    assert {row["relname"]: (row["relrowsecurity"], row["relforcerowsecurity"]) for row in rows} == {
        table: (True, True) for table in TENANT_SCOPED
    }


async def test_the_default_plan_is_seeded(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT features::text FROM plans WHERE name = 'default'") == "{}"
    finally:
        await conn.close()


async def test_0003_removes_grants_at_dot_segment_scopes_as_an_evented_write(empty_db: str) -> None:
    """Scopes with `.`/`..` segments are refused from version 3 on; assignments stored at
    one before could never match again nor be revoked by name, so the migration removes
    them the way a write would: revision + 1, an audit row, an outbox event, per tenant."""
    await migrate_up(empty_db, 2, runtime_role=PG_RUNTIME_ROLE)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("SELECT set_config('gatehouse.tenant_id', '*', false)")
        dirty = await conn.fetchval("INSERT INTO tenants (slug, name, plan) VALUES ('dirty', 'D', 'default') RETURNING id")
        clean = await conn.fetchval("INSERT INTO tenants (slug, name, plan) VALUES ('clean', 'C', 'default') RETURNING id")
        for tenant in (dirty, clean):
            await conn.execute("INSERT INTO roles (tenant_id, name, permissions) VALUES ($1, 'r', '{x.read}')", tenant)
            await conn.execute(
                "INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, 'user', 'alice')", tenant
            )
        scopes = {dirty: ["emea/de/../fr", "..", "a/.", "ok", "a/.../b", ""], clean: ["emea", "v1.2"]}
        for tenant, listed in scopes.items():
            for scope in listed:
                await conn.execute(
                    "INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)"
                    " VALUES ($1, 'user', 'alice', 'r', $2)", tenant, scope,
                )
        revisions = dict(await conn.fetch("SELECT id, revision FROM tenants"))

        assert await migrate_up(empty_db, 3, runtime_role=PG_RUNTIME_ROLE) == 3

        left = await conn.fetch("SELECT tenant_id, scope FROM role_assignments ORDER BY tenant_id, scope")
        assert sorted((r["tenant_id"], r["scope"]) for r in left) == sorted(
            [(dirty, ""), (dirty, "a/.../b"), (dirty, "ok"), (clean, "emea"), (clean, "v1.2")]
        )
        after = dict(await conn.fetch("SELECT id, revision FROM tenants"))
        assert after == {dirty: revisions[dirty] + 1, clean: revisions[clean]}
        audit = await conn.fetch("SELECT tenant_id, actor, action, details FROM audit_log")
        assert [(a["tenant_id"], a["actor"], a["action"]) for a in audit] == [(dirty, "migration", "role.revoke")]
        assert '"emea/de/../fr"' in audit[0]["details"]
        events = await conn.fetch("SELECT tenant_id, revision, kind, subject FROM outbox")
        assert [tuple(e) for e in events] == [(dirty, revisions[dirty] + 1, "assignment", None)]
    finally:
        await conn.close()


# --- a database ahead of the build (store/migrate.py "additive") ------------------------


def test_the_additive_line_marks_a_migration_and_nothing_else_does() -> None:
    from gatehouse.store.migrate import is_additive

    assert is_additive("-- Gatehouse schema, version 9: an index.\n-- gatehouse: additive\nCREATE INDEX ...;")
    assert not is_additive("-- Gatehouse schema, version 9.\nCREATE INDEX ...;")
    assert not is_additive("-- not: -- gatehouse: additive\n")  # only at a line's start
    # Only 6 (an index) leaves what a build of the version before reads and writes alone.
    assert [m.version for m in MIGRATIONS.values() if m.additive] == [6]


async def test_schema_fit_accepts_a_database_ahead_only_by_additive_steps(empty_db: str) -> None:
    from gatehouse.store.migrate import Migration, _apply, _undo, schema_fit

    latest = LATEST_VERSION
    assert await migrate_up(empty_db) == latest
    conn = await asyncpg.connect(empty_db)
    later = Migration(latest + 1, "later_index", "CREATE TABLE gh_later (id int)", "DROP TABLE gh_later", True)
    rewrite = Migration(latest + 2, "later_rewrite", "CREATE TABLE gh_rewrite (id int)", "DROP TABLE gh_rewrite")
    try:
        assert await schema_fit(conn, latest) is None
        assert await schema_fit(conn, latest + 1) == f"schema is at version {latest}, this build expects {latest + 1}"
        # 6 is additive, 5 is not: a build of 5 fits version 6, one of 4 does not.
        assert await schema_fit(conn, 5) is None
        assert await schema_fit(conn, 4) == (
            f"schema is at version {latest}, this build expects 4, and step 5 ({MIGRATIONS[5].name}) is not additive"
        )

        async with conn.transaction():
            await _apply(conn, later)
        assert await conn.fetchval("SELECT additive FROM schema_migrations WHERE version = $1", latest + 1) is True
        assert await schema_fit(conn, latest) is None  # the old build keeps serving
        assert await schema_fit(conn, latest + 1) is None

        async with conn.transaction():
            await _apply(conn, rewrite)
        assert await schema_fit(conn, latest) == (
            f"schema is at version {latest + 2}, this build expects {latest}, and step {latest + 2} "
            "(later_rewrite) is not additive"
        )
        assert await schema_fit(conn, latest + 1) is not None
        assert await schema_fit(conn, latest + 2) is None

        # A table from before the flag existed: every step past the build counts as not additive.
        async with conn.transaction():
            await _undo(conn, rewrite)
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN additive")
        assert await schema_fit(conn, latest) == (
            f"schema is at version {latest + 1}, this build expects {latest}, and step {latest + 1} "
            "(later_index) is not additive"
        )
    finally:
        # migrate_down knows only this build's steps: take the made-up ones out first.
        await conn.execute("DROP TABLE IF EXISTS gh_later, gh_rewrite")
        await conn.execute("DELETE FROM schema_migrations WHERE version > $1", latest)
        await conn.close()
