"""Health tells the truth when Postgres hangs: a real `gatehouse serve` on a private Postgres
that is frozen (SIGSTOP on the postmaster and all its processes), then thawed.

A frozen server is not a stopped one: connections open and bytes go out, but nothing
answers. This once kept every service SERVING for 32 s (see server/health.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.server.health import LIVENESS
from tests.client import wait_for_health
from tests.dependencies import PrivatePostgres, PrivateRedis
from tests.processes import start_server


INTERVAL = 1.0
TIMEOUT = 1.0
BOUND = INTERVAL + TIMEOUT + 2.0  # the promise is interval + timeout; slack for a shared machine


async def test_frozen_postgres_turns_every_service_not_serving_within_interval_plus_timeout(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    env = {
        "GATEHOUSE_DATABASE_URL": private_postgres.database_url,
        "GATEHOUSE_REDIS_URL": private_redis.url,
        "GATEHOUSE_LOG_LEVEL": "INFO",
        "GATEHOUSE_HEALTH_INTERVAL_SECONDS": str(INTERVAL),
        "GATEHOUSE_HEALTH_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = await start_server(env, "--workers", "1", stderr=log)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            await wait_for_health(channel, "SERVING", bound=BOUND)

            private_postgres.freeze()
            try:
                await wait_for_health(channel, "NOT_SERVING", bound=BOUND)
                assert "postgres not ready: did not answer within 1.0 s" in log_path.read_text()
                # Liveness is not readiness: a restart would not mend Postgres
                # (deploy/kubernetes/ probes `liveness`).
                assert await liveness(channel) == health_pb2.HealthCheckResponse.SERVING
            finally:
                private_postgres.thaw()

            await wait_for_health(channel, "SERVING", bound=BOUND)
            assert await liveness(channel) == health_pb2.HealthCheckResponse.SERVING
            log_text = log_path.read_text()
            assert "postgres ready again" in log_text
            # On a change of verdict, not every round: one line for the whole outage.
            assert log_text.count("postgres not ready") == 1, log_text
    finally:
        server.kill()


async def liveness(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=2)
    return int(reply.status)
