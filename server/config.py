"""ConfigService: a tenant's effective configuration, from the same cache as CheckAccess."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from gatehouse.cache.policy_cache import CachedTenant, PolicyCache
from gatehouse.engine.decision import effective_flags
from gatehouse.engine.validate import require_id, require_revision
from gatehouse.errors import TenantNotFound
from gatehouse.server.convert import STATUS_TO_PROTO, dict_to_struct
from gatehouse.server.errors import abort, grpc_errors
from gatehouse.v1 import config_pb2, config_pb2_grpc

_VIEW = "config"


def config_message(entry: CachedTenant) -> config_pb2.TenantConfig:
    """The TenantConfig of a cached tenant, built once per revision and memoised on the entry."""
    message = entry.views.get(_VIEW)
    if message is None:
        tenant, plan = entry.snapshot.tenant, entry.snapshot.plan
        quotas = dict(plan.quotas)
        quotas.update(tenant.quota_overrides)
        message = config_pb2.TenantConfig(
            id=tenant.id,
            slug=tenant.slug,
            name=tenant.name,
            status=STATUS_TO_PROTO[tenant.status],  # type: ignore[arg-type]
            plan=tenant.plan,
            region=tenant.region,
            settings=dict_to_struct(tenant.settings),
            feature_flags=effective_flags(entry.snapshot),
            quotas=quotas,
            rate_limits=dict(plan.rate_limits),
            revision=tenant.revision,
        )
        entry.views[_VIEW] = message
    return message


class ConfigServicer(config_pb2_grpc.ConfigServiceServicer):
    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache

    @grpc_errors
    async def GetTenantConfig(
        self, request: config_pb2.GetTenantConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.TenantConfig:
        tenant_id = require_id("tenant_id", request.tenant_id)
        require_revision("if_revision_newer_than", request.if_revision_newer_than)
        require_revision("min_revision", request.min_revision)
        entry = await self._cache.tenant(tenant_id, request.min_revision)
        if entry is None:
            raise TenantNotFound(f"tenant {tenant_id} not found")
        if request.if_revision_newer_than and entry.revision <= request.if_revision_newer_than:
            return config_pb2.TenantConfig(id=tenant_id, revision=entry.revision, not_modified=True)
        return config_message(entry)

    async def WatchTenantConfig(
        self, request: config_pb2.WatchTenantConfigRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.TenantConfig]:
        """The current config, then each change.

        The cache's change listener only records the newest revision and sets a flag, so
        a slow reader never blocks the event subscriber, and however far behind it falls
        it holds one pending revision: changes coalesce to the newest. A cancelled
        stream unsubscribes in `finally`.
        """
        changed = asyncio.Event()
        newest = 0

        def listener(tenant_id: str, revision: int) -> None:
            nonlocal newest
            if tenant_id == request.tenant_id and revision > newest:
                newest = revision
                changed.set()

        unsubscribe = self._cache.on_tenant_change(listener)
        try:
            tenant_id = require_id("tenant_id", request.tenant_id)
            entry = await self._cache.tenant(tenant_id)
            if entry is None:
                raise TenantNotFound(f"tenant {tenant_id} not found")
            sent = entry.revision
            yield config_message(entry)
            while True:
                await changed.wait()
                changed.clear()
                if newest <= sent:
                    continue
                entry = await self._cache.tenant(tenant_id, newest)
                if entry is None:
                    raise TenantNotFound(f"tenant {tenant_id} not found")
                if entry.revision > sent:
                    sent = entry.revision
                    yield config_message(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await abort(context, exc)
        finally:
            unsubscribe()
