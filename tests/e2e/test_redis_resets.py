"""Redis connections reset in the middle of calls: answers come from Postgres, never
INTERNAL or UNKNOWN. A real `gatehouse serve` (uvloop, where a reset once surfaced as a
RuntimeError that escaped the L2 guard) against a private redis-server whose clients
are killed over and over while uncached checks run (subjects that are no members are
never held in L1, so every check asks L2, then Postgres)."""

from __future__ import annotations

import asyncio
import collections

import grpc
import redis.asyncio as aioredis

from gatehouse_client.v1 import access_pb2
from tests.client import make_client, user
from tests.dependencies import PrivateRedis
from tests.processes import sidecar_env, start_server


async def test_redis_connection_resets_never_become_internal(
    database_url: str, private_redis: PrivateRedis, operator_token: str, unique: str
) -> None:
    server = await start_server(sidecar_env(database_url, private_redis.url, f"ghreset{unique}", "unused"), "--workers", "1")
    client = make_client(server.address, operator_token)
    killer = aioredis.from_url(private_redis.url)
    try:
        tenant = await client.tenant(f"resets-{unique}")

        async def kill_clients() -> None:
            while True:
                await killer.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                await asyncio.sleep(0.002)  # one task, so one connection: it never kills itself

        killing = asyncio.create_task(kill_clients())
        codes: collections.Counter[str] = collections.Counter()
        try:
            for round_ in range(12):
                calls = [
                    client.access.CheckAccess(access_pb2.CheckAccessRequest(
                        tenant_id=tenant.id, subject=user(f"u{round_}-{i}"), permission="doc.read",
                    ))
                    for i in range(40)
                ]
                for call in calls:
                    try:
                        await call
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as error:
                        codes[error.code().name] += 1
        finally:
            killing.cancel()
        assert codes["INTERNAL"] == 0 and codes["UNKNOWN"] == 0, codes
        assert codes["OK"] >= 400, codes  # Postgres answers while Redis misbehaves
    finally:
        await killer.aclose()
        await client.channel.close()
        await server.stop()
