"""Versioned schema migrations: apply `NNNN_name.up.sql` forward, `.down.sql` back.

The SQL files ship inside the `gatehouse.store.migrations` package and are found by
name. The applied versions live in `schema_migrations`. Each step runs in its own
transaction that first takes a transaction-scoped advisory lock and re-reads the
current version under it, so two migrators started at once (two replicas booting)
apply every step exactly once instead of racing: the loser waits, then sees the step
done. When the last step is undone the bookkeeping table goes too, leaving the
database as empty as it was.

A migration may declare itself **additive** with a line `-- gatehouse: additive` in its
up file: a build that expects the version before it keeps answering right against the
schema after it (the step only adds what that build neither reads nor must write, e.g. a
nullable column or an index; a step whose new rows an older build would misread, such as
5's conditional grants, is not additive). The flag is recorded with the applied version,
so an older build, which has no copy of the newer file, can read it: `schema_fit` accepts
a database ahead of the build when every step past the build's version is additive, and
readiness (server/health.py) stays SERVING through a release's migration until the
rollout replaces the old build.

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
# Added to a table made before the flag existed; versions applied before it count as not additive.
_ADD_ADDITIVE_COLUMN = "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS additive boolean NOT NULL DEFAULT false"
_ADDITIVE_RE = re.compile(r"^-- gatehouse: additive\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the SQL that applies it and the SQL that undoes it."""

    version: int
    name: str
    up: str
    down: str
    additive: bool = False  # `-- gatehouse: additive` in the up file (see the module docstring)


def is_additive(up_sql: str) -> bool:
    """Whether an up file declares itself additive: a line `-- gatehouse: additive`."""
    return _ADDITIVE_RE.search(up_sql) is not None


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
        migrations[version] = Migration(version, names[version], sql["up"], sql["down"], is_additive(sql["up"]))
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


async def schema_fit(conn: asyncpg.Connection, expected: int) -> str | None:
    """None when a build that expects schema version `expected` answers right against the
    database behind `conn`: it is at `expected`, or ahead of it by additive steps only.
    Otherwise why not, in words fit for a log line and a health verdict."""
    version = await read_version(conn)
    if version == expected:
        return None
    if version < expected:
        return f"schema is at version {version}, this build expects {expected}"
    flag = "additive" if await _has_additive_column(conn) else "false"
    rows = await conn.fetch(
        f"SELECT version, name, {flag} AS additive FROM schema_migrations WHERE version > $1 ORDER BY version", expected
    )
    recorded = {row["version"]: row for row in rows}
    for step in range(expected + 1, version + 1):
        # A step with no row (deleted by hand, or a version skipped) may be anything:
        # only a step recorded as additive lets this build serve.
        row = recorded.get(step)
        if row is None or not row["additive"]:
            what = f"step {step} ({row['name']}) is not additive" if row is not None else f"step {step} is not recorded"
            return f"schema is at version {version}, this build expects {expected}, and {what}"
    return None


async def _has_additive_column(conn: asyncpg.Connection) -> bool:
    """Whether the schema_migrations that `read_version` reads (the search path's) has
    the `additive` column; a table of that name in another schema does not count."""
    found = await conn.fetchval(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('schema_migrations') AND attname = 'additive'"
        " AND NOT attisdropped"
    )
    return found is not None


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
    # After the step, and only when missing: ALTER TABLE locks schema_migrations ACCESS
    # EXCLUSIVE until commit (even with IF NOT EXISTS), and every sidecar's readiness
    # reads it, so taken before a long step (an index build) it would turn every old
    # build NOT_SERVING for the whole step, which is what additive steps exist to avoid.
    if not await _has_additive_column(conn):
        await conn.execute(_ADD_ADDITIVE_COLUMN)
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, additive) VALUES ($1, $2, $3)",
        migration.version, migration.name, migration.additive,
    )


async def _undo(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(migration.down)
    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", migration.version)
    if migration.version == 1:
        await conn.execute("DROP TABLE schema_migrations")
