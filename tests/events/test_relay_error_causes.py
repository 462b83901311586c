"""The relay's failed attempts are counted and logged by the dependency that failed
(`errors{cause=postgres|redis}`, "relay: postgres unavailable"): an operator reading
"redis unavailable" looks at the wrong server."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gatehouse.store.relay import OutboxRelay


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_refusing_connections_is_counted_and_logged_as_postgres(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Input: Postgres refuses the connection (nothing listens on its port), Redis is up.
    # Before: asyncpg.connect raised ConnectionRefusedError, an OSError, which the relay
    # took for a Redis failure: errors{cause="redis"} grew and it logged "redis unavailable".
    dsn = f"postgresql://gatehouse:secret@127.0.0.1:{closed_port()}/nothing"
    relay = OutboxRelay(dsn, redis, prefix="relay-causes")
    caplog.set_level(logging.WARNING, logger="gatehouse.store.relay")
    task = asyncio.create_task(relay.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sum(relay.errors.values()) >= 2:
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert relay.errors["postgres"] >= 2 and relay.errors["redis"] == 0, relay.errors
    text = caplog.text
    assert "postgres unavailable" in text and "redis unavailable" not in text, text
