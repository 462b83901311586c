"""A REPLACE can take access away (a shorter expiry, a narrower condition: as good as a
revoke in a second), so a key that may assign but not revoke
(`gatehouse.role.assign` without `gatehouse.role.revoke`) may not REPLACE."""

from __future__ import annotations

import time

import grpc
import pytest

from gatehouse_client.v1 import admin_pb2
from tests.client import Client
from tests.server.test_admin_replace_grant import REPLACE, accountant_tenant, assign, at, bearer, held


async def test_a_key_that_may_not_revoke_cannot_cut_a_grant_short_by_replace(client: Client, unique: str) -> None:
    tenant = await accountant_tenant(client, f"norev-{unique}")
    assigner = await client.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="assigner",
                                      permissions=["gatehouse.role.assign", "invoice.*"],
                                      roles=[admin_pb2.RoleGrant(role="admin")]),
        metadata=client.auth,
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as cannot_revoke:
        await client.admin.RevokeRole(
            admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=assign(tenant.id, "alice", "x", "").subject,
                                        role="accountant", scope="emea"),
            metadata=bearer(assigner.secret),
        )  # fmt: skip
    assert cannot_revoke.value.code() == grpc.StatusCode.PERMISSION_DENIED
    terms = await held(client, tenant.id, "alice")

    with pytest.raises(grpc.aio.AioRpcError) as cannot_replace:
        await client.admin.AssignRole(
            assign(tenant.id, "alice", "accountant", "emea", condition="false",
                   expires_at=at(time.time() + 2), on_existing=REPLACE),
            metadata=bearer(assigner.secret),
        )  # fmt: skip
    assert cannot_replace.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await held(client, tenant.id, "alice") == terms
