"""A release's additive migration must not make the old build's readiness wait
(and so time out, NOT_SERVING) while the step runs."""

from __future__ import annotations

import asyncio

import asyncpg

from gatehouse.store.migrate import migrate_up, schema_fit


async def _waiting_on_lock(conn: asyncpg.Connection, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the migrator never waited")


async def test_readiness_reads_the_version_while_an_additive_step_builds_its_index(empty_db: str) -> None:
    """Input: a database at 5; `migrate up` to 6 whose CREATE INDEX waits on memberships
    (a long write transaction; on a big table, the build itself). Before: the step's
    transaction began with ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS, an
    ACCESS EXCLUSIVE lock held to its commit, so every old-build sidecar's readiness read
    of schema_migrations waited past its probe timeout: NOT_SERVING for the whole
    migration, which is what `-- gatehouse: additive` exists to prevent."""
    assert await migrate_up(empty_db, 5) == 5
    writer = await asyncpg.connect(empty_db)
    probe = await asyncpg.connect(empty_db)
    try:
        writer_tx = writer.transaction()
        await writer_tx.start()
        await writer.execute("LOCK memberships IN ROW EXCLUSIVE MODE")  # an open write
        migrating = asyncio.create_task(migrate_up(empty_db, 6))
        await _waiting_on_lock(probe)
        # What readiness asks (store.Transactions.schema_fit), as a build of 5 would.
        verdict = await asyncio.wait_for(schema_fit(probe, 5), 2.0)
        assert verdict is None
        await writer_tx.rollback()
        assert await asyncio.wait_for(migrating, 10.0) == 6
        assert await schema_fit(probe, 5) is None
    finally:
        await writer.close()
        await probe.close()


async def test_schema_fit_reads_the_flag_of_its_own_schema_migrations_only(empty_db: str) -> None:
    """Input: the search path's schema_migrations without the `additive` column (rows of
    builds from before the flag) and another schema holding a table of that name with
    one. Before: information_schema matched the other table by name alone, so the query
    read a column that is not there: UndefinedColumnError, a readiness check that
    errors instead of a verdict. Now: no flag, so no step counts as additive."""
    assert await migrate_up(empty_db, 6) == 6
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN additive")
        await conn.execute("CREATE SCHEMA other_tool")
        await conn.execute("CREATE TABLE other_tool.schema_migrations (version int, additive boolean)")
        try:
            verdict = await schema_fit(conn, 5)
        finally:
            await conn.execute("DROP SCHEMA other_tool CASCADE")
            await conn.execute("ALTER TABLE schema_migrations ADD COLUMN additive boolean NOT NULL DEFAULT false")
        assert verdict is not None and "step 6" in verdict and "not additive" in verdict
    finally:
        await conn.close()


async def test_a_step_with_no_row_does_not_count_as_additive(empty_db: str) -> None:
    """Input: schema_migrations at 7 (a newer build's additive step) with the row of
    step 6 gone (deleted by hand). Before: only rows present were asked, so a build of 5
    was fit although nothing says what step 6 did. Now: not fit, naming the step."""
    assert await migrate_up(empty_db, 6) == 6
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name, additive) VALUES (7, 'an_index', true)")
        assert await schema_fit(conn, 6) is None
        assert await schema_fit(conn, 5) is None
        await conn.execute("DELETE FROM schema_migrations WHERE version = 6")
        assert await schema_fit(conn, 5) == "schema is at version 7, this build expects 5, and step 6 is not recorded"
        await conn.execute("DELETE FROM schema_migrations WHERE version = 7")
        await conn.execute("INSERT INTO schema_migrations (version, name, additive) VALUES (6, 'memberships_by_subject', true)")
    finally:
        await conn.close()
