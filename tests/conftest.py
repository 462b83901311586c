"""The shared test base: every run gets its own Postgres database and Redis key prefix.

Nothing here is faked: tests talk to the real PostgreSQL and Redis that `./dev test`
made sure are running. Each session creates `gh_test_<random>` owned by the owner role
`gatehouse`, migrates it as that owner (granting the runtime role its privileges, as
`gatehouse migrate up` does), and drops it at the end; Redis keys live under a random
prefix that is deleted at the end. A running sidecar's data is never touched.

`database_url` is the *runtime* role's DSN (`gatehouse_app`: owns nothing, no superuser,
no BYPASSRLS), so the server, store and relay tests run the product exactly as deployed,
bound by row-level security it cannot switch off. Tests that need the owner's rights
(migrations) ask for `owner_database_url` or `empty_database_url`.
"""

from __future__ import annotations

import os
import secrets
from typing import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.certs import Pki, issue_pki

# Private Postgres and Redis servers (to stop, freeze and cut off) for every test that asks.
pytest_plugins = ["tests.dependencies", "tests.faults", "tests.served"]

PG_ADMIN_URL = os.environ.get("GATEHOUSE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_OWNER_ROLE = os.environ.get("GATEHOUSE_TEST_PG_OWNER_ROLE", "gatehouse")
PG_RUNTIME_ROLE = os.environ.get("GATEHOUSE_TEST_PG_RUNTIME_ROLE", "gatehouse_app")
PG_HOST = os.environ.get("GATEHOUSE_TEST_PG_HOST", "127.0.0.1:5432")
REDIS_URL = os.environ.get("GATEHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Every `gatehouse serve` a test starts serves /metrics on a free port of its own, never
# the default 127.0.0.1:9464 (a `./dev serve` of the developer's, or another test's server).
os.environ["GATEHOUSE_METRICS_LISTEN"] = "127.0.0.1:0"

# What `./dev setup` gives both roles; the runtime role additionally owns nothing.
_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"


async def _admin(admin_url: str = PG_ADMIN_URL) -> asyncpg.Connection:
    return await asyncpg.connect(admin_url)


def owner_dsn(database: str, host: str = PG_HOST) -> str:
    return f"postgresql://{PG_OWNER_ROLE}@{host}/{database}"


def runtime_dsn(database: str, host: str = PG_HOST) -> str:
    return f"postgresql://{PG_RUNTIME_ROLE}@{host}/{database}"


async def ensure_roles(admin_url: str = PG_ADMIN_URL) -> None:
    """Create the owner and runtime roles when missing: a machine set up before the roles
    were split has only the owner (and a private cluster has neither). Existing roles are
    left as they are."""
    conn = await _admin(admin_url)
    try:
        for role in (PG_OWNER_ROLE, PG_RUNTIME_ROLE):
            if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role) is None:
                try:
                    await conn.execute(f'CREATE ROLE "{role}" {_ROLE_ATTRIBUTES}')
                except asyncpg.DuplicateObjectError:
                    pass  # a concurrent test run made it first
    finally:
        await conn.close()


async def create_database(name: str, *, admin_url: str = PG_ADMIN_URL, host: str = PG_HOST) -> str:
    """An empty database owned by the owner role; returns the owner's DSN to it.

    `admin_url` and `host` name another cluster than the shared one (a test's private
    Postgres, see tests.dependencies)."""
    conn = await _admin(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{PG_OWNER_ROLE}"')
    finally:
        await conn.close()
    return owner_dsn(name, host)


async def create_migrated_database(name: str, *, admin_url: str = PG_ADMIN_URL, host: str = PG_HOST) -> str:
    """A database migrated to the latest version by its owner; returns the runtime DSN."""
    from gatehouse.store.migrate import migrate_up

    await migrate_up(await create_database(name, admin_url=admin_url, host=host), runtime_role=PG_RUNTIME_ROLE)
    return runtime_dsn(name, host)


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
async def database_roles() -> None:
    await ensure_roles()


@pytest.fixture(scope="session")
async def empty_database_url(run_id: str, database_roles: None) -> AsyncIterator[str]:
    """A fresh database with no schema, as its owner (for migration tests)."""
    name = f"gh_test_{run_id}_empty"
    dsn = await create_database(name)
    yield dsn
    await drop_database(name)


@pytest.fixture(scope="session")
async def database_url(run_id: str, database_roles: None) -> AsyncIterator[str]:
    """This run's database, migrated to the latest version: the runtime role's DSN."""
    name = f"gh_test_{run_id}"
    dsn = await create_migrated_database(name)
    yield dsn
    await drop_database(name)


@pytest.fixture
async def empty_db(empty_database_url: str) -> AsyncIterator[str]:
    """The schema-less database (owner's DSN), emptied before and after the test whatever
    anyone did to it."""
    from gatehouse.store.migrate import migrate_down

    await migrate_down(empty_database_url, 0)
    yield empty_database_url
    await migrate_down(empty_database_url, 0)


@pytest.fixture(scope="session")
def owner_database_url(database_url: str, run_id: str) -> str:
    """This run's database as its owner (which ran the migrations)."""
    return owner_dsn(f"gh_test_{run_id}")


@pytest.fixture(scope="session")
async def operator_token(database_url: str) -> str:
    """A real operator API key (`*`) in this run's database: what every test's admin
    calls carry. (The GATEHOUSE_OPERATOR_KEY bootstrap may only manage operator keys.)"""
    from gatehouse.server.admin_auth import create_operator_key
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    store = await connect(database_url, min_size=1, max_size=1)
    try:
        return await create_operator_key(store, Actor("tests"), name="tests")
    finally:
        await store.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
async def redis_prefix(run_id: str) -> AsyncIterator[str]:
    """This run's Redis key prefix; every key under it is deleted at the end."""
    prefix = f"ghtest{run_id}"
    yield prefix
    await delete_prefixed(prefix)


async def delete_prefixed(prefix: str) -> None:
    """Delete every key under `prefix:` in the shared Redis (a run's or a suite's own)."""
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
