"""Readiness against a private Redis that stops answering (SIGSTOP): what each service
answers, what the log says, and that a probe's verdict never waits for the dependency."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.cache.l2 import RedisL2
from gatehouse.server.health import LIVENESS, SERVICES, Readiness, describe
from gatehouse.store.migrate import LATEST_VERSION
from gatehouse.store.postgres import connect
from tests.client import health
from tests.dependencies import PrivateRedis


TIMEOUT = 0.5
# The Redis client's own timeout, far longer than a probe may take: the probe must not
# wait for it.
REDIS_TIMEOUT = 3.0
SLACK = 1.0  # a shared machine
PRIVATE = "private redis"


@pytest.fixture
async def readiness(database_url: str, private_redis: PrivateRedis) -> AsyncIterator[Readiness]:
    """A Readiness on the shared Postgres and the private Redis (client timeout REDIS_TIMEOUT)."""
    store = await connect(database_url, min_size=0, max_size=2)
    l2 = RedisL2.from_url(private_redis.url, prefix="ghhealth", ttl_seconds=60, timeout=REDIS_TIMEOUT)
    ready = Readiness(store, l2, LATEST_VERSION, interval=0.1, timeout=TIMEOUT)
    # Its own name in the log: a sidecar of another test, alive on the same event loop,
    # logs "redis not ready" of the shared Redis when the machine is slow.
    assert ready.redis is not None
    ready.redis.name = PRIVATE
    try:
        yield ready
    finally:
        private_redis.thaw()
        for dependency in (ready.postgres, ready.redis):
            if dependency is not None:
                dependency.abandon()
        await l2.close()
        await store.close()


@pytest.fixture
async def channel(readiness: Readiness) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to a gRPC server serving `readiness`'s Health service."""
    # SO_REUSEPORT off (grpc turns it on): a later test's sidecar could otherwise be
    # handed this port while this stopped server still holds it, and hang (seen).
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(readiness.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


async def probe_within_timeout(readiness: Readiness) -> bool:
    start = time.monotonic()
    serving = await readiness.probe()
    took = time.monotonic() - start
    assert took <= TIMEOUT + SLACK, f"a probe took {took:.2f} s"
    return serving


def outstanding_redis_checks() -> int:
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == f"health check: {PRIVATE}" and not task.done())


async def test_frozen_redis_holds_back_only_the_first_readiness_and_never_the_probe(
    readiness: Readiness, channel: grpc.aio.Channel, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatehouse.server.health")

    def lines(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records)

    # Before the first readiness, Redis not answering keeps everything NOT_SERVING.
    private_redis.freeze()
    frozen = time.monotonic()
    # Past the client's timeout: the stuck check gives up, a new one hangs in turn.
    while time.monotonic() - frozen < REDIS_TIMEOUT + 2 * TIMEOUT:
        assert not await probe_within_timeout(readiness)
        assert outstanding_redis_checks() <= 1  # stuck checks do not pile up
    assert set((await health(channel)).values()) == {"NOT_SERVING"}
    # Logged once: the check that hung and then timed out tells nothing new.
    assert lines(f"{PRIVATE} not ready") == 1
    assert lines(f"{PRIVATE} not ready: did not answer within {TIMEOUT} s") == 1

    private_redis.thaw()
    assert await probe_within_timeout(readiness)
    assert set((await health(channel)).values()) == {"SERVING"}
    assert lines(f"{PRIVATE} ready again") == 1

    # After it, a frozen Redis takes no service down (L1 and Postgres answer), is logged
    # once, and still never holds a probe up.
    private_redis.freeze()
    for _ in range(3):
        assert await probe_within_timeout(readiness)
        assert outstanding_redis_checks() <= 1
    assert set((await health(channel)).values()) == {"SERVING"}
    assert lines(f"{PRIVATE} not ready") == 2
    assert lines(f"{PRIVATE} not ready: did not answer within {TIMEOUT} s") == 2

    private_redis.thaw()
    assert await probe_within_timeout(readiness)
    assert lines(f"{PRIVATE} ready again") == 2


def test_describe_names_the_error_even_when_its_message_is_empty() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as error:
            raise RuntimeError("database unavailable") from error
    except RuntimeError as error:
        assert describe(error) == (
            "RuntimeError: database unavailable (from ConnectionRefusedError: [Errno 111] Connect call failed)"
        )


async def test_liveness_answers_serving_while_postgres_is_unfit_and_not_after_shutdown(database_url: str) -> None:
    """`liveness` is what a liveness probe asks: SERVING while the process answers, whatever
    its dependencies say (here: a schema version this build does not expect), and
    NOT_SERVING once the server is stopping."""
    store = await connect(database_url, min_size=0, max_size=1)
    ready = Readiness(store, None, LATEST_VERSION + 1, interval=0.1, timeout=TIMEOUT)
    try:
        assert not await ready.probe()
        assert await status(ready, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await status(ready, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
        await ready.shutdown()
        await ready.probe()  # a round after shutdown changes nothing
        assert await status(ready, LIVENESS) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        ready.postgres.abandon()
        await store.close()


async def test_nothing_is_serving_before_the_first_probe(database_url: str) -> None:
    """grpc's servicer starts with "" SERVING; the sidecar says NOT_SERVING (`not_yet`, before
    the server starts) until a probe round has looked at Postgres and Redis."""
    store = await connect(database_url, min_size=0, max_size=1)
    ready = Readiness(store, None, LATEST_VERSION, interval=0.1, timeout=TIMEOUT)
    try:
        assert await status(ready, "") == health_pb2.HealthCheckResponse.SERVING  # grpc's own start
        await ready.not_yet()
        for name in ("", *SERVICES, LIVENESS):
            assert await status(ready, name) == health_pb2.HealthCheckResponse.NOT_SERVING, name
        assert await ready.probe()
        assert await status(ready, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        ready.postgres.abandon()
        await store.close()


async def status(ready: Readiness, service: str) -> int:
    reply = await ready.servicer.Check(health_pb2.HealthCheckRequest(service=service), None)
    return int(reply.status)


async def test_a_release_migration_that_is_additive_keeps_the_old_build_serving(empty_db: str) -> None:
    """The rollout case: the schema moves one step past this build. An additive step keeps
    every service SERVING (the old build answers right against it); any other step turns
    them NOT_SERVING, and the verdict names the step."""
    from gatehouse.store.migrate import Migration, _apply, migrate_up

    assert await migrate_up(empty_db) == LATEST_VERSION
    conn = await asyncpg.connect(empty_db)
    store = await connect(empty_db, min_size=0, max_size=1)
    ready = Readiness(store, None, LATEST_VERSION, interval=0.1, timeout=TIMEOUT)
    try:
        assert await ready.probe()
        async with conn.transaction():
            await _apply(conn, Migration(LATEST_VERSION + 1, "an_index", "SELECT 1", "SELECT 1", True))
        assert await ready.probe()
        for name in ("", *SERVICES):
            assert await status(ready, name) == health_pb2.HealthCheckResponse.SERVING, name

        async with conn.transaction():
            await _apply(conn, Migration(LATEST_VERSION + 2, "a_rewrite", "SELECT 1", "SELECT 1"))
        assert not await ready.probe()
        for name in ("", *SERVICES):
            assert await status(ready, name) == health_pb2.HealthCheckResponse.NOT_SERVING, name
        assert ready.postgres.verdict == (
            f"schema is at version {LATEST_VERSION + 2}, this build expects {LATEST_VERSION}, "
            f"and step {LATEST_VERSION + 2} (a_rewrite) is not additive"
        )
    finally:
        ready.postgres.abandon()
        await store.close()
        await conn.execute("DELETE FROM schema_migrations WHERE version > $1", LATEST_VERSION)
        await conn.close()
