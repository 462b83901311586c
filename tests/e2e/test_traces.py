"""Traces end to end: a real `gatehouse serve` exports through its real OTLP/gRPC exporter
to a small OTLP receiver in this test (opentelemetry-proto's TraceService on grpc.aio),
and the spans it receives are checked as a tree.

The sidecar gets a database and Redis prefix of its own, so its relay is the only one
publishing its writes (the session's in-process sidecar, untraced, relays the shared one).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2
from tests.client import Client, make_client, user
from tests.conftest import create_migrated_database, drop_database
from tests.processes import ServerProcess, sidecar_env, start_server


@dataclass
class Received:
    service: str  # the resource's service.name
    span: Span

    def attribute(self, key: str) -> object:
        for kv in self.span.attributes:
            if kv.key == key:
                return _value(kv.value)
        return None


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Received] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (str(_value(kv.value)) for kv in resource_spans.resource.attributes if kv.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(Received(service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, found: Callable[[list[Received]], bool], timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not found(self.spans):
            assert time.monotonic() < deadline, "spans not received: " + ", ".join(r.span.name for r in self.spans)
            await asyncio.sleep(0.05)
        return self.spans


@dataclass
class Traced:
    receiver: Receiver
    server: ServerProcess
    client: Client


@pytest.fixture
async def traced(redis_url: str, run_id: str) -> AsyncIterator[Traced]:
    receiver = Receiver()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, otlp)
    port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()

    name = f"gh_test_{run_id}_traces_{secrets.token_hex(2)}"
    database_url = await create_migrated_database(name)
    prefix = f"ghtest{run_id}tr{secrets.token_hex(2)}"
    from gatehouse.server.admin_auth import create_operator_key
    from gatehouse.store.api import Actor
    from gatehouse.store.postgres import connect

    store = await connect(database_url, min_size=1, max_size=1)
    try:
        token = await create_operator_key(store, Actor("tests"), name="traces")
    finally:
        await store.close()
    env = {
        **sidecar_env(database_url, redis_url, prefix, "traces-bootstrap-key"),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_SERVICE_NAME": "gatehouse-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = await start_server(env, "--workers", "1")
    client = make_client(server.address, token)
    try:
        yield Traced(receiver, server, client)
    finally:
        await client.channel.close()
        code = await server.stop()
        await otlp.stop(0)
        await drop_database(name)
        keys = aioredis.from_url(redis_url)
        async for key in keys.scan_iter(match=f"{prefix}:*", count=1000):
            await keys.delete(key)
        await keys.aclose()
    assert code == 0


def _caller() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A made-up caller's trace id, span id and the `traceparent` metadata naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


def _in(trace_id: str, spans: list[Received]) -> list[Received]:
    return [r for r in spans if r.span.trace_id.hex() == trace_id]


def _one(spans: list[Received], name: str) -> Received:
    named = [r for r in spans if r.span.name == name]
    assert len(named) == 1, [r.span.name for r in spans]
    return named[0]


def _children(spans: list[Received], parent: Received) -> list[Received]:
    return [r for r in spans if r.span.parent_span_id == parent.span.span_id]


async def test_check_access_continues_the_callers_trace_and_names_the_tier(traced: Traced, unique: str) -> None:
    client, receiver = traced.client, traced.receiver
    tenant = await client.tenant(f"traces-{unique}")
    alice = user("alice")
    revision = await client.grant(tenant.id, alice, "accountant", "emea", ["invoice.*"])
    request = access_pb2.CheckAccessRequest(
        tenant_id=tenant.id, subject=alice, permission="invoice.read",
        resource=common_pb2.Resource(type="invoice", id="1", scope="emea/de"), min_revision=revision,
    )

    # First ask: alice's grants are in no cache, so Postgres answers.
    miss_trace, miss_parent, metadata = _caller()
    assert (await client.access.CheckAccess(request, metadata=metadata)).allowed
    # Asked again: the remembered answer.
    hit_trace, hit_parent, metadata = _caller()
    assert (await client.access.CheckAccess(request, metadata=metadata)).allowed
    # A malformed request: INVALID_ARGUMENT, on the span as the number 3.
    bad_trace, _, metadata = _caller()
    with pytest.raises(grpc.aio.AioRpcError):
        await client.access.CheckAccess(access_pb2.CheckAccessRequest(tenant_id="nope"), metadata=metadata)

    spans = await receiver.wait_for(
        lambda spans: all(
            any(r.span.name == "gatehouse.v1.AccessService/CheckAccess" for r in _in(t, spans))
            for t in (miss_trace, hit_trace, bad_trace)
        )
    )
    miss = _one(_in(miss_trace, spans), "gatehouse.v1.AccessService/CheckAccess")
    assert miss.service == "gatehouse-under-test"
    assert miss.span.kind == Span.SPAN_KIND_SERVER
    assert miss.span.parent_span_id.hex() == miss_parent
    assert miss.attribute("rpc.system") == "grpc"
    assert miss.attribute("rpc.service") == "gatehouse.v1.AccessService"
    assert miss.attribute("rpc.method") == "CheckAccess"
    assert miss.attribute("rpc.grpc.status_code") == 0
    assert miss.attribute("gatehouse.cache.tier") == "postgres"
    reads = [r for r in _children(_in(miss_trace, spans), miss) if r.span.name == "postgres transaction"]
    assert reads and all(r.span.kind == Span.SPAN_KIND_CLIENT for r in reads)
    assert all(r.attribute("db.system.name") == "postgresql" and r.attribute("db.transaction.read_only") for r in reads)

    hit = _one(_in(hit_trace, spans), "gatehouse.v1.AccessService/CheckAccess")
    assert hit.span.parent_span_id.hex() == hit_parent
    assert hit.attribute("gatehouse.cache.tier") == "remembered"
    assert _children(_in(hit_trace, spans), hit) == []

    bad = _one(_in(bad_trace, spans), "gatehouse.v1.AccessService/CheckAccess")
    assert bad.attribute("rpc.grpc.status_code") == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad.attribute("gatehouse.cache.tier") is None


async def test_an_admin_write_is_linked_to_its_relay_publish_and_event(traced: Traced, unique: str) -> None:
    client, receiver = traced.client, traced.receiver
    tenant = await client.tenant(f"traces-w-{unique}")
    write_trace, write_parent, metadata = _caller()
    await client.admin.AddMember(
        admin_pb2.AddMemberRequest(tenant_id=tenant.id, subject=user("bob")), metadata=(*client.auth, *metadata)
    )

    def complete(spans: list[Received]) -> bool:
        names = {r.span.name for r in _in(write_trace, spans)}
        return {"gatehouse.v1.AdminService/AddMember", "outbox publish", "tenant event apply"} <= names

    trace_spans = _in(write_trace, await receiver.wait_for(complete))
    rpc = _one(trace_spans, "gatehouse.v1.AdminService/AddMember")
    assert rpc.span.parent_span_id.hex() == write_parent
    assert rpc.attribute("rpc.grpc.status_code") == 0
    # The write's transaction: the span whose traceparent the outbox row carried.
    writes = [
        r for r in _children(trace_spans, rpc)
        if r.span.name == "postgres transaction" and not r.attribute("db.transaction.read_only")
    ]
    assert len(writes) == 1, [r.span.name for r in _children(trace_spans, rpc)]
    write = writes[0]

    publish = _one(trace_spans, "outbox publish")
    assert publish.span.kind == Span.SPAN_KIND_PRODUCER
    assert publish.span.parent_span_id == write.span.span_id
    assert [(link.trace_id.hex(), link.span_id) for link in publish.span.links] == [(write_trace, write.span.span_id)]
    assert publish.attribute("messaging.system") == "redis"
    assert publish.attribute("messaging.batch.message_count") == 1

    applied = _one(trace_spans, "tenant event apply")
    assert applied.span.kind == Span.SPAN_KIND_CONSUMER
    assert [link.span_id for link in applied.span.links] == [write.span.span_id]
    assert applied.attribute("gatehouse.event.kind") == "membership"


async def test_a_watch_stream_is_one_server_span_ended_by_its_cancellation(traced: Traced, unique: str) -> None:
    client, receiver = traced.client, traced.receiver
    tenant = await client.tenant(f"traces-s-{unique}")
    watch_trace, watch_parent, metadata = _caller()
    stream = client.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id), metadata=metadata)
    first = await stream.read()
    assert isinstance(first, config_pb2.TenantConfig) and first.id == tenant.id
    stream.cancel()

    spans = await receiver.wait_for(
        lambda spans: any(r.span.name.endswith("/WatchTenantConfig") for r in _in(watch_trace, spans))
    )
    watch = _one(_in(watch_trace, spans), "gatehouse.v1.ConfigService/WatchTenantConfig")
    assert watch.span.kind == Span.SPAN_KIND_SERVER
    assert watch.span.parent_span_id.hex() == watch_parent
    assert watch.attribute("rpc.grpc.status_code") == grpc.StatusCode.CANCELLED.value[0]


def test_tracing_off_loads_no_sdk_and_adds_no_interceptor() -> None:
    """Without OTEL_TRACES_EXPORTER (or with `none`), the trace SDK and the exporters stay
    unimported and the global tracer provider is the API's proxy. In a fresh interpreter:
    this one may have imported anything. (redis-py imports `opentelemetry.sdk.metrics`
    when it is installed, for its own opt-in metrics, and creates nothing with it.)"""
    probe = (
        "import sys\n"
        "from gatehouse import tracing\n"
        "from gatehouse.server import app\n"
        "from opentelemetry import trace\n"
        "assert tracing.start() is None and not tracing.on\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))))\n"
    )
    for value in (None, "none", " "):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if value is not None:
            env["OTEL_TRACES_EXPORTER"] = value
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]", out


def test_the_rule_for_on_and_off() -> None:
    from gatehouse import tracing

    assert tracing.exporters({}) == []
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp, Console"}) == ["otlp", "console"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    # An endpoint alone does not turn tracing on: the exporter variable is the switch.
    assert tracing.exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == []


def _probe(env_extra: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_propagator_it_cannot_load_does_not_stop_a_sidecar_whose_tracing_is_off() -> None:
    """OTEL_PROPAGATORS set for the pod's other containers (`b3multi` without its package)
    must not matter while tracing is off: loading the server used to raise ValueError."""
    out = _probe(
        {"OTEL_PROPAGATORS": "b3multi"},
        "from gatehouse import tracing\nfrom gatehouse.server import app\nassert tracing.start() is None\nprint('ok')\n",
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"OTEL_PROPAGATORS": "bogus"}, "OTEL_PROPAGATORS"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "max_queue_size"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "64"}, "max_queue_size"),  # below the default batch size, 512
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}, "abc"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
        # The SDK only warns about these, and samples every trace instead: 1 % would become 100 %.
        ({"OTEL_TRACES_SAMPLER": "bogus"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1%"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "5"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_otel_settings_the_sdk_cannot_use_are_refused_in_words(settings: dict[str, str], named: str) -> None:
    """With tracing on, a value the SDK raises on is a one-line refusal, not a traceback."""
    code = (
        "from gatehouse import tracing\n"
        "from gatehouse.server import app\n"
        "try:\n"
        "    tracing.start()\n"
        "except SystemExit as exc:\n"
        "    print(exc)\n"
    )
    out = _probe({"OTEL_TRACES_EXPORTER": "console", **settings}, code)
    assert out.returncode == 0, out
    assert out.stdout.startswith("gatehouse: ") and named in out.stdout, out
    assert "Traceback" not in out.stderr, out


def test_sigterm_is_not_held_by_a_collector_that_never_answers() -> None:
    """A collector that accepts connections and never answers (a blackholed endpoint):
    `Tracing.flush` returns within its timeout (the SDK's force_flush ignores it) and the
    process exits without waiting for the export (it took ~30 s with the SDK's defaults)."""
    import socket

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        probe = (
            "import time\n"
            "from gatehouse import tracing\n"
            "traces = tracing.start()\n"
            "tracer = tracing.tracer('probe')\n"
            "for _ in range(1500):\n"
            "    tracer.start_span('s').end()\n"
            "time.sleep(0.3)\n"  # the worker thread's export is under way, and stuck
            "started = time.monotonic()\n"
            "print(traces.flush(1.0), round(time.monotonic() - started, 1))\n"
        )
        started = time.monotonic()
        out = _probe(
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hole.getsockname()[1]}",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
            probe,
        )
        took = time.monotonic() - started
    assert out.returncode == 0, out
    flushed, flush_seconds = out.stdout.split()
    assert flushed == "False" and float(flush_seconds) < 2.0, out
    assert took < 8.0, (took, out)
