"""Readiness: `grpc.health.v1.Health` per service, from what the dependencies say.

Which dependency state makes which service NOT_SERVING (README "Health" has the table
and the reasons):

* Postgres not answering within the probe timeout, failing, behind the schema version
  this build expects, or ahead of it by a step that is not additive (store/migrate.py):
  every service, and the overall status "".
* Redis not answering or failing: every service until the first time Postgres and Redis
  were both fine; after that, none (the read services answer from L1 and Postgres, admin
  writes wait in the outbox for the relay).

`LIVENESS` ("liveness") is no service: it answers SERVING from the first probe round
(right after start) until shutdown,
whatever the dependencies say, so a liveness probe (Kubernetes' `grpc:` probe with
`service: liveness`) restarts a process that no longer answers (a hung event loop, a dead
worker under a live parent) and never one whose Postgres is down, which a restart would
not mend (deploy/kubernetes/).

A probe round checks every dependency at once, each in a task of its own, and reaches its
verdict within `timeout` seconds whatever the dependencies do. That cannot be done with
`asyncio.wait_for` around the driver call: on Python 3.11 it waits for the cancelled call
to finish, and cancelling an asyncpg query on a frozen server waits for the server to
answer the cancel request, up to the pool's command timeout (30 s): a frozen Postgres
kept Health at SERVING for 32 s. So a check that has not answered in time is not
cancelled: the dependency counts as down, the check is left to finish under the driver's
own timeouts, and no second check of that dependency starts until it has (one
outstanding check each, so stuck checks never pile up); when such a check finally fails
on a driver timeout, the verdict stays "did not answer". A verdict is logged when it
changes, not every round, and names the dependency and the cause.

The probe loop awaits only `asyncio.wait` (which never swallows a cancellation), the
servicer's in-memory updates and its own sleep, so stopping the server stops it at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from grpc_health.v1 import health, health_pb2

from gatehouse.cache.l2 import RedisL2
from gatehouse.store.api import StoreReader

log = logging.getLogger(__name__)
SERVICES = (
    "gatehouse.v1.AccessService", "gatehouse.v1.ConfigService", "gatehouse.v1.AdminService",
    "gatehouse.v1.LookupService",
)
# The health name a liveness probe asks for: SERVING while this process answers at all.
LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# What a check returns: None when the dependency is fit to serve, else why it is not.
Check = Callable[[], Coroutine[Any, Any, str | None]]


def describe(error: BaseException) -> str:
    """`Type: message` of an error, and of the error it was raised from; never empty
    (`str(TimeoutError())` is)."""

    def one(e: BaseException) -> str:
        text = str(e)
        return f"{type(e).__name__}: {text}" if text else type(e).__name__

    cause = error.__cause__
    return f"{one(error)} (from {one(cause)})" if cause is not None else one(error)


class Dependency:
    """One dependency a probe round checks, with at most one check of it outstanding.

    `verdict` is None while the dependency is fit to serve, else why it is not, in words
    fit for the log ("did not answer within 1.0 s"); it starts as "not checked yet".
    """

    def __init__(self, name: str, check: Check) -> None:
        self.name = name
        self._check = check
        self._task: asyncio.Task[str | None] | None = None
        self._late = False  # the outstanding check has already outlived a round's timeout
        self.verdict: str | None = "not checked yet"
        self._unfit_since: float | None = None

    def start(self) -> asyncio.Task[str | None]:
        """The check to wait for: a new one, or the one still outstanding from an earlier round."""
        if self._task is None:
            self._task = asyncio.create_task(self._check(), name=f"health check: {self.name}")
            self._late = False
        return self._task

    def conclude(self, timeout: float) -> str | None:
        """Take this round's verdict (after waiting up to `timeout` seconds for the check) and
        log it when it differs from the last one."""
        task = self._task
        assert task is not None, "conclude() without start()"
        no_answer = f"did not answer within {float(timeout)} s"
        if not task.done():
            # Left running (see the module docstring); it still counts as no answer.
            self._late = True
            verdict: str | None = no_answer
        else:
            self._task = None
            if task.cancelled():
                verdict = "check cancelled"
            elif (error := task.exception()) is None:
                verdict = task.result()
            elif self._late:
                # A check that hung and then gave up (the driver's own timeout) says nothing
                # new: still no answer. Logging its error would make the log flap between
                # the two every few seconds while a dependency stays frozen.
                log.debug("%s: the check that did not answer failed: %s", self.name, describe(error))
                verdict = no_answer
            else:
                verdict = describe(error)
        self._record(verdict)
        return verdict

    def _record(self, verdict: str | None) -> None:
        if verdict is None:
            if self._unfit_since is not None:
                log.info("%s ready again (not ready for %.1f s)", self.name, time.monotonic() - self._unfit_since)
            self._unfit_since = None
        elif verdict != self.verdict:
            log.warning("%s not ready: %s", self.name, verdict)
            if self._unfit_since is None:
                self._unfit_since = time.monotonic()
        self.verdict = verdict

    def abandon(self) -> None:
        """Cancel an outstanding check (when the server stops); nothing waits for it."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: asyncio would otherwise log it as never retrieved
        else:
            task.cancel()


class Readiness:
    """Probes Postgres (and Redis, when there is an L2) every `interval` seconds and
    publishes each service's status on `servicer`.

    `timeout` (seconds) bounds every round: a dependency that has not answered by then
    counts as down for that round. Both must be more than 0 (ValueError).
    """

    def __init__(
        self,
        store: StoreReader,
        l2: RedisL2 | None,
        expected_schema: int,
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
    ) -> None:
        if not interval > 0 or not timeout > 0:
            raise ValueError(f"health interval and timeout must be more than 0 s, got {interval} and {timeout}")
        self.servicer = health.aio.HealthServicer()
        self._store = store
        self._l2 = l2
        self._expected = expected_schema
        self._interval = interval
        self._timeout = timeout
        self.postgres = Dependency("postgres", self._check_postgres)
        self.redis = Dependency("redis", self._check_redis) if l2 is not None else None
        self._was_ready = False
        self.ready = asyncio.Event()
        self.serving = False  # what the last probe published for every service (False once stopping)

    def _dependencies(self) -> list[Dependency]:
        return [self.postgres] if self.redis is None else [self.postgres, self.redis]

    async def _check_postgres(self) -> str | None:
        # A transaction: the round trip is the ping. Ahead of this build by additive steps
        # only is fit (store/migrate.py): a release's migration keeps the old build serving.
        return await self._store.schema_fit(self._expected)

    async def _check_redis(self) -> str | None:
        assert self._l2 is not None
        await self._l2.ping()
        return None

    async def not_yet(self) -> None:
        """NOT_SERVING for everything until the first probe has run: grpc's servicer starts
        with "" SERVING, which a readiness probe arriving between the server's start and
        that probe would believe."""
        for name in ("", *SERVICES, LIVENESS):
            await self.servicer.set(name, NOT_SERVING)

    async def probe(self) -> bool:
        """One round: check every dependency, publish every service's status; True when
        all are SERVING. Returns within the timeout (plus scheduling) whatever the
        dependencies do; never raises for a dependency's failure."""
        checks = [dependency.start() for dependency in self._dependencies()]
        # asyncio.wait, unlike wait_for, neither cancels nor waits for a check past the timeout.
        await asyncio.wait(checks, timeout=self._timeout)
        store_ok = self.postgres.conclude(self._timeout) is None
        redis_ok = self.redis is None or self.redis.conclude(self._timeout) is None
        if store_ok and redis_ok:
            self._was_ready = True
        # Redis only holds the first readiness back: after it, L1 and Postgres answer alone.
        serving = store_ok and (redis_ok or self._was_ready)
        status = SERVING if serving else NOT_SERVING
        self.serving = serving
        for name in ("", *SERVICES):
            await self.servicer.set(name, status)
        # Whatever the dependencies say: this process answers. (After shutdown() the
        # servicer ignores every set(): NOT_SERVING stays.)
        await self.servicer.set(LIVENESS, SERVING)
        if serving:
            self.ready.set()
        else:
            self.ready.clear()
        return serving

    async def run(self) -> None:
        """Probe every `interval` seconds until cancelled; then abandon outstanding checks."""
        try:
            while True:
                await self.probe()
                await asyncio.sleep(self._interval)
        finally:
            for dependency in self._dependencies():
                dependency.abandon()

    async def shutdown(self) -> None:
        """Answer NOT_SERVING for everything from now on (the server is stopping)."""
        self.serving = False
        await self.servicer.enter_graceful_shutdown()
