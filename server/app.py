"""Assembling and running one sidecar process: store, cache, servicers, gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gatehouse.cache.answers import Answers
from gatehouse.cache.l2 import RedisL2
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cache.subscriber import TenantEventSubscriber
from gatehouse.server.access import AccessServicer
from gatehouse.server.admin import AdminServicer
from gatehouse.server.admin_auth import AdminAuthenticator, FailedAuthLimit, return_hash_memory_to_the_os
from gatehouse.server.admission import ADMIN, CONFIG, HOT, WATCH, Admission
from gatehouse.server.config import ConfigServicer
from gatehouse.server.decisions import DecisionService
from gatehouse.server.health import Readiness
from gatehouse.server.interceptors import CallCounter, Chain, Deadline
from gatehouse.server.listeners import bind, plan_listeners
from gatehouse.server.wire import EncodedAnswer, register_service
from gatehouse.redis_client import RedisClient, check_mode, redis_client
from gatehouse.settings import Settings
from gatehouse.stats import StatsRegistry
from gatehouse.store.migrate import LATEST_VERSION
from gatehouse.store.postgres import PostgresStore, connect
from gatehouse.store.relay import OutboxRelay
from gatehouse.v1 import access_pb2, admin_pb2, config_pb2

log = logging.getLogger("gatehouse")

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
SERVICE_NAMES = (
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    ADMIN_SERVICE.full_name,
)


class Sidecar:
    """One running Gatehouse process."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self._reuse_port = reuse_port
        self.server: grpc.aio.Server | None = None
        self.store: PostgresStore | None = None
        self.l2: RedisL2 | None = None
        self.cache: PolicyCache | None = None
        self.readiness: Readiness | None = None
        self.subscriber: TenantEventSubscriber | None = None
        self.relay: OutboxRelay | None = None
        self.check_answers: Answers[EncodedAnswer] | None = None
        self.config_answers: Answers[bytes] | None = None
        self._redis_clients: list[RedisClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.addresses: list[str] = []
        self.stats = StatsRegistry()

    async def start(self) -> None:
        s = self.settings
        # First, before any connection opens: a listener that may not start (plaintext on
        # a public address, broken TLS files) stops the process with the reason.
        listeners = plan_listeners(s)
        s.check_durations()
        s.check_redis_prefix()
        # A Redis that answers must be in the mode the settings say (cluster or not).
        await check_mode(s.redis_url, cluster=bool(s.redis_cluster), timeout=s.health_timeout_seconds)
        # min_size=0: the pool opens connections on demand, so the server comes up (and
        # reports NOT_SERVING) even while Postgres is still starting.
        self.store = await connect(s.database_url, min_size=0, max_size=s.db_pool_max)
        self.l2 = RedisL2.from_url(
            s.redis_url,
            prefix=s.redis_prefix,
            ttl_seconds=s.l2_ttl_seconds,
            timeout=s.redis_timeout_seconds,
            cluster=bool(s.redis_cluster),
        )
        self.cache = PolicyCache(
            self.store,
            self.l2,
            max_entries=s.l1_max_entries,
            ttl_seconds=s.l1_ttl_seconds,
            max_staleness_seconds=s.max_staleness_seconds,
        )
        # Every write this process commits reaches its cache (and the L2 pointer) before
        # the admin call answers: read-your-writes here, without waiting for the relay.
        self.store.subscribe(self.cache.store_changed)
        self.readiness = Readiness(
            self.store, self.l2, LATEST_VERSION, interval=s.health_interval_seconds, timeout=s.health_timeout_seconds
        )
        # The subscriber blocks in XREAD for up to a second: it gets its own connection,
        # with a socket timeout longer than that block.
        events_redis = redis_client(
            s.redis_url, cluster=bool(s.redis_cluster), socket_timeout=3.0, socket_connect_timeout=1.0
        )
        self._redis_clients.append(events_redis)
        return_hash_memory_to_the_os()
        self.authenticator = AdminAuthenticator(
            self.store,
            s.operator_key,
            max_pending=s.auth_max_pending,
            failures=FailedAuthLimit(burst=s.auth_failures_burst, per_second=s.auth_failures_per_second),
        )
        self.subscriber = TenantEventSubscriber(
            events_redis, self.cache, prefix=s.redis_prefix, blind_refresh_seconds=s.blind_refresh_seconds,
            keys=self.authenticator,
        )
        if s.relay:
            self.relay = relay_for(s)
            self._redis_clients.append(self.relay.redis)

        server = grpc.aio.server(
            options=[
                # grpc turns SO_REUSEPORT on by default, so two unrelated servers could
                # silently share a port. Only the workers of one `serve --workers N` may.
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ],
            # The bound on calls queued or running in this process (server/admission.py).
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        # One set of remembered answers per method: two methods' requests can share bytes.
        self.check_answers = Answers(self.cache, s.answer_cache_entries)
        self.config_answers = Answers(self.cache, s.answer_cache_entries)
        # The one interceptor chain, around every handler of every service (first = outermost).
        calls = CallCounter()
        self.admission = Admission(
            {
                HOT: s.max_in_flight_hot,
                CONFIG: s.max_in_flight_config,
                WATCH: s.max_watch_streams,
                ADMIN: s.max_in_flight_admin,
            }
        )
        # Counted first, so a refused call is counted too (as RESOURCE_EXHAUSTED); the
        # deadline last, so a refused call does not pay for it.
        chain = Chain([calls, self.admission, Deadline(s.default_deadline_seconds or None)])
        self._report_stats(calls)
        decisions = DecisionService(self.cache)
        AccessServicer(decisions, self.check_answers).add_to(server, chain)
        ConfigServicer(self.cache, self.config_answers).add_to(server, chain)
        # Every other service through the same decoding step (server/wire.py): bytes that
        # are no request get INVALID_ARGUMENT, never grpc's UNKNOWN and a traceback.
        register_service(
            server, ADMIN_SERVICE, AdminServicer(self.store, self.cache, self.authenticator, decisions), chain=chain
        )
        register_service(server, HEALTH_SERVICE, self.readiness.servicer, chain=chain)
        register_service(
            server,
            REFLECTION_SERVICE,
            reflection.aio.ReflectionServicer((*SERVICE_NAMES, reflection.SERVICE_NAME, HEALTH_SERVICE.full_name)),
            chain=chain,
        )
        self.addresses = [bind(server, listener) for listener in listeners]
        await server.start()
        self.server = server
        await self.readiness.probe()
        self._tasks.append(asyncio.create_task(self.readiness.run(), name="readiness"))
        self._tasks.append(asyncio.create_task(self.subscriber.run(), name="event-subscriber"))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        if not s.operator_key:
            log.warning("GATEHOUSE_OPERATOR_KEY is not set: every AdminService call will be UNAUTHENTICATED")
        for address, listener in zip(self.addresses, listeners):
            log.log(listener.log_level, "listening on %s: %s; %s", address, listener.security, listener.reason)

    def _report_stats(self, calls: CallCounter) -> None:
        """Every counter of this process into one registry (`self.stats.snapshot()`)."""
        assert self.cache is not None and self.subscriber is not None and self.l2 is not None
        assert self.check_answers is not None and self.config_answers is not None
        l2, check_answers, config_answers = self.l2, self.check_answers, self.config_answers
        self.stats.register("grpc", calls.values)
        self.stats.register("admission", self.admission.values)
        self.stats.register("auth", self.authenticator.stats)
        self.stats.register("cache", self.cache.stats)
        cache = self.cache
        self.stats.register("staleness", lambda: {"confirmed_seconds_ago": cache.confirmation_age()})
        self.stats.register(
            "l2", lambda: {"errors": l2.errors, "deadline_cuts": l2.deadline_cuts, "deadline_skips": l2.deadline_skips}
        )
        assert self.store is not None
        store = self.store
        self.stats.register(
            "store",
            lambda: {
                "transactions_begun": store.transactions_begun,
                "transactions_cancelled": store.transactions_cancelled,
            },
        )
        self.stats.register("answers", lambda: {"check_hits": check_answers.hits, "config_hits": config_answers.hits})
        self.stats.register("events", self.subscriber.stats)
        if self.relay is not None:
            relay = self.relay
            self.stats.register("relay", lambda: {"published": relay.published, "heartbeats": relay.heartbeats})

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish (up to `grace`), release everything."""
        if self.readiness is not None:
            await self.readiness.shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cache is not None:
            await self.cache.drain()
        if self.l2 is not None:
            await self.l2.close()
        for client in self._redis_clients:
            await client.aclose()
        if self.store is not None:
            await self.store.close()


def relay_for(s: Settings) -> OutboxRelay:
    redis = redis_client(s.redis_url, cluster=bool(s.redis_cluster), socket_timeout=5.0, socket_connect_timeout=1.0)
    return OutboxRelay(
        s.database_url,
        redis,
        prefix=s.redis_prefix,
        max_stream_length=s.event_stream_max_length,
        retention_seconds=s.outbox_retention_seconds,
        l2_ttl_seconds=s.l2_ttl_seconds,
        heartbeat_seconds=s.relay_heartbeat_seconds,
    )


async def run_relay(settings: Settings) -> int:
    """`gatehouse relay`: only the outbox relay, until SIGTERM or SIGINT."""
    settings.check_durations()
    settings.check_redis_prefix()
    await check_mode(settings.redis_url, cluster=bool(settings.redis_cluster), timeout=1.0)
    relay = relay_for(settings)
    task = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    print("gatehouse: relaying outbox to", settings.redis_prefix + ":events", flush=True)
    try:
        await task
    except asyncio.CancelledError:
        pass
    await relay.redis.aclose()
    return 0


async def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and return 0."""
    sidecar = Sidecar(settings, reuse_port=reuse_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await sidecar.start()
    print(f"gatehouse: serving on {', '.join(sidecar.addresses)}", flush=True)
    await stopping.wait()
    log.info("signal received: draining (grace %.1fs)", settings.grace_seconds)
    await sidecar.stop()
    log.info("stopped")
    return 0
