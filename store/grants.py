"""What the runtime role may do: plain DML on the schema, and nothing that could lift
row-level security.

Gatehouse uses two database roles. The *owner* runs the migrations and owns every table,
policy and function; it is the only role that could `ALTER TABLE ... NO FORCE ROW LEVEL
SECURITY` or `DROP POLICY`. The *runtime* role is what the server and relay log in as:
it owns nothing and holds only the privileges granted here, so even a compromised or
buggy server cannot switch tenant isolation off, only read and write rows the policies
let it see.

The grants are re-applied, idempotently, by every `migrate_up` (see
`gatehouse.store.migrate`) in the same locked transaction that checks the schema
version. "ALL TABLES IN SCHEMA public" covers whatever the migrations created, so a new
migration never has to remember a GRANT, and a REVOKE ALL first makes the result the
same whatever was granted by hand before. Tables dropped by a down migration take their
grants with them, so nothing is left behind. (`ALTER DEFAULT PRIVILEGES` would also
cover future tables, but it leaves catalogue entries behind that no down migration
removes, and it does nothing for tables created before it ran.)
"""

from __future__ import annotations

import asyncpg

__all__ = ["RuntimeRoleError", "grant_runtime_privileges", "quote_ident"]


class RuntimeRoleError(ValueError):
    """The role named as the runtime role cannot safely be given the schema's privileges."""


# In order. Sequences back the bigserial ids (nextval needs USAGE); EXECUTE covers the
# row-level security predicate, which runs with the caller's privileges. The migration
# bookkeeping is the migrator's alone: the server only reads it to check the version.
_GRANTS = (
    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}",
)


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier (role names cannot be bind parameters)."""
    return '"' + name.replace('"', '""') + '"'


async def grant_runtime_privileges(conn: asyncpg.Connection, role: str) -> None:
    """Give `role` exactly the runtime privileges on every table, sequence and function
    of the public schema. Run as the owner, inside the migration transaction.

    Refuses (RuntimeRoleError) a role that row-level security would not bind: one that
    does not exist, a superuser, a BYPASSRLS role, the owner itself or a member of it,
    or a role that owns a table of the schema.
    """
    await _check_runtime_role(conn, role)
    for statement in _GRANTS:
        await conn.execute(statement.format(role=quote_ident(role)))


async def _check_runtime_role(conn: asyncpg.Connection, role: str) -> None:
    row = await conn.fetchrow(
        """
        SELECT r.rolsuper, r.rolbypassrls,
               r.rolname = current_user AS is_migrator,
               pg_has_role(r.oid, current_user, 'MEMBER') AS in_migrator,
               (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relowner = r.oid) AS owned
        FROM pg_roles r WHERE r.rolname = $1
        """,
        role,
    )
    if row is None:
        raise RuntimeRoleError(
            f"runtime role {role!r} does not exist: create it (LOGIN NOSUPERUSER NOBYPASSRLS) "
            "as a database administrator, or name another with --runtime-role"
        )
    problems: list[str] = []
    if row["rolsuper"]:
        problems.append("is a superuser")
    if row["rolbypassrls"]:
        problems.append("has BYPASSRLS")
    if row["is_migrator"]:
        problems.append("is the role running the migrations (the owner)")
    elif row["in_migrator"]:
        problems.append("is a member of the role running the migrations (the owner)")
    if row["owned"]:
        problems.append(f"owns {row['owned']} object(s) in the public schema")
    if problems:
        raise RuntimeRoleError(
            f"runtime role {role!r} {', '.join(problems)}: row-level security would not bind it. "
            "The server must connect as a role that owns nothing and is neither superuser nor BYPASSRLS"
        )
