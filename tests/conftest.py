"""The shared test base: every run gets its own Postgres database and Redis key prefix.

Nothing here is faked: tests talk to the real PostgreSQL and Redis that `./dev test`
made sure are running. Each session creates `gh_test_<random>` owned by the
non-superuser `gatehouse` role (superusers bypass row-level security, so the server
must never run as one), migrates it, and drops it at the end; Redis keys live under a
random prefix that is deleted at the end. A running sidecar's data is never touched.
"""

from __future__ import annotations

import os
import secrets
from typing import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.certs import Pki, issue_pki

PG_ADMIN_URL = os.environ.get("GATEHOUSE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_APP_ROLE = os.environ.get("GATEHOUSE_TEST_PG_ROLE", "gatehouse")
PG_HOST = os.environ.get("GATEHOUSE_TEST_PG_HOST", "127.0.0.1:5432")
REDIS_URL = os.environ.get("GATEHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN_URL)


def app_dsn(database: str) -> str:
    return f"postgresql://{PG_APP_ROLE}@{PG_HOST}/{database}"


async def create_database(name: str) -> str:
    """An empty database owned by the app role; returns its DSN."""
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{PG_APP_ROLE}"')
    finally:
        await conn.close()
    return app_dsn(name)


async def drop_database(name: str) -> None:
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
async def empty_database_url(run_id: str) -> AsyncIterator[str]:
    """A fresh database with no schema (for migration tests)."""
    name = f"gh_test_{run_id}_empty"
    dsn = await create_database(name)
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    """This run's database, migrated to the latest version."""
    from gatehouse.store.migrate import migrate_up

    name = f"gh_test_{run_id}"
    dsn = await create_database(name)
    await migrate_up(dsn)
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
async def redis_prefix(run_id: str) -> AsyncIterator[str]:
    """This run's Redis key prefix; every key under it is deleted at the end."""
    prefix = f"ghtest{run_id}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
def unique() -> Iterator[str]:
    """A short random suffix for slugs and ids, so tests sharing a database never collide."""
    yield secrets.token_hex(4)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CAs and certificates made for this run; the server's files live in a temporary directory."""
    return issue_pki(tmp_path_factory.mktemp("pki"))
