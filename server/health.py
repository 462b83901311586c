"""Readiness: `grpc.health.v1.Health` per service, from what the dependencies say.

Every service is NOT_SERVING until Postgres answers, the schema is at the version this
build expects and Redis answers. After that, a Redis outage does not take the read
services down (they answer from L1 and Postgres); Postgres or schema trouble does.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from gatehouse.cache.l2 import RedisL2
from gatehouse.cancellation import stop_if_cancelled
from gatehouse.store.api import Store

log = logging.getLogger(__name__)
SERVICES = ("gatehouse.v1.AccessService", "gatehouse.v1.ConfigService", "gatehouse.v1.AdminService")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    def __init__(self, store: Store, l2: RedisL2 | None, expected_schema: int, *, interval: float = 1.0) -> None:
        self.servicer = health.aio.HealthServicer()
        self._store = store
        self._l2 = l2
        self._expected = expected_schema
        self._interval = interval
        self._was_ready = False
        self.ready = asyncio.Event()

    async def probe(self) -> bool:
        """Check the dependencies once and publish the result; True when fully ready."""
        try:
            await asyncio.wait_for(self._store.ping(), timeout=2.0)
            version = await asyncio.wait_for(self._store.schema_version(), timeout=2.0)
            store_ok = version == self._expected
            if not store_ok:
                log.warning("schema is at version %s, this build expects %s", version, self._expected)
        except Exception as exc:
            log.warning("postgres not ready: %s", exc)
            store_ok = False
        redis_ok = self._l2 is None or await self._l2.ping()
        if store_ok and redis_ok:
            self._was_ready = True
        serving = store_ok and (redis_ok or self._was_ready)
        status = SERVING if serving else NOT_SERVING
        for name in ("", *SERVICES):
            await self.servicer.set(name, status)
        if serving:
            self.ready.set()
        else:
            self.ready.clear()
        return serving

    async def run(self) -> None:
        while True:
            await self.probe()
            # Python 3.11's asyncio.wait_for drops a cancellation that lands just as its
            # inner call finishes, so a stop() during a probe could leave this loop
            # running forever (and `serve` never exiting on SIGTERM). The request is
            # still counted on the task: honour it.
            stop_if_cancelled()
            await asyncio.sleep(self._interval)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
