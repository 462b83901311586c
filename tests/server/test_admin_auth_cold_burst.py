"""A valid API key's first calls to a sidecar that has not verified it yet (a new pod, a
restart), many at once from one address: they share one Argon2 verification and all
succeed. The failed-authentication limit is for keys that fail, not for a valid key's
burst."""

from __future__ import annotations

import asyncio

import grpc

from gatehouse_client.v1 import admin_pb2
from tests.client import Client


async def test_a_burst_of_first_calls_with_a_valid_key_is_not_refused_as_failed_authentications(
    client: Client, second: Client, unique: str
) -> None:
    # Input: 30 concurrent GetTenant calls (admin calls in flight are capped at 32) with the (valid) operator API key, on a fresh
    # sidecar (`second`) that has not verified the key yet. Before: each call spent a
    # failed-authentication token before joining the one verification in flight, so past
    # the burst (10) they were refused RESOURCE_EXHAUSTED "too many failed authentications
    # from this address" though no authentication failed.
    tenant = await client.tenant(f"burst-{unique}")
    calls = [
        second.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=second.auth) for _ in range(30)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert not refused, {(r.code(), r.details()) for r in refused}
