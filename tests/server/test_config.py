"""GetTenantConfig: plan defaults merged with overrides, revisions, not_modified."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from gatehouse_client.v1 import admin_pb2, common_pb2, config_pb2

from tests.client import Client
from tests.server.status import details


async def test_config_merges_plan_defaults_with_overrides(client: Client, unique: str) -> None:
    plan = f"biz-{unique}"
    await client.admin.UpsertPlan(
        admin_pb2.UpsertPlanRequest(
            plan=admin_pb2.Plan(
                name=plan,
                features={
                    "sso": admin_pb2.PlanFeature(default_enabled=True),
                    "reports": admin_pb2.PlanFeature(default_enabled=False, gates=["report.*"]),
                },
                quotas={"seats": 50, "projects": 5},
                rate_limits={"api_rps": 100},
            )
        ),
        metadata=client.auth,
    )
    settings = struct_pb2.Struct()
    settings.update({"theme": {"color": "blue", "logo": "x.png"}, "locale": "de"})
    tenant = await client.tenant(f"cfg-{unique}", plan=plan, region="eu-west-1", settings=settings)
    patch = struct_pb2.Struct()
    patch.update({"theme": {"logo": None}, "locale": "fr"})
    patched = await client.admin.PatchTenantConfig(
        admin_pb2.PatchTenantConfigRequest(
            tenant_id=tenant.id,
            settings_patch=patch,
            set_flag_overrides={"reports": True, "sso": False},
            set_quota_overrides={"seats": 75},
        ),
        metadata=client.auth,
    )
    config = await client.config.GetTenantConfig(
        config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=patched.revision)
    )
    assert config.slug == f"cfg-{unique}" and config.plan == plan and config.region == "eu-west-1"
    assert dict(config.feature_flags) == {"sso": False, "reports": True}
    assert dict(config.quotas) == {"seats": 75, "projects": 5}
    assert dict(config.rate_limits) == {"api_rps": 100}
    assert json_format.MessageToDict(config.settings) == {"theme": {"color": "blue"}, "locale": "fr"}
    assert config.revision == patched.revision

    same = await client.config.GetTenantConfig(
        config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, if_revision_newer_than=config.revision)
    )
    assert same.not_modified and same.revision == config.revision and not same.slug


async def test_unknown_tenant_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.config.GetTenantConfig(
            config_pb2.GetTenantConfigRequest(tenant_id="00000000-0000-0000-0000-000000000000")
        )
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(failure.value)[0].reason == "GATEHOUSE_TENANT_NOT_FOUND"


async def test_watch_sleeps_through_writes_that_cannot_change_config(client: Client, unique: str) -> None:
    """Members, roles and assignments move the revision but not the config: a watcher is
    sent the next real change, not a copy of the same config at every revision."""
    tenant = await client.tenant(f"watch-{unique}")
    stream = client.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    try:
        first = await stream.read()
        assert first.revision == tenant.revision
        subject = common_pb2.Subject(type="user", id=f"w-{unique}")
        await client.admin.AddMember(admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=subject), metadata=client.auth)
        await client.admin.CreateRole(
            admin_pb2.CreateRoleRequest(tenant_id=tenant.id, name="auditor", permissions=["audit.read"]),
            metadata=client.auth,
        )
        await client.admin.AssignRole(
            admin_pb2.AssignRoleRequest(tenant_id=tenant.id, subject=subject, role="auditor", scope=""),
            metadata=client.auth,
        )
        patch = struct_pb2.Struct()
        patch.update({"locale": "fr"})
        patched = await client.admin.PatchTenantConfig(
            admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, settings_patch=patch), metadata=client.auth
        )
        second = await asyncio.wait_for(stream.read(), timeout=10)
        # Had the three other writes woken the watch, this would be the first of them.
        assert second.revision == patched.revision
        assert json_format.MessageToDict(second.settings) == {"locale": "fr"}
    finally:
        stream.cancel()
