"""Server bugs the two-tenant simulation found, each as a small deterministic repro.

Each stays as a regression test once fixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2
from tests.client import user

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


async def test_an_answer_is_the_decision_at_the_revision_it_names(
    sidecar_factory: SidecarFactory, redis_prefix: str, unique: str
) -> None:
    """An answer without min_revision may be stale, but its `revision` is "the tenant
    revision the answer was computed at" (DESIGN): a caller comparing it with the revision
    its write returned must not be told a revoked grant still holds *at* that revision.

    Found while extending the simulation to reads across sidecars (by reading the path,
    not by a disagreement): the simulation asks a sidecar without min_revision only for
    tenants whose latest write it took itself, so it cannot meet this window. Fixed: a
    tenant or subject read at revision N raises the tenant's floor to N
    (PolicyCache._raise_floor), and a decision whose subject was read later than its
    tenant reads the tenant again (DecisionSession.evaluate).
    """
    writer = await sidecar_factory()
    # A sidecar no tenant event reaches (a Redis prefix of its own, no relay): what every
    # sidecar is between a write through another one and that write's event.
    other = await sidecar_factory(redis_prefix=f"{redis_prefix}:deaf{unique}", relay=0)
    tenant = await writer.tenant(f"finding-stamp-{unique}")
    granted = await writer.grant(tenant.id, user("alice"), "acct", "", ["invoice.*"])

    def check(min_revision: int) -> access_pb2.CheckAccessRequest:
        return access_pb2.CheckAccessRequest(
            tenant_id=tenant.id, subject=user("alice"), permission="invoice.read",
            resource=common_pb2.Resource(type="invoice", id="1", scope="emea"), min_revision=min_revision,
        )

    assert (await other.access.CheckAccess(check(granted))).allowed  # alice's grants cached at `granted`
    revoked = await writer.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("alice"), role="acct", scope=""),
        metadata=writer.auth,
    )
    # Any read at the new revision (here the tenant's config) takes the tenant there.
    await other.config.GetTenantConfig(
        config_pb2.GetTenantConfigRequest(tenant_id=tenant.id, min_revision=revoked.revision)
    )
    unbound = await other.access.CheckAccess(check(0))  # no min_revision: may be stale, must say so
    bound = await other.access.CheckAccess(check(revoked.revision))
    assert not bound.allowed and bound.revision == revoked.revision
    # It was ALLOWED "at" the revision that revoked it: one revision, two answers.
    if unbound.revision >= revoked.revision:
        assert (unbound.allowed, unbound.reason) == (bound.allowed, bound.reason), unbound
