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
from gatehouse.server import core_calls, workers
from gatehouse.server.admission import ADMIN, CONFIG, HOT, LOOKUP, WATCH, Admission
from gatehouse.server.authzen import AuthZen
from gatehouse.server.authzen_server import AuthZenServer
from gatehouse.server.call_log import CallLog
from gatehouse.server.callers import Callers, caller_identities
from gatehouse.server.config import ConfigServicer
from gatehouse.server.decision_log import DecisionLog
from gatehouse.server.decisions import DecisionService
from gatehouse.server.ext_authz import ExtAuthzServicer
from gatehouse.server import ext_authz_routes
from gatehouse.server.health import Readiness
from gatehouse.server.lookup import LookupServicer
from gatehouse.server.interceptors import CallCounter, Chain, Deadline, Interceptor
from gatehouse.server.listeners import HttpListener, bind, plan_http_listener, plan_listeners
from gatehouse.server.tracing import TraceInterceptor
from gatehouse.server.metrics import Metrics, MetricsEndpoint, RelayMetrics, RpcMetrics, StatsExporter, report_sources
from gatehouse.server.wire import EncodedAnswer, register_service
from gatehouse.redis_client import RedisClient, check_mode, redis_client
from gatehouse.settings import Settings
from gatehouse.stats import StatsRegistry
from gatehouse import tracing
from gatehouse.store.migrate import LATEST_VERSION
from gatehouse.store.postgres import PostgresStore, connect
from gatehouse.store.relay import OutboxRelay
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2, lookup_pb2

log = logging.getLogger("gatehouse")

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION_SERVICE = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
SERVICE_NAMES = (
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    config_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    ADMIN_SERVICE.full_name,
    lookup_pb2.DESCRIPTOR.services_by_name["LookupService"].full_name,
)

EXT_AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"  # served when GATEHOUSE_EXT_AUTHZ_CONFIG is set


# How many times (1 s apart) stop() cancels a background loop that has not ended.
STOP_TASKS_ROUNDS = 5


def pending_call_bound(calls: int) -> list[tuple[str, int]]:
    """grpc core's bound on calls it holds before Python takes them (0 = none)."""
    if not calls:
        return []
    return [("grpc.server.max_pending_requests", calls), ("grpc.server.max_pending_requests_hard_limit", 2 * calls)]


class Sidecar:
    """One running Gatehouse process."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics  # None: no Prometheus metrics (the stats registry still counts)
        self._reuse_port = reuse_port
        self.server: grpc.aio.Server | None = None
        self.store: PostgresStore | None = None
        self.l2: RedisL2 | None = None
        self.cache: PolicyCache | None = None
        self.readiness: Readiness | None = None
        self.subscriber: TenantEventSubscriber | None = None
        self.relay: OutboxRelay | None = None
        self.check_answers: Answers[EncodedAnswer] | None = None
        self.core_calls = core_calls.CoreCalls(None)
        self.config_answers: Answers[bytes] | None = None
        self._redis_clients: list[RedisClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.addresses: list[str] = []
        self.stats = StatsRegistry()
        self.decision_log: DecisionLog | None = None
        self.tracing: tracing.Tracing | None = None
        self.authzen: AuthZenServer | None = None  # the AuthZEN HTTP listener, when GATEHOUSE_AUTHZEN_LISTEN is set
        self.ext_authz: ExtAuthzServicer | None = None

    async def start(self) -> None:
        s = self.settings
        # First, before any connection opens: a listener that may not start (plaintext on
        # a public address, broken TLS files) stops the process with the reason.
        listeners = plan_listeners(s)
        http_listener = plan_http_listener(s, s.authzen_listen, "authzen_listen") if s.authzen_listen else None
        identities = caller_identities(s)
        s.check_durations()
        # The ext_authz route mapping, read and checked whole: a bad one stops the process.
        routes = ext_authz_routes.from_settings(s.ext_authz_config)
        s.check_redis_prefix()
        s.check_database_url()
        # OpenTelemetry's SDK, once per process, when OTEL_TRACES_EXPORTER asks for it
        # (gatehouse/tracing.py); None, and nothing of it anywhere, when it does not.
        self.tracing = tracing.start()
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
            max_rosters=s.lookup_rosters,
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

        servers_before = core_calls.server_ids()
        server = grpc.aio.server(
            options=[
                # grpc turns SO_REUSEPORT on by default, so two unrelated servers could
                # silently share a port. Only the workers of one `serve --workers N` may.
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                *pending_call_bound(s.max_pending_calls),
            ],
            # The bound on calls queued or running in this process (server/admission.py).
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
        )
        ours = core_calls.server_ids() - servers_before
        self.core_calls = core_calls.CoreCalls(min(ours) if len(ours) == 1 else None)
        # One set of remembered answers per method: two methods' requests can share bytes.
        self.check_answers = Answers(self.cache, s.answer_cache_entries)
        self.config_answers = Answers(self.cache, s.answer_cache_entries)
        # The one interceptor chain, around every handler of every service (first = outermost).
        # Calls by method and code: with metrics on, the link that also times them.
        calls: CallCounter | RpcMetrics = RpcMetrics(self.metrics) if self.metrics is not None else CallCounter()
        self.admission = Admission(
            {
                HOT: s.max_in_flight_hot,
                CONFIG: s.max_in_flight_config,
                WATCH: s.max_watch_streams,
                ADMIN: s.max_in_flight_admin,
                LOOKUP: s.max_in_flight_lookup,
            }
        )
        if s.decision_log != "off":
            self.decision_log = DecisionLog(
                s.decision_log, sample_rate=s.decision_log_sample_rate, path=s.decision_log_path,
                max_queue=s.decision_log_queue,
            )
            self.decision_log.start()
        # Traced outermost when tracing is on (the span covers everything, refusals too;
        # off, the link is not there at all); then the call's log scope and access line
        # (server/call_log.py), inside the span so its lines carry the trace id; then
        # counted and measured, so a refused call is counted too (as RESOURCE_EXHAUSTED).
        traced: list[Interceptor] = [TraceInterceptor()] if self.tracing is not None else []
        call_log = CallLog(hot=bool(s.access_log_hot), scope_hot=self.decision_log is not None)
        # The deadline last, so a refused call does not pay for it.
        chain = self.chain = Chain(
            [*traced, call_log, calls, self.admission, Deadline(s.default_deadline_seconds or None)]
        )
        decisions = DecisionService(self.cache, self.decision_log)
        # Who may ask the hot path (server/callers.py): anyone, unless GATEHOUSE_CALLER_CREDENTIALS=required.
        self.callers = Callers(
            self.authenticator, decisions, required=s.caller_credentials == "required", identities=identities
        )
        self.access = AccessServicer(decisions, self.check_answers, self.callers)
        self._report_stats(calls)
        report_sources(self.stats, self)
        if self.metrics is not None:
            self._export_metrics(self.metrics)
        self.access.add_to(server, chain)
        services: tuple[str, ...] = SERVICE_NAMES
        if routes is not None:
            self.ext_authz = ExtAuthzServicer(decisions, routes, self.callers)
            self.ext_authz.add_to(server, chain)
            self.stats.register("ext_authz", self.ext_authz.values)
            services = (*services, EXT_AUTHZ_SERVICE)
        ConfigServicer(self.cache, self.config_answers, self.callers).add_to(server, chain)
        LookupServicer(decisions, self.cache, self.store, self.callers).add_to(server, chain)
        # Every other service through the same decoding step (server/wire.py): bytes that
        # are no request get INVALID_ARGUMENT, never grpc's UNKNOWN and a traceback.
        register_service(
            server, ADMIN_SERVICE, AdminServicer(self.store, self.cache, self.authenticator, decisions), chain=chain
        )
        register_service(server, HEALTH_SERVICE, self.readiness.servicer, chain=chain)
        register_service(
            server,
            REFLECTION_SERVICE,
            reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME, HEALTH_SERVICE.full_name)),
            chain=chain,
        )
        self.addresses = [bind(server, listener) for listener in listeners]
        await self.readiness.not_yet()
        await server.start()
        self.server = server
        if http_listener is not None:
            await self._start_authzen(decisions, http_listener)
        await self.readiness.probe()
        self._tasks.append(asyncio.create_task(self.readiness.run(), name="readiness"))
        self._tasks.append(asyncio.create_task(self.subscriber.run(), name="event-subscriber"))
        if self.relay is not None:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        if not s.operator_key:
            log.warning("GATEHOUSE_OPERATOR_KEY is not set: every AdminService call will be UNAUTHENTICATED")
        for address, listener in zip(self.addresses, listeners):
            log.log(listener.log_level, "listening on %s: %s; %s", address, listener.security, listener.reason)
        if self.authzen is not None and http_listener is not None:
            log.log(
                http_listener.log_level, "AuthZEN listening on %s: %s; %s", self.authzen.url, http_listener.security,
                http_listener.reason,
            )

    async def _start_authzen(self, decisions: DecisionService, listener: HttpListener) -> None:
        """The AuthZEN HTTP listener (server/authzen_server.py), in this event loop, its
        evaluations inside the hot class's admission bound."""
        s = self.settings
        self.authzen = AuthZenServer(
            AuthZen(decisions),
            listener,
            hot_gate=self.admission.gates.get(HOT),
            deadline_seconds=s.default_deadline_seconds or None,
            callers=self.callers,
            base_url=s.authzen_base_url,
            access_log_on=bool(s.access_log_hot),
            reuse_port=self._reuse_port,
        )
        await self.authzen.start(s.grace_seconds)
        self.stats.register("authzen", self.authzen.values)

    def _report_stats(self, calls: CallCounter | RpcMetrics) -> None:
        """Every counter of this process into one registry (`self.stats.snapshot()`)."""
        assert self.cache is not None and self.subscriber is not None and self.l2 is not None
        assert self.check_answers is not None and self.config_answers is not None
        l2, check_answers, config_answers = self.l2, self.check_answers, self.config_answers
        self.stats.register("grpc", calls.values)
        self.stats.register("grpc_core", self.core_calls.values)
        self.stats.register("admission", self.admission.values)
        self.stats.register("auth", self.authenticator.stats)
        self.stats.register("callers", self.callers.stats)
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
            report_relay(self.stats, self.relay)
        if self.decision_log is not None:
            self.stats.register("decision_log", self.decision_log.stats)

    def _export_metrics(self, metrics: Metrics) -> None:
        """Feed the histograms the cache and store layers observe, and copy the stats
        registry into the metrics every second (server/metrics.py)."""
        assert self.subscriber is not None
        self.subscriber.on_event_lag = metrics.event_lag.observe
        if self.relay is not None:
            self.relay.on_published = metrics.publish_latency.observe
        exporter = StatsExporter(self.stats, metrics)
        self._tasks.append(asyncio.create_task(exporter.run(), name="metrics-exporter"))

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish (up to `grace`), release everything."""
        if self.readiness is not None:
            await self.readiness.shutdown()
        grace_seconds = self.settings.grace_seconds if grace is None else grace
        stopping = []
        if self.server is not None:
            stopping.append(self.server.stop(grace_seconds))
        if self.authzen is not None:
            stopping.append(self.authzen.stop())
        await asyncio.gather(*stopping)
        # A library can swallow a cancellation (gatehouse/cancellation.py): the loops check
        # for that, and cancelling again, a few times, keeps a missed case from hanging
        # the exit (asyncio.run would wait for the task forever).
        pending = set(self._tasks)
        for _ in range(STOP_TASKS_ROUNDS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a loop that failed has logged why already
        for task in pending:
            log.error("background task %s did not stop after %d cancellations", task.get_name(), STOP_TASKS_ROUNDS)
        if self.cache is not None:
            await self.cache.drain()
        if self.l2 is not None:
            await self.l2.close()
        for client in self._redis_clients:
            await client.aclose()
        if self.store is not None:
            await self.store.close()
        if self.decision_log is not None:
            await asyncio.to_thread(self.decision_log.stop)
        if self.tracing is not None:
            # Spans wait in the batch processor: export them before the process goes.
            await asyncio.to_thread(self.tracing.flush)


def relay_for(s: Settings) -> OutboxRelay:
    redis = redis_client(s.redis_url, cluster=bool(s.redis_cluster), socket_timeout=5.0, socket_connect_timeout=1.0)
    return OutboxRelay(
        s.database_url,
        redis,
        prefix=s.redis_prefix,
        max_stream_length=s.event_stream_max_length,
        retention_seconds=s.outbox_retention_seconds,
        sweep_seconds=s.expiry_sweep_seconds,
        l2_ttl_seconds=s.l2_ttl_seconds,
        heartbeat_seconds=s.relay_heartbeat_seconds,
    )


def report_relay(stats: StatsRegistry, relay: OutboxRelay) -> None:
    """The relay's counters (`relay.*`) and backlog (`relay_backlog.*`) in `stats`: the
    same sources, so the same series (server/metrics.py `SERIES`), whether the relay runs
    in a `serve` worker or as `gatehouse relay`."""
    stats.register("relay", relay.stats)
    stats.register("relay_backlog", relay.backlog)


async def run_relay(settings: Settings, *, metrics: tuple[str, int] | None = None) -> int:
    """`gatehouse relay`: only the outbox relay, until SIGTERM or SIGINT. With `metrics`
    (host, port), it serves its own /metrics there (`RelayMetrics`: the relay's series
    and the process collectors), in a thread of this process; SystemExit when the port
    cannot be listened on."""
    settings.check_durations()
    settings.check_redis_prefix()
    settings.check_database_url()
    # First, before any connection opens: a metrics port that is taken stops the relay.
    endpoint: MetricsEndpoint | None = None
    recorded: RelayMetrics | None = None
    if metrics is not None:
        recorded = RelayMetrics()
        endpoint = MetricsEndpoint(*metrics, registry=recorded.registry)
    traces = tracing.start()
    await check_mode(settings.redis_url, cluster=bool(settings.redis_cluster), timeout=1.0)
    relay = relay_for(settings)
    tasks = [asyncio.create_task(relay.run(), name="relay")]
    if recorded is not None:
        stats = StatsRegistry()
        report_relay(stats, relay)
        relay.on_published = recorded.publish_latency.observe
        tasks.append(asyncio.create_task(StatsExporter(stats, recorded).run(), name="metrics-exporter"))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, tasks[0].cancel)
    shown = f" (metrics: {endpoint.url})" if endpoint is not None else ""
    print("gatehouse: relaying outbox to", settings.redis_prefix + ":events" + shown, flush=True)
    try:
        await tasks[0]
    except asyncio.CancelledError:
        pass
    for task in tasks[1:]:
        task.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)
    if endpoint is not None:
        endpoint.close()
    await relay.redis.aclose()
    if traces is not None:
        traces.flush()
    return 0


async def serve(settings: Settings, *, reuse_port: bool = False, metrics: Metrics | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and return 0."""
    sidecar = Sidecar(settings, reuse_port=reuse_port, metrics=metrics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await sidecar.start()
    # A `serve --workers` worker tells its parent its loop turns, through the drain too
    # (a drain longer than the parent's timeout must not look like a hang).
    alive = workers.heartbeat_task()
    authzen = f" (authzen: {sidecar.authzen.url})" if sidecar.authzen is not None else ""
    print(f"gatehouse: serving on {', '.join(sidecar.addresses)}{authzen}", flush=True)
    await stopping.wait()
    # One signal stops it. A second (a process group's signal, then the parent's forward
    # of its own; a second Ctrl-C) must not cut the drain short or, once the loop has
    # closed and restored the default handlers, kill the process with a signal's status.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("signal received: draining (grace %.1fs)", settings.grace_seconds)
    await sidecar.stop()
    log.info("stopped")
    return 0
