"""Row-level security with teeth: the role the server connects as is bound by the
policies and cannot lift them.

The server, store and relay connect as the runtime role (`database_url`), which owns no
table, is neither superuser nor BYPASSRLS and holds only DML. So a deliberately
unfiltered query scoped to tenant A returns none of tenant B's rows, and nothing that
role can send (ALTER TABLE, DROP POLICY, replacing the predicate function, SET ROLE,
`row_security = off`) gets it around that.
"""

from __future__ import annotations

import asyncpg
import pytest

from gatehouse.engine.model import TenantRecord
from gatehouse.settings import dsn_user
from gatehouse.store.postgres import connect
from tests.conftest import PG_OWNER_ROLE, PG_RUNTIME_ROLE

# The tables the `two_tenants` fixture writes rows to, for both tenants, through the store.
FILLED = ("tenants", "roles", "memberships", "role_assignments", "audit_log", "outbox")


async def tenant_scoped_tables(conn: asyncpg.Connection) -> dict[str, str]:
    """Every table under row-level security, and its tenant column, read from the catalogue
    so that tables added by later migrations are covered without editing this test."""
    rows = await conn.fetch(
        """
        SELECT c.relname,
               CASE WHEN c.relname = 'tenants' THEN 'id' ELSE 'tenant_id' END AS tenant_column
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relrowsecurity
        ORDER BY 1
        """
    )
    return {row["relname"]: row["tenant_column"] for row in rows}


async def _unfiltered(conn: asyncpg.Connection, table: str, column: str) -> list[str | None]:
    # SELECT * with no WHERE at all: only row-level security decides what comes back.
    rows = await conn.fetch(f"SELECT * FROM {table}")
    return [None if row[column] is None else str(row[column]) for row in rows]


async def test_every_table_with_tenant_rows_is_under_forced_rls(runtime: asyncpg.Connection) -> None:
    # A later migration that adds a tenant_id table without a policy fails here.
    unprotected = await runtime.fetch(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND (c.relname = 'tenants' OR EXISTS (
                SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
          AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                   AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))
        """
    )
    assert [row["relname"] for row in unprotected] == []
    assert set(FILLED) <= set(await tenant_scoped_tables(runtime))


async def test_unfiltered_select_under_tenant_a_returns_none_of_tenant_bs_rows(
    runtime: asyncpg.Connection, superuser: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord]
) -> None:
    a, b = two_tenants
    tables = await tenant_scoped_tables(runtime)
    for table in FILLED:
        # Not vacuous: behind RLS, B does have rows in every one of these tables.
        assert await superuser.fetchval(f"SELECT count(*) FROM {table} WHERE {tables[table]} = $1", b.id) > 0

    seen: dict[str, list[str | None]] = {}
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", a.id)
        for table, column in tables.items():
            seen[table] = await _unfiltered(runtime, table, column)

    assert {table: set(ids) - {a.id} for table, ids in seen.items()} == {table: set() for table in tables}
    assert all(seen[table] for table in FILLED), seen  # A's own rows are there


async def test_forced_rls_filters_even_the_owner(
    owner_database_url: str, two_tenants: tuple[TenantRecord, TenantRecord]
) -> None:
    # Defence in depth: the owner (migrations only) is no superuser either, and FORCE
    # ROW LEVEL SECURITY binds it too while the policies are in place.
    a, _ = two_tenants
    owner = await asyncpg.connect(owner_database_url)
    try:
        assert await owner.fetchval("SELECT current_user") == PG_OWNER_ROLE
        async with owner.transaction():
            await owner.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", a.id)
            for table, column in (await tenant_scoped_tables(owner)).items():
                assert set(await _unfiltered(owner, table, column)) <= {a.id}, table
    finally:
        await owner.close()


async def test_no_tenant_setting_sees_and_writes_nothing(
    runtime: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord]
) -> None:
    tables = await tenant_scoped_tables(runtime)
    # Never set on this session: current_setting(..., true) is NULL, the policy NULL.
    assert await runtime.fetchval("SELECT current_setting('gatehouse.tenant_id', true)") is None
    for table, column in tables.items():
        assert await _unfiltered(runtime, table, column) == [], table
    # Set and then ended with its transaction: the setting reads '', which matches nothing.
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", two_tenants[0].id)
    assert await runtime.fetchval("SELECT current_setting('gatehouse.tenant_id', true)") == ""
    for table, column in tables.items():
        assert await _unfiltered(runtime, table, column) == [], table
    # And unscoped writes are refused, not silently scoped to someone.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await runtime.execute(
            "INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, 'user', 'nobody')",
            two_tenants[0].id,
        )
    assert await runtime.execute("UPDATE tenants SET name = 'owned'") == "UPDATE 0"
    assert await runtime.execute("DELETE FROM roles") == "DELETE 0"


def _lifting_attempts(table: str) -> list[str]:
    """Statements that would switch off or widen row-level security on `table`."""
    return [
        f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY",
        f"DROP POLICY tenant_isolation ON {table}",
        f"ALTER POLICY tenant_isolation ON {table} USING (true)",
        f"CREATE POLICY let_me_in ON {table} USING (true)",
        f"ALTER TABLE {table} OWNER TO {PG_RUNTIME_ROLE}",
        f"TRUNCATE {table}",
        f"DROP TABLE {table}",
        f"CREATE TRIGGER sneak BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION gatehouse_touch_updated_at()",
    ]


async def test_the_runtime_role_cannot_lift_row_level_security(runtime: asyncpg.Connection) -> None:
    tables = await tenant_scoped_tables(runtime)
    attempts = [statement for table in tables for statement in _lifting_attempts(table)] + [
        # The policies' predicate, swapped for one that lets everything through.
        "CREATE OR REPLACE FUNCTION gatehouse_tenant_visible(row_tenant uuid) RETURNS boolean"
        " LANGUAGE sql STABLE AS $$ SELECT true $$",
        "DROP FUNCTION gatehouse_tenant_visible(uuid) CASCADE",
        "CREATE TABLE escape_hatch (id int)",
        f"SET ROLE {PG_OWNER_ROLE}",
        "SET ROLE postgres",
    ]
    allowed = []
    for statement in attempts:
        try:
            async with runtime.transaction():
                await runtime.execute(statement)
        except asyncpg.InsufficientPrivilegeError:
            continue
        allowed.append(statement)
    assert allowed == []
    # Nothing changed under the attempts.
    assert set(await tenant_scoped_tables(runtime)) == set(tables)


async def test_row_security_off_makes_queries_fail_not_see_more(
    runtime: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord]
) -> None:
    # For a role that does not bypass RLS, `row_security = off` means "error rather than
    # filter", so even a client that asks for it gets no unfiltered rows.
    async with runtime.transaction():
        await runtime.execute("SET LOCAL row_security = off")
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", two_tenants[0].id)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await runtime.fetch("SELECT * FROM roles")


async def test_the_runtime_role_is_no_superuser_bypasses_nothing_and_owns_nothing(
    runtime: asyncpg.Connection,
) -> None:
    assert await runtime.fetchval("SELECT current_user") == PG_RUNTIME_ROLE
    role = await runtime.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = current_user"
    )
    assert dict(role) == {
        "rolsuper": False,
        "rolbypassrls": False,
        "rolcreatedb": False,
        "rolcreaterole": False,
        "rolcanlogin": True,
    }
    owned = await runtime.fetchrow(
        """
        SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) AS relations,
               (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) AS functions,
               (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) AS schemas,
               (SELECT count(*) FROM pg_database WHERE datdba = r.oid AND datname = current_database()) AS db,
               pg_has_role(r.oid, $1, 'MEMBER') AS in_owner_role
        FROM pg_roles r WHERE r.rolname = current_user
        """,
        PG_OWNER_ROLE,
    )
    assert dict(owned) == {"relations": 0, "functions": 0, "schemas": 0, "db": 0, "in_owner_role": False}
    # The owner, by contrast, owns the tables (so it is not what the server may run as).
    tables = await tenant_scoped_tables(runtime)
    owners = await runtime.fetch(
        "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relname = ANY($1::text[])",
        list(tables),
    )
    assert [row["owner"] for row in owners] == [PG_OWNER_ROLE]


async def test_the_runtime_role_holds_dml_only(runtime: asyncpg.Connection) -> None:
    rows = await runtime.fetch(
        """
        SELECT c.relname,
               array(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                               'REFERENCES', 'TRIGGER']) AS p
                     WHERE has_table_privilege(c.oid, p)) AS privileges
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        """
    )
    privileges = {row["relname"]: set(row["privileges"]) for row in rows}
    dml = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert privileges.pop("schema_migrations") == {"SELECT"}
    assert privileges == {table: dml for table in privileges}
    assert await runtime.fetchval("SELECT has_schema_privilege('public', 'CREATE')") is False
    assert await runtime.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')") is False


async def test_the_store_connects_as_the_runtime_role(
    database_url: str, superuser: asyncpg.Connection, unique: str
) -> None:
    # What the server is configured with (tests/server and tests/e2e use this DSN too),
    # and what its connections turn out to be, seen from the server side.
    assert dsn_user(database_url) == PG_RUNTIME_ROLE
    application = f"gh-role-{unique}"
    store = await connect(f"{database_url}?application_name={application}", min_size=2, max_size=2)
    try:
        await store.ping()
        users = await superuser.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = $1", application
        )
    finally:
        await store.close()
    assert [row["usename"] for row in users] == [PG_RUNTIME_ROLE]
