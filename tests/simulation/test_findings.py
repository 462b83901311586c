"""Server bugs the two-tenant simulation found, each as a small deterministic repro.

Each stays as a regression test once fixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatehouse.v1 import admin_pb2, config_pb2

if TYPE_CHECKING:
    from tests.simulation.conftest import SidecarFactory


async def test_deleted_tenant_config_is_one_answer_per_revision(
    sidecar_factory: SidecarFactory, redis_prefix: str, unique: str
) -> None:
    writer = await sidecar_factory()
    plan = f"finding-{unique}"

    async def upsert(enabled: bool) -> None:
        features = {"reports": admin_pb2.PlanFeature(default_enabled=enabled, gates=["report.*"])}
        await writer.admin.UpsertPlan(
            admin_pb2.UpsertPlanRequest(plan=admin_pb2.Plan(name=plan, features=features)), metadata=writer.auth
        )

    await upsert(False)
    tenant = await writer.tenant(f"finding-{unique}", activate=False, plan=plan)
    deleted = await writer.admin.DeleteTenant(
        admin_pb2.TenantTransitionRequest(tenant_id=tenant.id, confirm=True), metadata=writer.auth
    )
    ask = config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=deleted.revision)
    before = await writer.config.GetTenantConfig(ask)  # the writer now holds the config at this revision
    assert dict(before.feature_flags) == {"reports": False}

    await upsert(True)  # the deleted tenant's effective flags change, and so does its revision
    cached = await writer.config.GetTenantConfig(ask)
    # A sidecar with a cold L1 and L2 of its own (and no relay: it must not take the
    # shared outbox's events to a stream nobody else reads).
    cold = await sidecar_factory(redis_prefix=f"{redis_prefix}:cold{unique}", relay=0)
    fresh = await cold.config.GetTenantConfig(ask)
    # One tenant, one revision: one config (it was two: {'reports': False} and {'reports': True}).
    assert cached.revision == fresh.revision == deleted.revision + 1
    assert dict(cached.feature_flags) == dict(fresh.feature_flags) == {"reports": True}
