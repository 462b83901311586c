"""A real `gatehouse serve` (a subprocess, on this run's Postgres and Redis) for the
apply/export tests, and the CLI run as a subprocess against it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import pytest

from gatehouse_client import Client
from tests.processes import sidecar_env, start_server


@dataclass(frozen=True)
class Gatehouse:
    """The server's address and the operator key its callers use."""

    address: str
    key: str

    def cli(self, *args: str, key: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`gatehouse <args> --server <address>` with GATEHOUSE_KEY = `key` (the operator's by default)."""
        env = {**os.environ, "GATEHOUSE_KEY": key if key is not None else self.key}
        return subprocess.run(
            [sys.executable, "-m", "gatehouse.server.cli", *args, "--server", self.address],
            env=env, capture_output=True, text=True, timeout=120, input=stdin,
        )  # fmt: skip


@pytest.fixture(scope="session")
async def gatehouse(
    database_url: str, redis_url: str, redis_prefix: str, operator_token: str
) -> AsyncIterator[Gatehouse]:
    env = sidecar_env(database_url, redis_url, redis_prefix, "gh_op_" + secrets.token_urlsafe(24))
    process = await start_server(env, "--workers", "1")
    try:
        yield Gatehouse(process.address, operator_token)
    finally:
        await process.stop()


@pytest.fixture
def operator(gatehouse: Gatehouse) -> Iterator[Client]:
    """The light client as the operator: to look at (and race) what apply did."""
    with Client(gatehouse.address, key=gatehouse.key, timeout=10) as client:
        yield client
