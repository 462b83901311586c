"""AuthZEN when the store cannot answer: 504 at the call's deadline, 503 with Retry-After
when Postgres is gone; never a 500, always the JSON error body."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import AsyncIterator

import aiohttp
import asyncpg

from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from tests.client import Client
from tests.faults import FaultProxy
from tests.server.authzen_client import EVALUATION, EVALUATIONS, AuthZenClient
from tests.server.test_deadlines import MakeProxy, port_of, through


def question(tenant_id: str, who: str) -> dict[str, object]:
    return {"subject": {"type": "user", "id": who}, "action": {"name": "doc.read"},
            "resource": {"type": "doc", "id": "1", "properties": {"tenant_id": tenant_id}}}


@contextlib.asynccontextmanager
async def authzen(settings: Settings, key: str) -> AsyncIterator[AuthZenClient]:
    sidecar = Sidecar(dataclasses.replace(settings, authzen_listen="127.0.0.1:0", relay=0))
    await sidecar.start()
    assert sidecar.authzen is not None
    try:
        async with aiohttp.ClientSession() as session:
            yield AuthZenClient(sidecar.authzen.url, session, key)
    finally:
        await sidecar.stop(grace=0.2)


async def test_an_evaluation_past_its_deadline_is_504(
    sidecar_settings: Settings, client: Client, owner_database_url: str, operator_token: str, unique: str
) -> None:
    tenant = await client.tenant(f"az-deadline-{unique}")
    # The key verified first (Argon2 reads Postgres), so the lock below holds only the decision.
    async with authzen(dataclasses.replace(sidecar_settings, default_deadline_seconds=0.3), operator_token) as http:
        assert (await http.post(EVALUATION, question(tenant.id, "warm"))).status == 200
        locker = await asyncpg.connect(owner_database_url)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
                single = await http.post(EVALUATION, question(tenant.id, "ann"), {"X-Request-ID": "late"})
                batch = await http.post(EVALUATIONS, {"evaluations": [question(tenant.id, "ann")] * 3})
        finally:
            await locker.close()
        after = await http.post(EVALUATION, question(tenant.id, "ann"))
    for reply in (single, batch):
        assert reply.status == 504, reply.body
        assert reply.body["error"]["reason"] == "GATEHOUSE_DEADLINE_EXCEEDED"
    assert single.headers["X-Request-ID"] == "late"
    assert after.status == 200 and after.body["context"]["reason"] == "DECISION_REASON_NOT_A_MEMBER"


async def test_postgres_gone_is_503_with_retry_after(
    sidecar_settings: Settings, client: Client, database_url: str, fault_proxy: MakeProxy, operator_token: str,
    unique: str,
) -> None:
    tenant = await client.tenant(f"az-down-{unique}")
    proxy: FaultProxy = await fault_proxy(port_of(database_url))
    settings = dataclasses.replace(sidecar_settings, database_url=through(database_url, proxy))
    async with authzen(settings, operator_token) as http:
        assert (await http.post(EVALUATION, question(tenant.id, "warm"))).status == 200  # the key verified
        proxy.reset()
        await proxy.refuse()
        replies = [await http.post(EVALUATION, question(tenant.id, f"down{i}")) for i in range(3)]
        await proxy.accept_again()
    statuses = {reply.status for reply in replies}
    assert statuses <= {503, 504} and 503 in statuses, [r.body for r in replies]
    for reply in replies:
        if reply.status == 503:
            assert reply.headers["Retry-After"] == "1"
            assert reply.body["error"]["reason"].startswith("GATEHOUSE_")
