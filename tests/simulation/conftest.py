"""Two real sidecars on a database and Redis prefix of their own, for the two-tenant simulation.

The writer takes most admin calls (and checks); the reader takes a quarter of the tenant
writes (and checks). They share only the database and Redis, so each answers for the
other's writes only through `min_revision`, the tenant-event stream and the
revision-keyed L2, as any two sidecars of a deployment would.

The simulation's database is its own (made and dropped like the run's, see
tests/conftest.py), so nothing but its own sidecars writes to it: the relays of every
other test's sidecars sweep expired grants from the run's database, each sweep a revision
bump the reference model could not foresee. Its own sidecars do not sweep either
(`expiry_sweep_seconds=0`); the simulation sweeps itself, when the model can say what a
sweep finds (`sim_sweep`).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse.store.assignments import sweep_expired_assignments
from gatehouse.store.transactions import init_connection
from tests.client import Client, make_client
from tests.conftest import create_migrated_database, delete_prefixed, drop_database


@pytest.fixture
def sim_operator_key() -> str:
    return "gh_op_" + secrets.token_urlsafe(24)


SidecarFactory = Callable[..., Awaitable[Client]]


async def _sidecars(settings: Settings, token: str) -> AsyncIterator[SidecarFactory]:
    """Start sidecars with `settings` (`**overrides` of them each); all stopped at the end."""
    started: list[tuple[Sidecar, Client]] = []

    async def start(**overrides: object) -> Client:
        sidecar = Sidecar(dataclasses.replace(settings, **overrides))
        await sidecar.start()
        client = make_client(sidecar.addresses[0], token)
        started.append((sidecar, client))
        return client

    try:
        yield start
    finally:
        for sidecar, client in reversed(started):
            await client.channel.close()
            await sidecar.stop(grace=0.5)


def _settings(database_url: str, redis_url: str, redis_prefix: str, operator_key: str) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        operator_key=operator_key,
        l1_ttl_seconds=30.0,
        grace_seconds=1.0,
        log_level="WARNING",
    )


@pytest.fixture
async def sidecar_factory(
    database_url: str, redis_url: str, redis_prefix: str, sim_operator_key: str, operator_token: str
) -> AsyncIterator[SidecarFactory]:
    """Start sidecars on this run's database (`**overrides` of their Settings, e.g. a
    `redis_prefix` of their own for a cold L2); all are stopped at the end."""
    settings = _settings(database_url, redis_url, redis_prefix, sim_operator_key)
    async for start in _sidecars(settings, operator_token):
        yield start


@pytest.fixture
async def sim_database_url(run_id: str, database_roles: None) -> AsyncIterator[str]:
    """The simulation's own database, migrated (the runtime role's DSN); dropped at the end."""
    name = f"gh_test_{run_id}_sim_{secrets.token_hex(2)}"
    dsn = await create_migrated_database(name)
    try:
        yield dsn
    finally:
        await drop_database(name)


@pytest.fixture
async def sim_redis_prefix(redis_prefix: str) -> AsyncIterator[str]:
    """The simulation's own Redis key prefix (events, L2); every key under it deleted at the end."""
    prefix = f"{redis_prefix}sim{secrets.token_hex(2)}"
    yield prefix
    await delete_prefixed(prefix)


@pytest.fixture
async def sim_operator_token(sim_database_url: str) -> str:
    """An operator API key (`*`) in the simulation's database."""
    from gatehouse.server.admin_auth import create_operator_key
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    store = await connect(sim_database_url, min_size=1, max_size=1)
    try:
        return await create_operator_key(store, Actor("tests"), name="simulation")
    finally:
        await store.close()


@pytest.fixture
async def sim_sidecars(
    sim_database_url: str, redis_url: str, sim_redis_prefix: str, sim_operator_key: str, sim_operator_token: str
) -> AsyncIterator[tuple[Client, Client]]:
    """(writer, reader) clients, each to a sidecar of its own, on the simulation's own
    database and Redis prefix; neither sweeps expired grants."""
    settings = _settings(sim_database_url, redis_url, sim_redis_prefix, sim_operator_key)
    async for start in _sidecars(dataclasses.replace(settings, expiry_sweep_seconds=0.0), sim_operator_token):
        yield await start(), await start()


Sweep = Callable[[], Awaitable[int]]


@pytest.fixture
async def sim_sweep(sim_database_url: str) -> AsyncIterator[Sweep]:
    """The relay's sweep of expired grants (store.assignments.sweep_expired_assignments),
    run on the simulation's database when the simulation says: the number of subjects swept."""
    conn = await asyncpg.connect(sim_database_url)
    try:
        await init_connection(conn)

        async def sweep() -> int:
            return await sweep_expired_assignments(conn, limit=1000)

        yield sweep
    finally:
        await conn.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The simulation's figures, whether or not pytest captured its output (-s or not)."""
    lines = [
        str(value)
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        for name, value in getattr(report, "user_properties", ())
        if name == "simulation"
    ]
    if lines:
        terminalreporter.section("two-tenant simulation")
        for line in lines:
            terminalreporter.write_line(line)
