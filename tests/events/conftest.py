"""Fixtures for tenant-event tests: isolated databases and a private Redis server."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gatehouse.store.postgres import PostgresStore, connect
from tests.conftest import create_migrated_database, drop_database


@pytest.fixture
async def isolated_database(database_roles: None) -> AsyncIterator[str]:
    """A migrated database of its own (the runtime role's DSN): no other sidecar's relay
    publishes its outbox."""
    name = f"gh_test_iso_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name)
    yield dsn
    await drop_database(name)


@pytest.fixture
async def isolated_store(isolated_database: str) -> AsyncIterator[PostgresStore]:
    store = await connect(isolated_database)
    yield store
    await store.close()


@pytest.fixture
async def fresh_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"ghtest{secrets.token_hex(4)}"
    yield prefix
    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)
    await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a random loopback port, to stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (./dev setup installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = aioredis.from_url(self.url)
        try:
            for _ in range(100):
                try:
                    if await client.ping():
                        return
                except Exception:
                    await asyncio.sleep(0.05)
            raise AssertionError("private redis did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    yield server
    server.stop()
