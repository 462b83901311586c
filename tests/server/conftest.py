"""A real sidecar (in this process, on a random loopback port) and gRPC stubs to it."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import AsyncIterator

import pytest

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from tests.client import Client, make_client


@pytest.fixture(scope="session")
def operator_key() -> str:
    return "gh_op_" + secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def sidecar_settings(database_url: str, redis_url: str, redis_prefix: str, operator_key: str) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        operator_key=operator_key,
        l1_ttl_seconds=30.0,
        grace_seconds=1.0,
        # Envoy's ext_authz served too, with the example mapping: every suite that uses
        # this sidecar (the fuzz suite above all) reaches it.
        ext_authz_config=str(Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "gatehouse-routes.yaml"),
    )


@pytest.fixture(scope="session")
async def sidecar(sidecar_settings: Settings) -> AsyncIterator[Sidecar]:
    running = Sidecar(sidecar_settings)
    await running.start()
    yield running
    await running.stop(grace=0.5)


@pytest.fixture(scope="session")
async def client(sidecar: Sidecar, operator_token: str) -> AsyncIterator[Client]:
    c = make_client(sidecar.addresses[0], operator_token)
    yield c
    await c.channel.close()


@pytest.fixture
async def second(sidecar_settings: Settings, operator_token: str) -> AsyncIterator[Client]:
    """A client of a second sidecar: same database, same Redis prefix (what another pod sees)."""
    other = Sidecar(sidecar_settings)
    await other.start()
    client = make_client(other.addresses[0], operator_token)
    yield client
    await client.channel.close()
    await other.stop(grace=0)
