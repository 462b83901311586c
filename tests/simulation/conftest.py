"""Two real sidecars on this run's Postgres and Redis, for the two-tenant simulation.

The writer takes most admin calls (and checks); the reader takes a quarter of the tenant
writes (and checks). They share only the database and Redis, so each answers for the
other's writes only through `min_revision`, the tenant-event stream and the
revision-keyed L2, as any two sidecars of a deployment would.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import AsyncIterator, Awaitable, Callable

import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from tests.client import Client, make_client


@pytest.fixture
def sim_operator_key() -> str:
    return "gh_op_" + secrets.token_urlsafe(24)


SidecarFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def sidecar_factory(
    database_url: str, redis_url: str, redis_prefix: str, sim_operator_key: str, operator_token: str
) -> AsyncIterator[SidecarFactory]:
    """Start sidecars on this run's database (`**overrides` of their Settings, e.g. a
    `redis_prefix` of their own for a cold L2); all are stopped at the end."""
    started: list[tuple[Sidecar, Client]] = []

    async def start(**overrides: object) -> Client:
        settings = Settings(
            listen="127.0.0.1:0",
            database_url=database_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            operator_key=sim_operator_key,
            l1_ttl_seconds=30.0,
            grace_seconds=1.0,
            log_level="WARNING",
        )
        sidecar = Sidecar(dataclasses.replace(settings, **overrides))
        await sidecar.start()
        client = make_client(sidecar.addresses[0], operator_token)
        started.append((sidecar, client))
        return client

    try:
        yield start
    finally:
        for sidecar, client in reversed(started):
            await client.channel.close()
            await sidecar.stop(grace=0.5)


@pytest.fixture
async def sim_sidecars(sidecar_factory: SidecarFactory) -> tuple[Client, Client]:
    """(writer, reader) clients, each to a sidecar of its own."""
    return await sidecar_factory(), await sidecar_factory()


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
