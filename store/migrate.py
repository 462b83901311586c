"""Versioned schema migrations: apply `NNNN_name.up.sql` forward, `.down.sql` back.

The SQL files ship inside the `gatehouse.store.migrations` package and are found by
name. The applied versions live in `schema_migrations`. Each step runs in its own
transaction that first takes a transaction-scoped advisory lock and re-reads the
current version under it, so two migrators started at once (two replicas booting)
apply every step exactly once instead of racing: the loser waits, then sees the step
done. When the last step is undone the bookkeeping table goes too, leaving the
database as empty as it was.

Migrations run as the *owner* role. `migrate_up` then (re)grants the runtime role the
server connects as its DML privileges on everything the schema holds, in the same
locked transaction (`gatehouse.store.grants`), so no migration file carries a GRANT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from gatehouse.store.driver_errors import translated
from gatehouse.store.grants import grant_runtime_privileges

MIGRATIONS_PACKAGE = "gatehouse.store.migrations"
_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")

# Any constant works as long as every migrator uses the same one: "gatehous" in ASCII.
_ADVISORY_LOCK_KEY = 0x67617465686F7573

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the SQL that applies it and the SQL that undoes it."""

    version: int
    name: str
    up: str
    down: str


def discover() -> dict[int, Migration]:
    """Every migration shipped with this build, by version (1, 2, ... with no gaps)."""
    found: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        version = int(match["version"])
        if names.setdefault(version, match["name"]) != match["name"]:
            raise RuntimeError(f"two migrations share version {version}")
        found.setdefault(version, {})[match["direction"]] = entry.read_text(encoding="utf-8")
    migrations: dict[int, Migration] = {}
    for version in sorted(found):
        sql = found[version]
        if set(sql) != {"up", "down"}:
            raise RuntimeError(f"migration {version:04d} needs both an .up.sql and a .down.sql file")
        migrations[version] = Migration(version, names[version], sql["up"], sql["down"])
    if list(migrations) != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, found {list(migrations)}")
    return migrations


MIGRATIONS = discover()
LATEST_VERSION: int = max(MIGRATIONS, default=0)


async def read_version(conn: asyncpg.Connection) -> int:
    """The schema version of the database behind `conn`; 0 when it has no schema."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    version: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return version


async def current_version(dsn: str) -> int:
    """The schema version of the database at `dsn`; 0 when it has no schema."""
    with translated():
        conn = await asyncpg.connect(dsn)
        try:
            return await read_version(conn)
        finally:
            await conn.close()


async def migrate_up(dsn: str, target: int | None = None, *, runtime_role: str = "") -> int:
    """Apply migrations up to `target` (default: the latest); returns the version reached.

    A database already at or past `target` is left alone. With `runtime_role`, that role
    is then granted exactly the runtime privileges on every table, sequence and function
    (again each time, so a database migrated before the role existed catches up);
    RuntimeRoleError if row-level security would not bind it.
    """
    goal = LATEST_VERSION if target is None else _check_target(target)
    return await _migrate(dsn, goal, up=True, runtime_role=runtime_role)


async def migrate_down_to(dsn: str, target: int | None) -> int:
    """`gatehouse migrate down [--to N]`: to `target`, or (None) one step back from the
    database's current version; returns the version reached."""
    if target is None:
        target = max(await current_version(dsn) - 1, 0)
    return await migrate_down(dsn, target)


async def migrate_down(dsn: str, target: int = 0) -> int:
    """Undo migrations down to `target` (default: no schema at all); returns the version reached.

    A database already at or below `target` is left alone.
    """
    return await _migrate(dsn, _check_target(target), up=False)


def _check_target(target: int) -> int:
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target version must be between 0 and {LATEST_VERSION}, got {target}")
    return target


async def _migrate(dsn: str, goal: int, *, up: bool, runtime_role: str = "") -> int:
    with translated():
        conn = await asyncpg.connect(dsn)
        try:
            # One step per transaction, re-deciding each time under the lock: a concurrent
            # migrator may have moved the version while we waited for it.
            while True:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_KEY)
                    version = await read_version(conn)
                    if up and version < goal:
                        await _apply(conn, MIGRATIONS[version + 1])
                    elif not up and goal < version <= LATEST_VERSION:
                        await _undo(conn, MIGRATIONS[version])
                    else:
                        # Still under the lock: a concurrent migrator cannot be halfway
                        # through a step whose new tables this would miss.
                        if runtime_role and version > 0:
                            await grant_runtime_privileges(conn, runtime_role)
                        return version
        finally:
            await conn.close()


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(_CREATE_VERSION_TABLE)
    # No arguments: asyncpg sends the simple-query protocol, which runs a whole
    # multi-statement file (functions with $$ bodies included) in one go.
    await conn.execute(migration.up)
    await conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
    )


async def _undo(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(migration.down)
    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", migration.version)
    if migration.version == 1:
        await conn.execute("DROP TABLE schema_migrations")
