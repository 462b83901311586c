"""Prometheus metrics: `/metrics` on a listener of its own, every worker in one scrape.

What is measured where:

* RPCs (`grpc_server_handled_total`, `grpc_server_handling_seconds`, the
  go-grpc-prometheus convention): `RpcMetrics`, a link of the interceptor chain, counts
  them in plain numbers per method and adds them to the metrics once a second.
* Everything else is a plain counter where it is kept (`gatehouse/stats.py`: the cache's,
  subscriber's, relay's, admission's, ...), which `StatsExporter` copies into Prometheus
  metrics once a second (`PUBLISH_SECONDS`) and when the process stops. The layers below
  `server/` (store, cache) never import prometheus_client; the two histograms they feed
  (event lag, relay publish latency) get a plain `observe` callable handed to them.

Workers (`serve --workers N`): prometheus_client's multiprocess mode. The top `serve`
process makes a fresh directory (`PROMETHEUS_MULTIPROC_DIR`, removed when it exits)
before any worker starts; every process writes its values to its own mmap'd files
there; the one process that serves `/metrics`, the workers' parent (with metrics on,
`serve` runs even one worker under a parent), reads them all with
`MultiProcessCollector` and sums them. So one scrape sees
every worker. Counters of a worker that exited stay in the sum (its files remain), and
a worker started later counts from 0 in files of its own: a restart never makes a total
go down. Gauges say per gauge how workers combine (`Series.mode`: `livesum`, `livemax`,
`livemin`); the parent calls `mark_process_dead` for each worker that exits, which drops
its live gauges.

`gatehouse relay` (the relay alone, `app.run_relay`): one process, no workers, so no
multiprocess directory. With GATEHOUSE_METRICS_LISTEN given it records `RelayMetrics`
(the same `SERIES` mirroring, fed by the same stats sources as a `serve` worker's relay,
`app.report_relay`, plus the standard process and Python collectors) in memory and
serves them with the same `MetricsEndpoint`, from its registry, in a thread.

Cost, measured (`python -m bench.metrics_overhead`: a bare coroutine awaited 200,000
times through the chain's links, median of 3 runs, fresh interpreter per mode): writing
the RPC metrics per call into prometheus-client's multiprocess values (a counter `inc`
and a histogram `observe` on pre-bound children: three locked mmap writes) added 2.6 µs
per call, and the whole server ran 3.5 % and 7.3 % (medians of two runs of 3 repeats)
more CPU per hit than with metrics off (`bench/results/metrics-cost-3x`,
`metrics-cost-3x-b`): too close to the 5 % goal. So the RPC link keeps plain numbers
per call (~0.4 µs) and adds them to the library's values once a second (`RpcMetrics`),
like every other counter here. The final comparison is in the README's Performance.

No label holds a tenant, subject or request value: every label set is bounded by the
code (methods, codes, reasons, tiers, classes). To find a noisy tenant, use the opt-in
decision log (tenant and subject per sampled decision), not the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import time
from bisect import bisect_left as _bucket
from collections import Counter as Counter_
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Mapping

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    start_http_server,
    values,
)

from gatehouse.server.interceptors import StreamHandler, UnaryHandler, _code
from gatehouse.server.metrics_setup import MULTIPROC_ENV, is_loopback
from gatehouse.stats import StatsRegistry

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0
# Seconds a /metrics client has to send its request (a socket timeout on the connection).
SCRAPE_READ_SECONDS = 10.0

# Seconds. A remembered answer takes ~20 µs of handler time, a Postgres miss a few ms.
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from a write's commit to an event applied / published (target p99 ≤ 100 ms).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GaugeMode = Literal["livesum", "livemax", "livemin"]


@dataclass(frozen=True, slots=True)
class Series:
    """Where one stats-registry counter goes: metric name (counters without `_total`:
    prometheus_client adds it), type, help, fixed labels, and for gauges how workers combine."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[tuple[str, str], ...] = ()
    mode: GaugeMode = "livesum"


def _c(name: str, help: str, **labels: str) -> Series:
    return Series(name, "counter", help, tuple(labels.items()))


def _g(name: str, help: str, mode: GaugeMode = "livesum", **labels: str) -> Series:
    return Series(name, "gauge", help, tuple(labels.items()), mode)


_DL_HELP = "Decision-log lines: written, dropped (queue full) or failed (write error)."
_ROSTERS_HELP = (
    "Whole-tenant rosters LookupSubjects used: kept (hit), read from Postgres (load), or brought forward by "
    "reading only the subjects changed since (advance)."
)
_REQ = "gatehouse_cache_requests"
_REQ_HELP = "Lookups per cache tier (answers = remembered answers, l1, l2, postgres) and result (hit, miss)."

# Every key of `Sidecar.stats.snapshot()` (without its `{labels}`), and where it goes.
# None: not exported (said why). A test holds every key of a real sidecar to this table.
SERIES: dict[str, Series | None] = {
    "grpc.calls": None,  # RpcMetrics' own counts: grpc_server_handled_total
    "grpc_core.calls_started": _c(
        "gatehouse_grpc_core_calls_started",
        "Calls grpc's core took, including those it refused before Python (GATEHOUSE_MAX_PENDING_CALLS).",
    ),
    "grpc_core.calls_succeeded": None,  # = grpc_server_handled_total{grpc_code="OK"}
    "grpc_core.calls_failed": None,  # core's view of the rest; the refusals are started - handled
    "decisions.answers": _c("gatehouse_decisions", "CheckAccess answers (each check of a batch) by reason."),
    "admission.in_flight": _g("gatehouse_admission_in_flight", "Calls inside their handlers, by method class."),
    "admission.shed": _c("gatehouse_admission_shed", "Calls refused with GATEHOUSE_OVERLOADED, by method class."),
    "admission.limit": _g("gatehouse_admission_limit", "Bound on calls in handlers per process, by class.", "livemax"),
    "auth.pending": _g("gatehouse_auth_pending", "Admin-key verifications waiting for or running Argon2."),
    "auth.refused_pending": _c("gatehouse_auth_refused", "Authentications refused unhashed.", cause="pending"),
    "auth.refused_address": _c("gatehouse_auth_refused", "Authentications refused unhashed.", cause="address"),
    "auth.rejected": _c("gatehouse_auth_rejected", "Calls with an unknown, wrong, revoked or expired key."),
    "callers.refused": _c(
        "gatehouse_callers_refused",
        "Hot-path calls refused for want of a credential, its permission or its tenant (README \"Who may ask\").",
    ),
    "callers.required": _g("gatehouse_callers_required", "1 when hot-path callers need a credential, else 0."),
    "auth.verifications": _c("gatehouse_argon2_verifications", "Argon2id verifications run (~20 ms of a core each)."),
    "tiers.answers_hits": _c(_REQ, _REQ_HELP, tier="answers", result="hit"),
    "tiers.answers_misses": _c(_REQ, _REQ_HELP, tier="answers", result="miss"),
    "cache.l1_hits": _c(_REQ, _REQ_HELP, tier="l1", result="hit"),
    "cache.l1_misses": _c(_REQ, _REQ_HELP, tier="l1", result="miss"),
    "cache.l2_hits": _c(_REQ, _REQ_HELP, tier="l2", result="hit"),
    "cache.l2_misses": _c(_REQ, _REQ_HELP, tier="l2", result="miss"),
    "tiers.postgres_hits": _c(_REQ, _REQ_HELP, tier="postgres", result="hit"),
    "cache.store_absent": _c(_REQ, _REQ_HELP, tier="postgres", result="miss"),
    "cache.store_loads": None,  # = postgres hit + miss
    "cache.roster_hits": _c(
        "gatehouse_lookup_rosters", _ROSTERS_HELP,
        result="hit",
    ),
    "cache.roster_loads": _c(
        "gatehouse_lookup_rosters", _ROSTERS_HELP,
        result="load",
    ),
    "cache.roster_advances": _c(
        "gatehouse_lookup_rosters", _ROSTERS_HELP,
        result="advance",
    ),
    "tiers.single_flight_merges": _c(
        "gatehouse_single_flight_merges", "Cache misses that waited for a load of the same key instead of starting one."
    ),
    "cache.stale_rejections": _c("gatehouse_l1_below_floor", "L1 entries held but not served: below a floor or min_revision."),
    "cache.unconfirmed_loads": _c(
        "gatehouse_unconfirmed_loads", "Postgres reads made because confirmation had lapsed (L2 skipped)."
    ),
    "cache.stale_refused": _c("gatehouse_stale_refusals", "Reads failed with GATEHOUSE_STALE."),
    "staleness.confirmed_seconds_ago": _g(
        "gatehouse_confirmed_age_seconds", "Seconds since the cache was last confirmed current (worst worker).", "livemax"
    ),
    "answers.check_hits": None,  # in gatehouse_cache_requests_total{tier="answers"}
    "answers.config_hits": None,
    "l2.errors": _c("gatehouse_redis_errors", "Redis errors, by client (l2, events).", client="l2"),
    "events.reconnects": _c("gatehouse_redis_errors", "Redis errors, by client (l2, events).", client="events"),
    "l2.deadline_cuts": _c(
        "gatehouse_l2_deadline_cuts", "L2 operations cut short by their call's deadline (a miss; the breaker stays shut)."
    ),
    "l2.deadline_skips": _c("gatehouse_l2_deadline_skips", "L2 operations not tried: the call's deadline had passed."),
    "store.transactions_begun": _c("gatehouse_postgres_transactions_begun", "Postgres transactions begun (BEGIN sent)."),
    "store.transactions_cancelled": _c(
        "gatehouse_postgres_transactions_cancelled",
        "Postgres transactions cancelled by a deadline or an abandoned call (their statement cancelled on the server).",
    ),
    "l2breaker.circuit_open": _g("gatehouse_l2_circuit_open", "Workers whose L2 breaker is open (Redis skipped)."),
    "events.events": _c("gatehouse_tenant_events_applied", "Tenant events applied to this sidecar's caches."),
    "events.gaps": _c("gatehouse_tenant_event_gaps", "Event stream gaps (every cached entry evicted)."),
    "events.unreadable": _c("gatehouse_tenant_events_unreadable", "Stream entries this build cannot read (skipped)."),
    "events.heartbeats": _c("gatehouse_relay_heartbeats_received", "Relay heartbeats read from the event stream."),
    "events.confirmations": _c("gatehouse_staleness_confirmations", "Times the cache was confirmed current."),
    "events.blind_refreshes": _c("gatehouse_blind_refreshes", "L1 cleared because the event stream was unreadable."),
    "relay.published": _c("gatehouse_relay_published", "Outbox events the relay published to the stream."),
    "relay.heartbeats": _c("gatehouse_relay_heartbeats", "Heartbeats the relay appended to the stream."),
    "relay.errors": _c(
        "gatehouse_relay_errors",
        "Relay attempts that failed because Postgres or Redis did not answer (each retried after a backoff), by cause.",
    ),
    "relay_backlog.rows": _g("gatehouse_relay_backlog_rows", "Unpublished outbox rows (at the last heartbeat).", "livemax"),
    "relay_backlog.oldest_seconds": _g(
        "gatehouse_relay_backlog_oldest_seconds", "Age of the oldest unpublished outbox row (0: none).", "livemax"
    ),
    "postgres.in_use": _g("gatehouse_postgres_pool_connections", "Pool connections, by state.", state="in_use"),
    "postgres.idle": _g("gatehouse_postgres_pool_connections", "Pool connections, by state.", state="idle"),
    "postgres.max": _g("gatehouse_postgres_pool_max_connections", "Pool bound, summed over workers."),
    "postgres.errors": _c("gatehouse_postgres_errors", "Postgres errors by kind (unavailable, schema, internal)."),
    "idempotency.replays": _c("gatehouse_idempotency_replays", "Admin mutations answered from a stored response."),
    "decision_log.written": _c("gatehouse_decision_log_lines", _DL_HELP, outcome="written"),
    "decision_log.dropped": _c("gatehouse_decision_log_lines", _DL_HELP, outcome="dropped"),
    "decision_log.failed": _c("gatehouse_decision_log_lines", _DL_HELP, outcome="failed"),
    "decision_log.queued": _g("gatehouse_decision_log_queued", "Decision-log lines waiting for the writer thread."),
    "authzen.requests": _c(
        "gatehouse_authzen_requests", "AuthZEN HTTP requests by endpoint (evaluation, evaluations, configuration, other) and HTTP status."
    ),
    "health.serving": _g("gatehouse_health_serving", "1 while every worker answers SERVING for the service.", "livemin"),
}

_REASON_NAMES: dict[int, str] = {}


def _reason_name(number: int) -> str:
    if not _REASON_NAMES:
        from gatehouse_client.v1 import access_pb2

        for value in access_pb2.DESCRIPTOR.enum_types_by_name["DecisionReason"].values:
            _REASON_NAMES[value.number] = value.name.removeprefix("DECISION_REASON_")
    return _REASON_NAMES.get(number, str(number))


class ProcessMetrics:
    """What every Gatehouse process that records metrics has: the stats registry's
    counters mirrored by `SERIES` (`publish`), the relay's publish latency and
    `gatehouse_build_info`. A `serve` worker's are `Metrics`, `gatehouse relay`'s
    `RelayMetrics`. In multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set before
    prometheus_client was imported) every value lives in that directory; else in memory,
    read through `registry`."""

    def __init__(self) -> None:
        if os.environ.get(MULTIPROC_ENV) and values.ValueClass is values.MutexValue:
            raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_ENV} was set: values would stay in memory")
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.publish_latency = Histogram(
            "gatehouse_relay_publish_seconds",
            "Seconds from a write's commit to the relay's XADD of its event acknowledged by Redis.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        build = Gauge(
            "gatehouse_build_info",
            "Always 1; the labels say what runs.",
            ["version", "python", "grpcio"],
            multiprocess_mode="livemax",
            registry=r,
        )
        build.labels(_version(), platform.python_version(), grpc.__version__).set(1)
        self.flushers: list[Callable[[], None]] = []  # run first by `publish`
        self._mirrored: dict[str, Counter | Gauge] = {}
        self._children: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def publish(self, snapshot: Mapping[str, float]) -> None:
        """Copy a stats snapshot into the metrics: counters by their increase since the
        last call, gauges by value. Keys without a `SERIES` entry are skipped. Runs
        the flushers first (the RPC counts)."""
        for flush in self.flushers:
            flush()
        for key, value in snapshot.items():
            child = self._children.get(key, _UNSEEN)
            if child is _UNSEEN:
                child = self._children[key] = self._child(key)  # None: not exported
            if child is None:
                continue
            if isinstance(child, _CounterChild):
                increase = value - self._last.get(key, 0.0)
                self._last[key] = value
                if increase > 0:
                    child.child.inc(increase)
            else:
                child.set(value)

    def _child(self, key: str) -> Any:
        base, labels = split_key(key)
        series = SERIES.get(base)
        if series is None:
            return None
        metric = self._mirrored.get(series.name)
        names = sorted({*dict(series.labels), *labels})
        if metric is None:
            if series.kind == "counter":
                metric = Counter(series.name, series.help, names, registry=self.registry)
            else:
                metric = Gauge(series.name, series.help, names, multiprocess_mode=series.mode, registry=self.registry)
            self._mirrored[series.name] = metric
        label_values = {**dict(series.labels), **labels}
        if base == "decisions.answers":
            label_values["reason"] = _reason_name(int(label_values["reason"]))
        child = metric.labels(**label_values) if names else metric
        return _CounterChild(child) if series.kind == "counter" else child


class Metrics(ProcessMetrics):
    """A `serve` worker's metrics: `ProcessMetrics` and the RPC and event-lag series."""

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by final status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Seconds from a call entering the handler chain to its answer (streams: the stream's life).",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            "gatehouse_tenant_event_lag_seconds",
            "Seconds from a write's commit (the event's `at`) to its event applied in this process.",
            buckets=LAG_BUCKETS,
            registry=r,
        )


class RelayMetrics(ProcessMetrics):
    """`gatehouse relay`'s metrics: `ProcessMetrics` (its `gatehouse_relay_*` series come
    through `SERIES`) and prometheus_client's standard `process_*` and `python_*`
    collectors. One process, so in memory, served from `registry` itself; a `serve`
    parent's multiprocess scrape cannot have those collectors (they describe the
    scraping process, not the workers)."""

    def __init__(self) -> None:
        super().__init__()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)


_UNSEEN = object()


@dataclass(slots=True)
class _CounterChild:
    child: Any


_KEY = re.compile(r"^([^{]+)(?:\{(.*)\})?$")


def split_key(key: str) -> tuple[str, dict[str, str]]:
    """`"admission.shed{class=hot}"` → `("admission.shed", {"class": "hot"})`."""
    match = _KEY.match(key)
    if match is None:
        return key, {}
    labels = dict(part.split("=", 1) for part in match.group(2).split(",")) if match.group(2) else {}
    return match.group(1), labels


def report_sources(stats: StatsRegistry, sidecar: Any) -> None:
    """Register the sources only the metrics read (derived tiers, decisions, pool, health,
    idempotency, Postgres errors) beside those `Sidecar._report_stats` registers (the
    relay's among them, as `gatehouse relay` registers its own: `app.report_relay`)."""
    from gatehouse.server import idempotency
    from gatehouse.store import driver_errors

    cache, check, config = sidecar.cache, sidecar.check_answers, sidecar.config_answers
    stats.register(
        "tiers",
        lambda: {
            "answers_hits": check.hits + config.hits,
            "answers_misses": check.misses + config.misses,
            "postgres_hits": cache.stats.store_loads - cache.stats.store_absent,
            "single_flight_merges": cache.single_flight_merges,
        },
    )
    reasons = sidecar.access.reasons
    stats.register("decisions", lambda: {f"answers{{reason={r}}}": n for r, n in list(reasons.items())})
    stats.register("postgres", lambda: {
        **sidecar.store.pool_stats(),
        **{f"errors{{kind={k}}}": n for k, n in driver_errors.failures.items()},
    })
    l2 = sidecar.l2
    stats.register("l2breaker", lambda: {"circuit_open": float(l2.circuit_open)})
    stats.register("idempotency", lambda: {"replays": idempotency.replays})
    readiness = sidecar.readiness
    from gatehouse.server.health import SERVICES

    stats.register(
        "health", lambda: {f"serving{{service={s}}}": float(readiness.serving) for s in ("", *SERVICES)}
    )


@dataclass(slots=True)
class _MethodCounts:
    """One method's calls since the start, kept as plain numbers on the hot path, and
    what `RpcMetrics.flush` has already added to the metrics."""

    labels: tuple[str, str, str]  # grpc_type, grpc_service, grpc_method
    method: str  # the full name, `/gatehouse.v1.AccessService/CheckAccess`
    ok: int = 0
    failed: Counter_[str] = field(default_factory=Counter_)  # by code name
    buckets: list[int] = field(default_factory=lambda: [0] * (len(RPC_BUCKETS) + 1))
    seconds: float = 0.0
    flushed_ok: int = 0
    flushed_failed: Counter_[str] = field(default_factory=Counter_)
    flushed_buckets: list[int] = field(default_factory=lambda: [0] * (len(RPC_BUCKETS) + 1))
    flushed_seconds: float = 0.0


class RpcMetrics:
    """The interceptor behind `grpc_server_handled_total` and `grpc_server_handling_seconds`;
    with metrics on it takes `CallCounter`'s place in the chain (its `values` are the
    stats registry's `grpc.calls`), so a call is counted once.

    Per call it keeps plain numbers (an int and a bucket `+= 1` found by bisect, a float
    sum: ~0.4 µs), and `flush` (run by `Metrics.publish`, every second and at stop) adds
    what grew to the prometheus-client metrics. Writing the library's multiprocess values
    per call cost 2.6 µs (three locked mmap writes) and the whole server 3.5–7 % more CPU
    per hit (bench/results/metrics-cost-3x*), too close to the 5 % goal.

    The histogram's buckets are added through the child's `_buckets` and `_sum` values,
    which is what its own `observe` does one observation at a time; prometheus-client is
    pinned, and tests/server/test_metrics.py checks the exposition against the calls made.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._methods: list[_MethodCounts] = []
        metrics.flushers.append(self.flush)

    def _counts(self, method: str, default_kind: str) -> _MethodCounts:
        service, name = split_method(method)
        counts = _MethodCounts((STREAMING.get(method, default_kind), service, name), method)
        self._methods.append(counts)
        if service in PREBOUND:
            # Made now: the series exist (at 0) from the start. The other ~40 methods
            # (admin, health, reflection) appear at their first call, so they add no
            # series (18 per histogram) to every scrape until then.
            self._metrics.handled.labels(*counts.labels, "OK")
            self._metrics.handling.labels(*counts.labels)
        return counts

    def _recorder(
        self, method: str, kind: str
    ) -> tuple[Callable[[], float], Callable[[float, str | None], None]]:
        """The clock, and `done(start, code)`: one call measured and
        counted (code None: OK). Plain arithmetic, no lock (see the class)."""
        counts = self._counts(method, kind)
        buckets, failed = counts.buckets, counts.failed
        clock, bucket = time.perf_counter, _bucket

        def done(start: float, code: str | None) -> None:
            elapsed = clock() - start
            buckets[bucket(RPC_BUCKETS, elapsed)] += 1
            counts.seconds += elapsed
            if code is None:
                counts.ok += 1
            else:
                failed[code] += 1

        return clock, done

    def unary(self, method: str, handler: UnaryHandler) -> UnaryHandler:
        # grpc's own servicers stream through context.write: "unary" here, by their shape.
        clock, done = self._recorder(method, "unary")

        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = clock()
            try:
                response = await handler(request, context)
            except BaseException as error:
                done(start, _code(context, error))
                raise
            done(start, None)
            return response

        return measured

    def stream(self, method: str, handler: StreamHandler) -> StreamHandler:
        clock, done = self._recorder(method, "server_stream")

        async def measured(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            start = clock()
            try:
                async for response in handler(request, context):
                    yield response
            except BaseException as error:
                done(start, _code(context, error))
                raise
            done(start, None)

        return measured

    def values(self) -> dict[str, float]:
        """For the stats registry, as `CallCounter.values` (which this link replaces when
        metrics are on: one link counts each call, not two): `calls{method=...,code=...}`."""
        values: dict[str, float] = {}
        for c in self._methods:
            if c.ok:
                values[f"calls{{method={c.method},code=OK}}"] = c.ok
            for code, n in c.failed.items():
                values[f"calls{{method={c.method},code={code}}}"] = n
        return values

    def flush(self) -> None:
        """Add every count that grew since the last flush to the metrics. Runs on the
        event loop, like the handlers, so it never sees a count half-updated."""
        handled, handling = self._metrics.handled, self._metrics.handling
        for c in self._methods:
            if c.ok > c.flushed_ok:
                handled.labels(*c.labels, "OK").inc(c.ok - c.flushed_ok)
                c.flushed_ok = c.ok
            for code, n in list(c.failed.items()):
                grown = n - c.flushed_failed[code]
                if grown > 0:
                    handled.labels(*c.labels, code).inc(grown)
                    c.flushed_failed[code] = n
            if c.buckets != c.flushed_buckets:
                child = handling.labels(*c.labels)
                for i, (n, was) in enumerate(zip(c.buckets, c.flushed_buckets)):
                    if n > was:
                        child._buckets[i].inc(n - was)
                child._sum.inc(c.seconds - c.flushed_seconds)
                c.flushed_buckets = list(c.buckets)
                c.flushed_seconds = c.seconds


# Services whose RPC series are made at registration (every method at 0 from the start).
PREBOUND = frozenset({"gatehouse.v1.AccessService", "gatehouse.v1.ConfigService"})

# `grpc_type` of the methods that are not unary (the chain cannot tell a handler that
# writes with context.write from a unary one, nor a bidirectional stream from a server one).
STREAMING = {
    "/grpc.health.v1.Health/Watch": "server_stream",
    "/gatehouse.v1.ConfigService/WatchTenantConfig": "server_stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "bidi_stream",
}


def split_method(method: str) -> tuple[str, str]:
    """`/gatehouse.v1.AccessService/CheckAccess` → (`gatehouse.v1.AccessService`, `CheckAccess`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class StatsExporter:
    """Copies the stats registry into `metrics` every `interval` seconds, and once more
    when cancelled (a worker that stops leaves its final counts in the files)."""

    def __init__(self, stats: StatsRegistry, metrics: ProcessMetrics, interval: float = PUBLISH_SECONDS) -> None:
        self._stats = stats
        self._metrics = metrics
        self._interval = interval

    def publish(self) -> None:
        self._metrics.publish(self._stats.snapshot())

    async def run(self) -> None:
        try:
            while True:
                try:
                    self.publish()
                except Exception:  # a broken source must not end the metrics
                    log.exception("metrics: publishing the stats failed")
                await asyncio.sleep(self._interval)
        finally:
            self.publish()


# --- the process that serves /metrics -----------------------------------------------------


class MetricsEndpoint:
    """`/metrics` over HTTP on `host:port`, in a thread. Either of a `serve` workers'
    parent (which answers no calls): every process's values in the multiprocess
    `directory`, summed; or of one process that records its own (`gatehouse relay`):
    the values of `registry`, read as scraped."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        directory: str = "",
        registry: CollectorRegistry | None = None,
        read_seconds: float = SCRAPE_READ_SECONDS,
    ) -> None:
        """Exactly one of `directory` and `registry`. `read_seconds`: how long a client has
        to send its request before it is dropped. SystemExit when the address cannot be
        listened on."""
        if (registry is None) == (not directory):
            raise ValueError("MetricsEndpoint: give a multiprocess directory or a registry, not both or neither")
        if registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        self.directory = directory
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise SystemExit(f"gatehouse: cannot listen on {host}:{port} for metrics: {exc.strerror}")
        # prometheus_client's server takes a thread per connection and waits for a request
        # as long as the client likes: a connection that sends half a request and stays
        # would hold its thread forever. Each gets `read_seconds` to send it.
        handler: type = self._server.RequestHandlerClass  # type: ignore[assignment]  # typeshed: a factory; here the class
        self._server.RequestHandlerClass = type("TimedMetricsHandler", (handler,), {"timeout": read_seconds})
        bound = self._server.server_port
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}/metrics"
        if is_loopback(host):
            log.info("metrics on %s (loopback: only this host can scrape)", self.url)
        else:
            # Metrics hold no tenant, subject or secret (no such labels), so a pod address a
            # Prometheus can reach is allowed; say so once.
            log.warning("metrics on %s: not a loopback address, anything on the network can read them", self.url)

    def worker_exited(self, pid: int) -> None:
        """Drop a dead worker's live gauges; its counters stay in the sums."""
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gatehouse")
    except Exception:
        return "unknown"


__all__ = [
    "Metrics",
    "MetricsEndpoint",
    "ProcessMetrics",
    "RelayMetrics",
    "RpcMetrics",
    "SERIES",
    "StatsExporter",
    "report_sources",
    "split_key",
    "split_method",
]
