"""ConfigService: a tenant's effective configuration, from the same cache as CheckAccess."""

from __future__ import annotations

import asyncio
import math
from typing import AsyncIterator

import grpc

from gatehouse.cache.answers import Answers
from gatehouse.cache.policy_cache import CachedTenant, PolicyCache
from gatehouse.engine.decision import effective_flags
from gatehouse.engine.validate import Violations, require_revision, require_tenant_id
from gatehouse.errors import TenantNotFound
from gatehouse.server.callers import CONFIG, Callers, Credentials
from gatehouse.server.convert import STATUS_TO_PROTO, dict_to_struct
from gatehouse.server.errors import abort, grpc_errors
from gatehouse.server.interceptors import Chain
from gatehouse.server.wire import parse, register_service
from gatehouse_client.v1 import config_pb2

_VIEW = "config"
_ENCODED = "config-bytes"
SERVICE = config_pb2.DESCRIPTOR.services_by_name["ConfigService"]


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
            status=STATUS_TO_PROTO[tenant.status],
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


def config_bytes(entry: CachedTenant) -> bytes:
    """The serialized TenantConfig of a cached tenant, made once per entry."""
    encoded = entry.views.get(_ENCODED)
    if encoded is None:
        encoded = entry.views[_ENCODED] = config_message(entry).SerializeToString()
    return encoded


class ConfigServicer:
    """GetTenantConfig on raw bytes, remembered like CheckAccess (`gatehouse.cache.answers`);
    WatchTenantConfig as generated."""

    def __init__(self, cache: PolicyCache, answers: Answers[bytes], callers: Callers | None = None) -> None:
        self._cache = cache
        self._answers = answers
        # Who may ask (server/callers.py); None when anyone may.
        self._callers = callers if callers is not None and callers.required else None

    def add_to(self, server: grpc.aio.Server, chain: Chain) -> None:
        register_service(server, SERVICE, self, chain=chain, raw={
            "GetTenantConfig": grpc.unary_unary_rpc_method_handler(self.GetTenantConfig),
        })

    @grpc_errors
    async def GetTenantConfig(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if self._callers is not None:
            await self._callers.require_grpc(
                context, CONFIG,
                lambda: (parse(config_pb2.GetTenantConfigRequest, body).tenant_id,),
            )
        known = self._answers.get(body, 0.0)
        if known is not None:
            return known
        request = parse(config_pb2.GetTenantConfigRequest, body)
        v = Violations()
        tenant_id = v.check(require_tenant_id, "tenant_id", request.tenant_id)
        v.check(require_revision, "if_revision_newer_than", request.if_revision_newer_than)
        v.check(require_revision, "min_revision", request.min_revision)
        v.raise_if_any()
        entry = await self._cache.tenant(tenant_id, request.min_revision)
        if entry is None:
            raise TenantNotFound(f"tenant {tenant_id} not found")
        if request.if_revision_newer_than and entry.revision <= request.if_revision_newer_than:
            encoded = config_pb2.TenantConfig(id=tenant_id, revision=entry.revision, not_modified=True).SerializeToString()
        else:
            encoded = config_bytes(entry)
        self._answers.remember(body, tenant_id, request.min_revision, entry, None, None, math.inf, encoded)
        return encoded

    async def WatchTenantConfig(
        self, request: config_pb2.WatchTenantConfigRequest, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[config_pb2.TenantConfig]:
        """The current config, then each change.

        The cache's change listener only records the newest revision and sets a flag, so
        a slow reader never blocks the event subscriber, and however far behind it falls
        it holds one pending revision: changes coalesce to the newest. A cancelled
        stream unsubscribes in `finally`.

        Bounded staleness holds for a watch too: events only say that something changed,
        so with no event for half the max staleness the stream asks the cache again, as a
        GetTenantConfig would (an L1 hit while the cache is confirmed current; else a
        read from Postgres). A change whose event never came (relay stalled, stream cut)
        is sent within 1.5x the max staleness, and when Postgres cannot confirm the
        config either, the stream ends with UNAVAILABLE `GATEHOUSE_STALE` instead of
        leaving the caller on a config nothing vouches for.
        """
        recheck = self._cache.max_staleness / 2 if math.isfinite(self._cache.max_staleness) else None
        changed = asyncio.Event()
        newest = 0

        def listener(tenant_id: str, revision: int) -> None:
            nonlocal newest
            if tenant_id == request.tenant_id and revision > newest:
                newest = revision
                changed.set()

        unsubscribe = self._cache.on_tenant_change(listener)
        try:
            if self._callers is not None:
                await self._callers.require(Credentials.from_grpc(context), CONFIG, request.tenant_id)
            tenant_id = require_tenant_id("tenant_id", request.tenant_id)
            entry = await self._cache.tenant(tenant_id)
            if entry is None:
                raise TenantNotFound(f"tenant {tenant_id} not found")
            sent = entry.revision
            yield config_message(entry)
            while True:
                try:
                    async with asyncio.timeout(recheck):
                        await changed.wait()
                except TimeoutError:
                    pass  # no event: ask the cache again (see above)
                else:
                    changed.clear()
                    if newest <= sent:
                        continue
                entry = await self._cache.tenant(tenant_id, max(newest, sent))
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
