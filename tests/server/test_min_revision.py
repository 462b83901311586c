"""`min_revision` the tenant has not reached: an error with a stable reason and the
current revision, never an answer computed from older data, on every read method."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import access_pb2, common_pb2, config_pb2
from tests.client import Client, user
from tests.server.status import details


def check(tenant_id: str, min_revision: int) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user("alice"), permission="invoice.read",
        resource=common_pb2.Resource(type="invoice", id="1", scope="emea/de"), min_revision=min_revision,
    )


async def refused(call: object) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failure.value.details()
    info, _ = details(failure.value)
    assert info.reason == "GATEHOUSE_REVISION_NOT_REACHED"
    return dict(info.metadata)


async def test_every_read_refuses_a_revision_not_reached(client: Client, unique: str) -> None:
    tenant = await client.tenant(f"future-{unique}")
    revision = await client.grant(tenant.id, user("alice"), "acct", "emea", ["invoice.*"])
    assert (await client.access.CheckAccess(check(tenant.id, revision))).allowed
    future = revision + 1000

    meta = await refused(client.access.CheckAccess(check(tenant.id, future)))
    assert meta == {"tenant_id": tenant.id, "min_revision": str(future), "current_revision": str(revision)}
    batch = access_pb2.CheckAccessBatchRequest(checks=[check(tenant.id, revision), check(tenant.id, future)])
    meta = await refused(client.access.CheckAccessBatch(batch))
    assert meta["check"] == "checks[1]" and meta["current_revision"] == str(revision)
    meta = await refused(
        client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=future))
    )
    assert meta["current_revision"] == str(revision)
    # A reached revision is still answered, from the same cache.
    answer = await client.access.CheckAccess(check(tenant.id, revision))
    assert answer.allowed and answer.revision == revision


async def test_repeating_an_unreachable_revision_does_not_load_postgres(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    tenant = await client.tenant(f"future-flood-{unique}")
    revision = await client.grant(tenant.id, user("alice"), "acct", "emea", ["invoice.*"])
    await client.access.CheckAccess(check(tenant.id, revision))
    assert sidecar.cache is not None
    loads = sidecar.cache.stats.store_loads
    for _ in range(3):
        calls = [client.access.CheckAccess(check(tenant.id, revision + 7)) for _ in range(100)]
        for call in calls:
            await refused(call)
    # Before: every call read the tenant from Postgres (~2 commits each). Now: reads are
    # shared and spaced (one per 50 ms per tenant), a few for the 300 calls.
    assert sidecar.cache.stats.store_loads - loads <= 20
