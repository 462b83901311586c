"""The real `gatehouse serve` process talks to Postgres only as the runtime role: its store
pool and its outbox relay both, seen from the database side."""

from __future__ import annotations

import asyncio

import asyncpg

from gatehouse_client.v1 import config_pb2
from tests.client import make_client
from tests.conftest import PG_RUNTIME_ROLE
from tests.processes import sidecar_env, start_server
from tests.store.store_helpers import superuser_dsn

KEY = "runtime-role-operator-key"


async def _sessions(superuser: asyncpg.Connection, application: str) -> list[asyncpg.Record]:
    return await superuser.fetch(
        """
        SELECT a.usename, r.rolsuper, r.rolbypassrls
        FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
        WHERE a.application_name = $1
        """,
        application,
    )


async def test_the_server_and_its_relay_connect_as_the_runtime_role(
    database_url: str, redis_url: str, redis_prefix: str, unique: str, operator_token: str
) -> None:
    application = f"gh-serve-{unique}"
    env = sidecar_env(f"{database_url}?application_name={application}", redis_url, redis_prefix, KEY)
    server = await start_server(env)
    superuser = await asyncpg.connect(superuser_dsn(database_url))
    try:
        client = make_client(server.address, operator_token)
        try:
            # A write (store pool) whose event the relay then publishes (its own connection).
            tenant = await client.tenant(f"role-{unique}")
            config = await client.config.GetTenantConfig(
                config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=tenant.revision)
            )
            assert config.revision == tenant.revision
        finally:
            await client.channel.close()
        sessions = await _sessions(superuser, application)
        for _ in range(50):
            if len(sessions) >= 2:
                break
            await asyncio.sleep(0.1)
            sessions = await _sessions(superuser, application)
        assert len(sessions) >= 2  # at least the pool and the relay
        assert {(row["usename"], row["rolsuper"], row["rolbypassrls"]) for row in sessions} == {
            (PG_RUNTIME_ROLE, False, False)
        }
    finally:
        await superuser.close()
        assert await server.stop() == 0
