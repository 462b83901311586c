"""Closing watch streams whose client never read must log nothing at ERROR (issue 12:
100 such streams logged 100 tracebacks)."""

from __future__ import annotations

import asyncio
import secrets

import grpc
from google.protobuf import struct_pb2

from gatehouse.server.app import Sidecar
from gatehouse_client.v1 import admin_pb2, config_pb2, config_pb2_grpc
from tests.client import Client
from tests.fuzz.conftest import ErrorRecords


async def test_closing_unread_watch_streams_logs_nothing(sidecar: Sidecar, client: Client, error_log: ErrorRecords) -> None:
    tenant = await client.tenant(f"fuzz-watch-{secrets.token_hex(3)}")
    before = len(error_log.records)
    channel = grpc.aio.insecure_channel(sidecar.addresses[0])
    stub = config_pb2_grpc.ConfigServiceStub(channel)
    streams = [stub.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id)) for _ in range(100)]
    # Started, never read: the server has sent (or is sending) the first config.
    await asyncio.gather(*(stream.wait_for_connection() for stream in streams))
    # Two changes of ~60 KB each: every stream's flow-control window fills, so the
    # server is blocked writing to readers that never read when they go away.
    for i in range(2):
        patch = struct_pb2.Struct()
        patch.update({f"blob{i}": "x" * 60_000})
        await client.admin.PatchTenantConfig(
            admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, settings_patch=patch), metadata=client.auth
        )
    await asyncio.sleep(0.5)
    for stream in streams[:50]:
        stream.cancel()
    await channel.close()  # the other 50: the channel goes away under them
    await asyncio.sleep(1.0)  # let the server notice and finish every handler
    logged = error_log.describe()[before:]
    assert not logged, logged[:3]
