"""The sequence deploy/kubernetes describes, run for real minus Kubernetes: the migration
Job's `gatehouse migrate up` on a schema-less database as its owner, then the sidecar's
`gatehouse serve` and the relay Deployment's `gatehouse relay`, each with the args and
environment of its manifest, against the shared Postgres and Redis.

Only what a cluster provides is replaced: a Secret reference by the test's DSN, Redis
URL or key; the pods' addresses by free loopback ones (GATEHOUSE_LISTEN,
GATEHOUSE_METRICS_LISTEN, the sidecar's and the relay's) and the emptyDir by a temporary directory
(GATEHOUSE_UNIX_SOCKET); and a Redis key prefix of the test's own is added. Then the
kubelet's probes are asked as the manifest words them (readiness: '', liveness:
'liveness'), the app's target (the unix socket) answers, and the relay, which alone
publishes here (the sidecar runs GATEHOUSE_RELAY=0), appends its heartbeats.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.store.migrate import LATEST_VERSION, current_version
from tests.conftest import PG_RUNTIME_ROLE, runtime_dsn
from tests.deploy.manifests import KUBERNETES, Container, documents, kubernetes_containers
from tests.processes import start_server

BOUND = 20.0  # seconds for the sidecar to turn SERVING and the relay to beat (a shared machine)


def container(command: str) -> Container:
    (found,) = [c for c in kubernetes_containers() if c.command == command]
    return found


def environment(c: Container, secrets_: dict[tuple[str, str], str], **overrides: str) -> dict[str, str]:
    """`c`'s environment with Secret references resolved, on a clean slate: no GATEHOUSE_*
    of the test run's own (conftest sets GATEHOUSE_METRICS_LISTEN) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    for name, value in c.env.items():
        env[name] = secrets_[(value[1], value[2])] if isinstance(value, tuple) else value
    env.update(overrides)
    return env


async def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatehouse.server.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode()


async def check(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def until_serving(target: str, service: str) -> None:
    deadline = time.monotonic() + BOUND
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = await check(target, service)
            if last == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError as error:
            last = error.code()
        await asyncio.sleep(0.2)
    raise AssertionError(f"{target} {service!r}: not SERVING within {BOUND} s (last: {last})")


async def test_migrate_then_serve_then_relay_as_the_manifests_say(
    empty_db: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    migrate, serve, relay = container("migrate"), container("serve"), container("relay")
    if migrate.env.get("GATEHOUSE_RUNTIME_ROLE") != PG_RUNTIME_ROLE:
        pytest.skip(f"this machine's runtime role is {PG_RUNTIME_ROLE}, the Job grants {migrate.env['GATEHOUSE_RUNTIME_ROLE']}")
    database = urlsplit(empty_db).path.lstrip("/")
    prefix = f"{redis_prefix}deploy{secrets.token_hex(3)}"
    secrets_ = {
        ("gatehouse-db", "owner-url"): empty_db,
        ("gatehouse-db", "runtime-url"): runtime_dsn(database),
        ("gatehouse-redis", "url"): redis_url,
        ("gatehouse-operator", "operator-key"): secrets.token_hex(16),
    }
    redis = aioredis.from_url(redis_url)
    relay_process: subprocess.Popen[str] | None = None
    server = None
    try:
        # 1. The Job, to completion: as the owner, granting the runtime role.
        assert await current_version(empty_db) == 0
        code, out = await run(migrate.args, environment(migrate, secrets_))
        assert code == 0, out
        assert f"schema version {LATEST_VERSION} (latest {LATEST_VERSION}); runtime role '{PG_RUNTIME_ROLE}' granted" in out

        # 2. The sidecar, as the runtime role; probes as the kubelet words them.
        socket = tmp_path / Path(str(serve.env["GATEHOUSE_UNIX_SOCKET"])).name
        serve_env = environment(
            serve, secrets_,
            GATEHOUSE_LISTEN="127.0.0.1:0", GATEHOUSE_METRICS_LISTEN="127.0.0.1:0",
            GATEHOUSE_UNIX_SOCKET=str(socket), GATEHOUSE_REDIS_PREFIX=prefix,
        )
        # start_server's own `--listen 127.0.0.1:0` equals the override above.
        server = await start_server(serve_env, *serve.args[1:], command=serve.command)
        readiness = serve.spec["readinessProbe"]["grpc"].get("service", "")
        liveness = serve.spec["livenessProbe"]["grpc"]["service"]
        await until_serving(server.address, readiness)
        assert await check(server.address, liveness) == health_pb2.HealthCheckResponse.SERVING
        # The app's target: the socket in the shared emptyDir.
        app = [c for c in documents(KUBERNETES / "example-app.yaml")[0]["spec"]["template"]["spec"]["containers"] if c["name"] == "app"][0]
        target = {e["name"]: e["value"] for e in app["env"]}["GATEHOUSE_TARGET"]
        assert target.endswith(socket.name)
        await until_serving(f"unix://{socket}", "")

        # 3. The relay: nothing beats on this prefix until it runs (the sidecar relays nothing).
        stream = f"{prefix}:events"
        await asyncio.sleep(1.5)  # more than a heartbeat period: a relay in `serve` would have beaten
        assert await redis.xlen(stream) == 0
        relay_env = environment(
            relay, secrets_, GATEHOUSE_REDIS_PREFIX=prefix, GATEHOUSE_METRICS_LISTEN="127.0.0.1:0"
        )
        relay_process = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.server.cli", *relay.args], env=relay_env, stdout=subprocess.PIPE, text=True
        )
        assert relay_process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(relay_process.stdout.readline), timeout=BOUND)
        assert f"relaying outbox to {stream}" in line, line
        # The manifest turns its /metrics on (here on a free loopback port, not the pod's).
        assert relay.env["GATEHOUSE_METRICS_LISTEN"] and "(metrics: http://127.0.0.1:" in line, line
        deadline = time.monotonic() + BOUND
        while not await redis.xlen(stream):
            assert time.monotonic() < deadline, f"no heartbeat on {stream} within {BOUND} s"
            await asyncio.sleep(0.2)
        ((_, fields),) = await redis.xrange(stream, count=1)
        assert fields[b"kind"] == b"heartbeat" and fields[b"relay"], fields
        assert relay_process.poll() is None
    finally:
        if relay_process is not None:
            relay_process.terminate()
            await asyncio.to_thread(relay_process.wait, 20)
        if server is not None:
            assert await server.stop() == 0
        await redis.delete(f"{prefix}:events")
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            await redis.delete(key)
        await redis.aclose()
