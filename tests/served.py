"""One real `gatehouse serve` for the light client's and the CLI's tests.

A subprocess (tests/processes.py) on a random loopback port and a unix socket, on this
run's database and Redis prefix; `operator_token` (tests/conftest.py) is the operator
API key its callers use.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.processes import ServerProcess, sidecar_env, start_server


@dataclass(frozen=True)
class Served:
    """The server's TCP address (`127.0.0.1:PORT`), its unix socket target
    (`unix:/path`), the operator API key, and its GATEHOUSE_OPERATOR_KEY (the bootstrap
    key, which may only mint operator keys)."""

    process: ServerProcess
    address: str
    unix: str
    key: str
    bootstrap: str


@pytest.fixture(scope="session")
async def served(
    database_url: str, redis_url: str, redis_prefix: str, operator_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    socket = Path(tmp_path_factory.mktemp("served")) / "gatehouse.sock"
    bootstrap = "gh_op_" + secrets.token_urlsafe(24)
    env = sidecar_env(database_url, redis_url, redis_prefix, bootstrap)
    process = await start_server(env, "--workers", "1", "--unix-socket", str(socket))
    try:
        yield Served(process, process.address, f"unix:{socket}", operator_token, bootstrap)
    finally:
        await process.stop()
