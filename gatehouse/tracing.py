"""Traces: OpenTelemetry, configured by the standard `OTEL_*` variables, off by default.

**The rule.** Tracing is on in a process when `OTEL_TRACES_EXPORTER` names an exporter
(`otlp`, `console`, or both: `otlp,console`) and `OTEL_SDK_DISABLED` is not `true`.
Unset, empty or `none`: off. Off means off: the SDK is never imported, no span processor
or exporter exists, the server's tracing interceptor is not in the chain (so no call pays
a check), and the API that `store/` and `cache/` call answers with its no-op span.

On, `start()` sets up the SDK once per process (each `--workers` worker after the fork,
and `gatehouse relay`): a `TracerProvider` whose sampler is the standard
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`;
e.g. `parentbased_traceidratio` and `0.01` for 1 %), a `BatchSpanProcessor` per exporter,
the resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (service name
`gatehouse` unless they name one). `otlp` is OTLP over gRPC (`OTEL_EXPORTER_OTLP_ENDPOINT`,
default `http://localhost:4317`, and the rest of the standard `OTEL_EXPORTER_OTLP_*`);
incoming context is read by the standard propagators (`OTEL_PROPAGATORS`, default W3C
`traceparent` + baggage).

What the layers use from here is API only (`opentelemetry-api`): `tracer()`,
`child_span()`, `note_tier()`, `traceparent()`, `link_to()`, `current_trace_id()`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping

from opentelemetry import trace

# The tier that answered a read, on the RPC's server span: the deepest one any part of the
# call needed (a batch with one Postgres read among L1 hits is `postgres`).
TIER = "gatehouse.cache.tier"
TIERS = ("remembered", "l1", "l2", "postgres")
_RANK = {tier: rank for rank, tier in enumerate(TIERS)}

EXPORTERS = frozenset({"otlp", "console"})

# True once `start()` set the SDK up in this process. The one per-call check outside the
# server's interceptor: `cache/` reads it before noting an L1 hit (a float-cheap test),
# so the hit path costs nothing more when tracing is off.
on = False

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters `OTEL_TRACES_EXPORTER` names; [] when tracing is off (the rule above)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


def enabled(env: Mapping[str, str] | None = None) -> bool:
    return bool(exporters(env))


@dataclass
class Tracing:
    """The SDK as set up in this process."""

    provider: Any  # opentelemetry.sdk.trace.TracerProvider (the SDK is imported only when on)
    exporters: list[str]

    def flush(self, timeout_seconds: float = 5.0) -> None:
        """Export every span ended so far (at shutdown: nothing is lost with the process)."""
        self.provider.force_flush(int(timeout_seconds * 1000))


_PROCESS: tuple[int, Tracing] | None = None


def start(env: Mapping[str, str] | None = None) -> Tracing | None:
    """Set the SDK up for this process when the rule says tracing is on; None when off.
    Idempotent per process (several sidecars in one test process share it); a forked
    child sets up its own."""
    global _PROCESS, on
    names = exporters(env)
    if not names:
        return None
    if _PROCESS is not None and _PROCESS[0] == os.getpid():
        return _PROCESS[1]
    unknown = sorted(set(names) - EXPORTERS)
    if unknown:
        raise SystemExit(f"gatehouse: OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} (otlp, console, none)")
    env = os.environ if env is None else env
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if "otlp" in names and protocol != "grpc":
        raise SystemExit(f"gatehouse: OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only grpc is supported")

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "gatehouse"}))
    # No sampler given: the SDK reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing = Tracing(provider, names)
    _PROCESS = (os.getpid(), tracing)
    on = True
    return tracing


def tracer(name: str) -> trace.Tracer:
    """A tracer for module `name`: the no-op one until (and unless) `start()` ran."""
    return trace.get_tracer(name)


_NO_SPAN: ContextManager[None] = contextlib.nullcontext()


def child_span(tracer: trace.Tracer, name: str, attributes: Mapping[str, Any]) -> ContextManager[Any]:
    """A client span named `name` under the current one, only when that one is recording
    (a sampled call): work outside any traced call (health probes, the subscriber's reads,
    heartbeats) starts no trace of its own, and with tracing off this is one context
    lookup and a shared no-op context manager."""
    if not trace.get_current_span().is_recording():
        return _NO_SPAN
    return tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)


def current_trace_id() -> str:
    """The current trace's id, 32 lowercase hex digits, for log correlation; "" when none
    (tracing off, or outside any traced call). Sampled or not: a log line of an unsampled
    call still carries the id its caller propagated."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def note_tier(tier: str) -> None:
    """Say on the current span (the RPC's, in a call) that `tier` answered part of it; the
    deepest tier noted wins."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    seen = (getattr(span, "attributes", None) or {}).get(TIER)
    if seen is None or _RANK[tier] > _RANK.get(str(seen), -1):
        span.set_attribute(TIER, tier)


def traceparent() -> str:
    """The current span as a W3C `traceparent` value, when it is sampled (an outbox row
    carries it to the relay); "" otherwise."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def link_to(value: str) -> trace.Link | None:
    """A span link to the span a `traceparent` value names; None for "" or a malformed one."""
    if not value or _TRACEPARENT.fullmatch(value) is None:
        return None
    _, trace_id, span_id, flags = value.split("-")
    context = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(int(flags, 16)))
    return trace.Link(context) if context.is_valid else None


def is_traceparent(value: str) -> bool:
    """True for a well-formed version-00 `traceparent` (safe to inline into SQL text)."""
    return _TRACEPARENT.fullmatch(value) is not None
